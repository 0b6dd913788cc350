"""Concept decomposers (mcd, nmf, sae): exact parts, planted-subspace recovery, relevances, save/load, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles

import featinv
from featinv.concepts.base import (
    Decomposition,
    create_decomposer,
    feature_vectors,
    load_decomposer,
)
from featinv.concepts.fit import fit_concepts
from featinv.errors import FeatinvError

FAST = {"mcd": {}, "nmf": {"max_iter": 200}, "sae": {"steps": 300, "progress": False}}


@pytest.fixture(scope="module")
def lite0():
    """EfficientNet-Lite0 with its real ImageNet weights, cut at blocks.4 (112 channels, 8x8 at 128 px)."""
    return featinv.backbone("timm:tf_efficientnet_lite0", layer="blocks.4", input_size=128)


@pytest.fixture(scope="module")
def photos():
    return [img for _, img in featinv.builtin_photos()]


@pytest.fixture(scope="module")
def real_fmap(lite0, photos):
    """[n_photos, 112, 8, 8] real feature maps of the skimage/sklearn photographs."""
    with torch.no_grad():
        return lite0.features(lite0.preprocess(photos))


@pytest.fixture(scope="module")
def real_vectors(real_fmap):
    return feature_vectors(real_fmap)


def planted_subspaces(dims=(3, 2, 4), channels=24, per=250, noise=0.01, seed=0):
    """Vectors drawn from random linear subspaces of the given dims (plus a little noise)."""
    g = torch.Generator().manual_seed(seed)
    bases, xs = [], []
    for d in dims:
        q, _ = torch.linalg.qr(torch.randn(channels, d, generator=g, dtype=torch.float64))
        bases.append(q.T)
        xs.append(torch.randn(per, d, generator=g, dtype=torch.float64) @ q.T)
    x = torch.cat(xs)
    return x + noise * torch.randn(x.shape, generator=g, dtype=torch.float64), bases


@pytest.mark.parametrize("method", ["mcd", "nmf", "sae"])
def test_parts_sum_to_real_feature_map(method, real_fmap, real_vectors):
    decomposer = create_decomposer(method, n_concepts=4, **FAST[method]).fit(real_vectors)
    assert decomposer.n_concepts == 4 and decomposer.channels == 112
    fmap = real_fmap[:3]
    decomposition = decomposer.decompose(fmap)
    assert decomposition.parts.shape == (5, 3, 112, 8, 8)
    torch.testing.assert_close(decomposition.parts.sum(0), fmap, atol=1e-4, rtol=1e-5)
    maps = decomposition.concept_maps()
    assert maps.shape == (4, 3, 8, 8)
    torch.testing.assert_close(maps, decomposition.concepts.pow(2).sum(2))
    assert decomposition.concept_maps(include_residual=True).shape == (5, 3, 8, 8)
    # concepts explain most of the feature energy: the residual is not the whole map
    assert decomposition.residual.pow(2).sum() < 0.95 * fmap.pow(2).sum()
    edited = decomposition.edited(1, 0.25)
    torch.testing.assert_close(fmap - edited, 0.75 * decomposition.parts[1], atol=1e-4, rtol=1e-4)
    # the unedited map is the input bit for bit (so it reconstructs to the input's very image), not a re-summation
    assert torch.equal(decomposition.total(), fmap) and torch.equal(decomposition.edited(2, 1.0), fmap)


def test_mcd_recovers_planted_subspaces():
    x, truth = planted_subspaces()
    mcd = create_decomposer("mcd", n_concepts=3).fit(x)
    assert sorted(mcd.dims) == [2, 3, 4]
    assert mcd.summary()["complement_dim"] == 24 - 9
    for basis in truth:  # every planted subspace is matched by one found subspace, all angles < 10 degrees
        worst = [math.degrees(subspace_angles(found.T.numpy(), basis.T.numpy()).max()) for found in mcd.bases]
        assert min(worst) < 10.0, worst
    assert sum(mcd.summary()["cluster_fractions"]) == pytest.approx(1.0)


def test_mcd_subsamples_for_ssc_and_kmeans_option():
    x, _ = planted_subspaces(dims=(2, 2), channels=10, per=300)
    sub = create_decomposer("mcd", n_concepts=2, max_samples=200).fit(x)  # SSC on 200 of 600, rest assigned
    assert sorted(sub.dims) == [2, 2]
    assert sub.assign(x).unique().numel() == 2
    km = create_decomposer("mcd", n_concepts=2, clustering="kmeans").fit(x)
    fmap = x[:8].reshape(2, 2, 2, 10).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(km.decompose(fmap).total(), fmap, atol=1e-5, rtol=1e-5)


def test_mcd_relevances(real_fmap, real_vectors):
    weight = torch.randn(112, generator=torch.Generator().manual_seed(1))
    mcd = create_decomposer("mcd", n_concepts=3).fit(real_vectors, classifier_weight=weight)
    decomposition = mcd.decompose(real_fmap[:2])
    local = mcd.local_relevance(decomposition)
    assert local.shape == (4, 2, 8, 8)
    torch.testing.assert_close(local.sum(0), torch.einsum("bchw,c->bhw", real_fmap[:2], weight), atol=1e-3, rtol=1e-4)
    glob = mcd.global_relevance()
    assert glob.shape == (4,) and bool((glob >= 0).all())
    # the residual is the orthogonal complement: completeness^2 + |residual part of w_hat|^2 = 1
    assert mcd.completeness() ** 2 + float(glob[-1]) ** 2 == pytest.approx(1.0, abs=1e-5)
    assert 0.0 < mcd.completeness() <= 1.0


@pytest.mark.parametrize("method", ["nmf", "sae"])
def test_reconstruction_error_falls_with_more_concepts(method, real_vectors):
    errors = [create_decomposer(method, n_concepts=k, **FAST[method]).fit(real_vectors).relative_error(real_vectors)
              for k in (2, 4, 8)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.9


def test_sae_codes_have_exactly_k_nonzeros(real_vectors):
    sae = create_decomposer("sae", n_concepts=8, k=3, **FAST["sae"]).fit(real_vectors)
    codes = sae.encode(real_vectors)
    assert codes.shape == (real_vectors.shape[0], 8)
    assert bool(((codes != 0).sum(1) == 3).all())
    torch.testing.assert_close(sae.atoms.norm(dim=1), torch.ones(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(codes @ sae.atoms, sae.reconstruct(real_vectors), atol=1e-3, rtol=1e-4)


def test_sae_auxiliary_loss_for_dead_latents(real_vectors):
    """With dead_steps=1 every latent that misses a batch counts as dead, so AuxK acts on every step."""
    plain = create_decomposer("sae", n_concepts=32, k=1, steps=60, dead_steps=1, aux_coef=0.0, progress=False)
    aux = create_decomposer("sae", n_concepts=32, k=1, steps=60, dead_steps=1, progress=False)
    plain.fit(real_vectors)
    aux.fit(real_vectors)
    assert not torch.allclose(plain.atoms, aux.atoms)  # the auxiliary gradient reached the decoder
    torch.testing.assert_close(aux.atoms.norm(dim=1), torch.ones(32), atol=1e-5, rtol=0)


def test_nmf_variants(real_vectors):
    relu = real_vectors.clamp_min(0)  # non-negative features: scikit-learn NMF, non-negative atoms
    nmf = create_decomposer("nmf", n_concepts=3, **FAST["nmf"]).fit(relu)
    assert nmf.variant == "nmf" and bool((nmf.atoms >= 0).all())
    signed = create_decomposer("nmf", n_concepts=3, **FAST["nmf"]).fit(real_vectors)
    assert signed.variant == "semi-nmf" and bool((signed.atoms < 0).any())  # signed data is never clipped
    assert bool((signed.encode(real_vectors) >= 0).all())


@pytest.mark.parametrize("method", ["mcd", "nmf", "sae"])
def test_save_load_roundtrip(method, tmp_path, real_fmap, real_vectors):
    decomposer = create_decomposer(method, n_concepts=3, **FAST[method]).fit(real_vectors)
    decomposer.meta = {"backbone": "timm:tf_efficientnet_lite0", "layer": "blocks.4"}
    decomposer.save(tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["method"] == method and config["channels"] == 112 and config["n_concepts"] == 3
    loaded = load_decomposer(tmp_path / "c")
    assert type(loaded) is type(decomposer) and loaded.channels == 112 and loaded.meta == decomposer.meta
    torch.testing.assert_close(loaded.decompose(real_fmap[:2]).parts, decomposer.decompose(real_fmap[:2]).parts)


def test_bad_inputs_are_clear_errors(tmp_path, real_vectors):
    mcd = create_decomposer("mcd", n_concepts=2).fit(real_vectors)
    mcd.meta = {"backbone": "timm:tf_efficientnet_lite0", "layer": "blocks.4"}
    mcd.save(tmp_path / "c")
    loaded = load_decomposer(tmp_path / "c")
    with pytest.raises(FeatinvError, match="96 channels but the mcd decomposer was fitted on 112"):
        loaded.decompose(torch.randn(1, 96, 4, 4))
    with pytest.raises(FeatinvError, match="fitted on 112"):
        loaded.check_backbone("timm:other", "blocks.3", 80)
    with pytest.raises(FeatinvError, match="needs at least 40 feature vectors but got 30"):
        create_decomposer("mcd", n_concepts=20).fit(real_vectors[:30])
    with pytest.raises(FeatinvError, match="larger than the 112 feature channels"):
        create_decomposer("mcd", n_concepts=113, max_samples=4000).fit(real_vectors.repeat(2, 1))
    with pytest.raises(FeatinvError, match="needs at least 9"):
        create_decomposer("sae", n_concepts=9, progress=False).fit(real_vectors[:8])
    with pytest.raises(FeatinvError, match="not fitted"):
        create_decomposer("nmf", n_concepts=2).decompose(torch.randn(1, 112, 2, 2))
    with pytest.raises(FeatinvError, match="k=5 active atoms"):
        create_decomposer("sae", n_concepts=4, k=5)
    with pytest.raises(FeatinvError, match="NaN"):
        create_decomposer("nmf", n_concepts=2).fit(torch.full((10, 3), float("nan")))
    with pytest.raises(FeatinvError, match="classifier weight has 5 entries"):
        create_decomposer("mcd", n_concepts=2).fit(real_vectors, classifier_weight=torch.ones(5))
    with pytest.raises(FeatinvError, match="no classifier weight"):
        mcd.completeness()
    with pytest.raises(FeatinvError, match="unknown decomposer"):
        create_decomposer("mdc", n_concepts=2)
    with pytest.raises(FeatinvError, match="does not exist"):
        load_decomposer(tmp_path / "missing")
    for bad in (7, -1):
        with pytest.raises(FeatinvError, match=f"concept {bad} does not exist"):
            Decomposition(torch.zeros(3, 1, 2, 1, 1)).edited(bad, 0.5)
    (tmp_path / "c" / "concepts.safetensors").write_bytes(b"garbage")
    with pytest.raises(FeatinvError, match="corrupt"):
        load_decomposer(tmp_path / "c")


def test_fit_concepts_on_folder_and_show(tmp_path, lite0, photos):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(photos[:3]):
        img.resize((96, 80)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    decomposer = fit_concepts(lite0, data=folder, method="mcd", n_concepts=2, out=tmp_path / "c", progress=False)
    meta = load_decomposer(tmp_path / "c").meta
    assert meta["backbone"] == "timm:tf_efficientnet_lite0" and meta["layer"] == "blocks.4"
    assert meta["channels"] == 112 and meta["n_images"] == 3 and meta["skipped_images"] == 1
    assert meta["n_vectors"] == 3 * 64 and 0.0 < meta["energy_explained"] <= 1.0
    image01, maps = featinv.concept_activation_maps(decomposer, lite0, photos[0])
    assert image01.shape == (3, 128, 128) and maps.shape == (3, 128, 128) and bool((maps >= 0).all())
    out = featinv.show_concepts(tmp_path / "c", folder / "0.png", tmp_path / "fig.png", backbone=lite0)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FeatinvError, match="is a folder"):
        featinv.show_concepts(decomposer, photos[0], tmp_path, backbone=lite0)
    with pytest.raises(FeatinvError, match="relevances need the last feature layer"):
        fit_concepts(lite0, data=folder, n_concepts=2, target_class=3, progress=False)
    with pytest.raises(FeatinvError, match="no images found"):
        fit_concepts(lite0, data=tmp_path / "c", n_concepts=2, progress=False)


def test_mcd_reference_matches_a_rederivation_on_planted_subspaces():
    """mcd-reference: per-cluster centred PCA with the lPCA (Fukunaga-Olsen, alpha 0.05) dimension, tau 1, 25%
    outliers with a refit; re-derived here with numpy on the clusters it found."""
    from featinv.plugins.decomposers.mcd import intrinsic_dimension

    x, planted = planted_subspaces()
    ref = create_decomposer("mcd-reference", n_concepts=3).fit(x)
    assert (ref.tau, ref.outlier_fraction, ref.refit, ref.basis) == (1.0, 0.25, True, "pca")
    assert sorted(ref.dims) == [2, 3, 4]
    unit = (x / x.norm(dim=1, keepdim=True)).numpy()
    labels = ref.assign(torch.from_numpy(unit)).numpy()
    for index, found in enumerate(ref.bases):
        members = unit[labels == index]
        centred = members - members.mean(0)
        variances = np.linalg.svd(centred, compute_uv=False) ** 2
        dim = int((variances > 0.05 * variances[0]).sum())
        assert dim == found.shape[0] == intrinsic_dimension(torch.from_numpy(members))
        expected = np.linalg.svd(centred, full_matrices=False)[2][:dim]  # sklearn PCA().components_[:dim]
        assert math.degrees(subspace_angles(found.T.numpy(), expected.T).max()) < 1.0
        assert min(math.degrees(subspace_angles(found.T.numpy(), b.T.numpy()).max()) for b in planted) < 5.0
    loaded = create_decomposer("mcd-reference", n_concepts=3).options()
    assert loaded["basis"] == "pca" and loaded["refit"] is True
