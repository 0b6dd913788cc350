"""Metrics against independent computations (NumPy / SciPy references, hand-made logits)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from featinv.errors import FeatinvError
from featinv.evaluation import metrics


def _numpy_cosine_median(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = []
    for x, y in zip(a, b, strict=True):
        xs = x.reshape(x.shape[0], -1).T  # positions x channels
        ys = y.reshape(y.shape[0], -1).T
        cos = [float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v))) for u, v in zip(xs, ys, strict=True)]
        out.append(np.median(cos))
    return np.array(out)


@pytest.mark.parametrize("grid", [(3, 4), (4, 4), (1, 1)])
def test_cosine_median_matches_numpy(grid: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(5, 7, *grid, generator=gen)
    b = a + 0.8 * torch.randn(5, 7, *grid, generator=gen)
    got = metrics.cosine_median(a, b).numpy()
    np.testing.assert_allclose(got, _numpy_cosine_median(a.numpy(), b.numpy()), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics.cosine_median(a, a).numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(metrics.cosine_median(a, -a).numpy(), -1.0, atol=1e-6)
    np.testing.assert_allclose(metrics.cosine_distance_median(a, b).numpy(), 1 - got, atol=1e-6)


def test_cosine_median_rejects_mismatched_maps() -> None:
    with pytest.raises(FeatinvError, match="differ in shape"):
        metrics.cosine_median(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 3, 3))


def test_rate_ci95_matches_scipy_wilson_interval() -> None:
    from scipy.stats import binomtest

    for k, n in ((0, 128), (8, 128), (3, 32), (32, 32), (1, 1)):
        expected = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        low, high = metrics.rate_ci95(k, n)
        assert low == pytest.approx(expected.low, abs=1e-9) and high == pytest.approx(expected.high, abs=1e-9)
    assert metrics.rate_ci95(0, 128)[0] == 0.0 and 0.02 < metrics.rate_ci95(0, 128)[1] < 0.04
    assert all(math.isnan(v) for v in metrics.rate_ci95(0, 0))
    with pytest.raises(ValueError, match="between 0 and n"):
        metrics.rate_ci95(5, 4)


def test_mean_ci95_matches_t_interval() -> None:
    values = [0.2, 0.4, 0.5, 0.9]
    mean, lo, hi = metrics.mean_ci95(values)
    sem = np.std(values, ddof=1) / 2
    assert mean == pytest.approx(0.5)
    assert hi - mean == pytest.approx(3.182446305284263 * sem, rel=1e-6)  # t_{0.975, 3}
    assert mean - lo == pytest.approx(hi - mean)
    one = metrics.mean_ci95([0.3])
    assert one[0] == pytest.approx(0.3) and math.isnan(one[1]) and math.isnan(one[2])


def test_topk_match_on_hand_made_logits() -> None:
    orig = torch.tensor([[0.0, 5.0, 1.0, 2.0, 3.0, 4.0, -1.0],  # top-1 = class 1
                         [9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # top-1 = class 0
                         [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 7.0]])  # top-1 = class 6
    rec = torch.tensor([[0.0, 5.0, 1.0, 2.0, 3.0, 4.0, -1.0],  # class 1 is top-1
                        [4.5, 7.0, 6.0, 5.0, 4.0, 0.0, 8.0],  # class 0 ranked 5th -> top-5 but not top-1
                        [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0]])  # class 6 ranked last
    assert metrics.topk_match(orig, rec, 1).tolist() == [True, False, False]
    assert metrics.topk_match(orig, rec, 5).tolist() == [True, True, False]
    assert metrics.topk_match(orig, rec, 100).tolist() == [True, True, True]
    with pytest.raises(FeatinvError):
        metrics.topk_match(orig, rec[:, :3], 1)


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fid_matches_scipy_sqrtm_reference() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 12))
    b = rng.normal(loc=0.3, scale=1.4, size=(150, 12)) @ rng.normal(size=(12, 12)) * 0.5
    got = metrics.frechet_distance(torch.from_numpy(a), b)
    assert got == pytest.approx(_scipy_fid(a, b), rel=1e-6)


def test_fid_with_fewer_images_than_dims_matches_full_formula() -> None:
    # The low-rank (Gram) path used when N < D must agree with the D×D covariance formula and SciPy.
    rng = np.random.default_rng(5)
    a = rng.normal(size=(9, 20))
    b = rng.normal(loc=0.2, size=(7, 20)) * 1.3
    got = metrics.frechet_distance(a, b)
    full = metrics.frechet_distance_from_stats(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert got == pytest.approx(full, rel=1e-8)
    assert got == pytest.approx(_scipy_fid(a, b), rel=1e-4)


def test_fid_of_set_with_itself_is_zero() -> None:
    feats = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    assert abs(metrics.frechet_distance(feats, feats)) < 1e-6
    # Singular covariance (fewer images than dims) still gives ~0, not NaN.
    few = torch.randn(5, 32, generator=torch.Generator().manual_seed(2))
    assert abs(metrics.frechet_distance(few, few)) < 1e-5


def test_kid_is_unbiased_on_identical_distributions() -> None:
    rng = np.random.default_rng(3)
    means = []
    for _ in range(30):
        a, b = rng.normal(size=(20, 8)), rng.normal(size=(20, 8))
        means.append(metrics.kernel_distance(a, b, subset_size=20, n_subsets=1)[0])
    means = np.array(means)
    # Unbiased estimator: the mean over draws is within ~3 standard errors of 0.
    assert abs(means.mean()) < 3 * means.std(ddof=1) / np.sqrt(len(means))
    assert (means < 0).any()  # a biased (V-statistic) estimate would never go below zero
    shifted = metrics.kernel_distance(rng.normal(size=(20, 8)), rng.normal(loc=2.0, size=(20, 8)), n_subsets=5)[0]
    assert shifted > 10 * abs(means.mean())


def test_small_sets_raise_clear_errors() -> None:
    with pytest.raises(FeatinvError, match="at least 2"):
        metrics.frechet_distance(torch.zeros(1, 3), torch.zeros(4, 3))
    with pytest.raises(FeatinvError, match="at least 2"):
        metrics.kernel_distance(torch.zeros(1, 3), torch.zeros(4, 3))


def test_missing_inception_weights_message_says_where(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(metrics.INCEPTION_ENV, raising=False)
    assert metrics.find_inception_weights() is None
    with pytest.raises(FeatinvError, match="pt_inception-2015-12-05-6726825d.pth") as err:
        metrics.inception_feature_space()
    assert str(tmp_path / "cache" / "featinv") in str(err.value)
    with pytest.raises(FeatinvError, match="not found"):
        metrics.load_fid_inception(tmp_path / "nope.pth")
    assert metrics.resolve_feature_space("auto", backbone=None) is None
    assert metrics.resolve_feature_space("none") is None


def test_fid_inception_state_dict_loads_and_embeds(tmp_path, monkeypatch) -> None:
    # A randomly initialised network with the FID architecture stands in for the real weight file:
    # the loader must accept its state dict under the pytorch-fid name and produce pool3 vectors.
    torch.manual_seed(0)
    net = metrics._fid_inception_module()
    state = {}
    for key, value in net.state_dict().items():
        if key.endswith("running_var"):
            state[key] = torch.ones_like(value)
        elif value.is_floating_point():
            state[key] = torch.randn_like(value) * 0.05
        else:
            state[key] = value
    state["fc.weight"] = torch.zeros(1008, 2048)  # the real file has the 1008-way classifier
    folder = tmp_path / "cache" / "featinv"
    folder.mkdir(parents=True)
    torch.save(state, folder / metrics.FID_WEIGHT_NAMES[0])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(metrics.INCEPTION_ENV, raising=False)
    space = metrics.resolve_feature_space("auto")
    assert space is not None and space.is_inception and space.fid_label == "FID"
    feats = space(torch.rand(2, 3, 64, 64))
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
    # A file of the wrong network is refused with the install hint.
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(FeatinvError, match="FID InceptionV3"):
        metrics.load_fid_inception(tmp_path / "wrong.pth")


def test_torchscript_inception_file(tmp_path) -> None:
    class Fake(torch.nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            # pixels arrive in 0..255 like clean-fid's network expects
            return x.mean(dim=(2, 3)).repeat(1, 4) / 255.0

    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(Fake()).save(str(path))
    assert metrics.is_torchscript(path)
    with pytest.raises(FeatinvError, match="TorchScript file, which can run code"):
        metrics.load_fid_inception(path)  # merely found somewhere: never loaded
    with pytest.warns(UserWarning, match="no safe mode"):
        embed = metrics.load_fid_inception(path, trusted=True)  # the user named it
    out = embed(torch.full((2, 3, 8, 8), 0.5))
    assert out.shape == (2, 12)
    np.testing.assert_allclose(out.numpy(), 0.5, atol=1e-3)


def test_backbone_substitute_is_labelled() -> None:
    class FakeBackbone:
        spec = "timm:tf_efficientnet_lite0"
        device = torch.device("cpu")

        def normalize(self, x: torch.Tensor) -> torch.Tensor:
            return x

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return x

    space = metrics.backbone_feature_space(FakeBackbone())
    assert not space.is_inception
    assert space.fid_label == "FID[timm:tf_efficientnet_lite0 pooled]"
    assert space.kid_label == "KID[timm:tf_efficientnet_lite0 pooled]"
    assert space(torch.rand(3, 3, 4, 4)).shape == (3, 3)


def test_torchscript_found_in_a_cache_folder_is_refused_but_a_named_one_loads(tmp_path, monkeypatch) -> None:
    class Fake(torch.nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            return x.mean(dim=(2, 3))

    cache = tmp_path / "cache"
    cache.mkdir()
    torch.jit.script(Fake()).save(str(cache / "inception-2015-12-05.pt"))
    from featinv.evaluation import fid

    monkeypatch.setattr(fid, "default_inception_locations", lambda: [cache])  # where the lookup lives now
    monkeypatch.delenv(metrics.INCEPTION_ENV, raising=False)
    with pytest.raises(FeatinvError, match="name it yourself"):
        metrics.resolve_feature_space("inception")
    monkeypatch.setenv(metrics.INCEPTION_ENV, str(cache / "inception-2015-12-05.pt"))
    with pytest.warns(UserWarning, match="no safe mode"):
        assert metrics.resolve_feature_space("inception").is_inception
