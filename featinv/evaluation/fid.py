"""Sample-quality metrics: FID and KID (the paper's Table 1 columns), and the feature spaces they are computed in.

FID (and KID, which is unbiased for the small sample sizes a CPU run has) live in the standard Inception-v3
pool3 space, read from a local weight file, or — when no such file is installed — in a named backbone's pooled
feature space, labelled as such (``FID[timm:... pooled]``) so it is never mistaken for FID. Nothing downloads.

Apart from :mod:`featinv.evaluation.metrics` (the per-image numbers) because finding, checking and loading the
Inception weights is a job of its own; every name here is also importable from there.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from featinv.errors import FeatinvError

__all__ = [
    "FID_WEIGHT_NAMES",
    "INCEPTION_ENV",
    "FeatureSpace",
    "backbone_feature_space",
    "default_inception_locations",
    "find_inception_weights",
    "frechet_distance",
    "frechet_distance_from_stats",
    "inception_feature_space",
    "inception_hint",
    "is_torchscript",
    "kernel_distance",
    "load_fid_inception",
    "resolve_feature_space",
]

# ---------------------------------------------------------------------------------------------
# FID / KID on feature vectors
# ---------------------------------------------------------------------------------------------


def _as_float64(features: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    arr = np.asarray(features, dtype=np.float64)
    if arr.ndim != 2:
        raise FeatinvError(f"features must be [N, D], got shape {arr.shape}; flatten/pool them first")
    return arr


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|mu1-mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^½)`` for two Gaussians.

    ``tr((S1 S2)^½)`` equals the sum of square roots of the eigenvalues of the symmetric PSD
    matrix ``S1^½ S2 S1^½``, which we get from two ``eigh`` calls — stable and free of the
    complex-part clean-up a general ``sqrtm`` needs.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    w1, v1 = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T
    middle = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def frechet_distance(features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, D]`` (FID on Inception pool3)."""
    a, b = _as_float64(features_a), _as_float64(features_b)
    if a.shape[1] != b.shape[1]:
        raise FeatinvError(f"feature sets differ in dimension ({a.shape[1]} vs {b.shape[1]}); use one feature space")
    if len(a) < 2 or len(b) < 2:
        raise FeatinvError("FID needs at least 2 images per set; evaluate more images")
    if min(len(a), len(b)) > a.shape[1]:
        return frechet_distance_from_stats(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    # Fewer images than dimensions (every CPU-sized evaluation): with centred A, B the covariances are
    # A^T A/(n-1) and B^T B/(m-1), and the non-zero eigenvalues of S1 S2 are the squared singular values
    # of A B^T / sqrt((n-1)(m-1)), so tr((S1 S2)^½) is that matrix's nuclear norm — n×m instead of D×D.
    ca, cb = a - a.mean(0), b - b.mean(0)
    cross = ca @ cb.T / math.sqrt((len(a) - 1) * (len(b) - 1))
    tr_covmean = float(np.linalg.svd(cross, compute_uv=False).sum())
    diff = a.mean(0) - b.mean(0)
    tr1 = float((ca * ca).sum()) / (len(a) - 1)
    tr2 = float((cb * cb).sum()) / (len(b) - 1)
    return float(diff @ diff + tr1 + tr2 - 2.0 * tr_covmean)


def kernel_distance(
    features_a: torch.Tensor | np.ndarray,
    features_b: torch.Tensor | np.ndarray,
    subset_size: int = 1000,
    n_subsets: int = 100,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: unbiased MMD² with the cubic polynomial kernel ``(x·y/d + 1)^3``, averaged over subsets.

    Unbiased (diagonal terms excluded), so unlike FID it is meaningful for small sets — the ones a
    CPU evaluation produces. Returns ``(mean, std)`` over ``n_subsets`` random subsets of
    ``min(subset_size, N)`` images drawn without replacement.
    """
    a, b = _as_float64(features_a), _as_float64(features_b)
    if a.shape[1] != b.shape[1]:
        raise FeatinvError(f"feature sets differ in dimension ({a.shape[1]} vs {b.shape[1]}); use one feature space")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise FeatinvError("KID needs at least 2 images per set; evaluate more images")
    dim = a.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(n_subsets)
    for i in range(n_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / dim + 1) ** 3
        kyy = (y @ y.T / dim + 1) ** 3
        kxy = (x @ y.T / dim + 1) ** 3
        values[i] = (
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean()
        )
    return float(values.mean()), float(values.std())


# ---------------------------------------------------------------------------------------------
# Feature spaces for FID / KID
# ---------------------------------------------------------------------------------------------

#: File names of the standard FID Inception weights, in the order they are looked for.
FID_WEIGHT_NAMES: tuple[str, ...] = (
    "pt_inception-2015-12-05-6726825d.pth",  # pytorch-fid: state dict for torchvision's InceptionV3 + FID tweaks
    "weights-inception-2015-12-05-6726825d.pth",  # torch-fidelity: the same tensors
    "inception-2015-12-05.pt",  # clean-fid / StyleGAN2-ADA: TorchScript module
)
INCEPTION_ENV = "FEATINV_INCEPTION_WEIGHTS"


@dataclass
class FeatureSpace:
    """Images in [0, 1] → one vector per image, plus the labels every output must carry.

    ``is_inception`` is True only for the standard FID network; anything else is a substitute whose
    ``fid_label`` names its space (``FID[timm:tf_efficientnet_lite0 pooled]``).
    """

    name: str
    embed: Callable[[torch.Tensor], torch.Tensor]
    is_inception: bool

    @property
    def fid_label(self) -> str:
        return "FID" if self.is_inception else f"FID[{self.name}]"

    @property
    def kid_label(self) -> str:
        return "KID" if self.is_inception else f"KID[{self.name}]"

    @torch.no_grad()
    def __call__(self, images01: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        chunks = [self.embed(images01[i : i + batch_size]).float().cpu() for i in range(0, len(images01), batch_size)]
        return torch.cat(chunks) if chunks else torch.zeros(0, 0)


def default_inception_locations() -> list[Path]:
    """Folders searched for the FID weights when no path is given (first hit wins)."""
    folders = [Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "featinv"]
    folders.append(Path(torch.hub.get_dir()) / "checkpoints")
    return folders


def find_inception_weights(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The FID Inception weight file: ``path``, else ``$FEATINV_INCEPTION_WEIGHTS``, else a known name
    in :func:`default_inception_locations`; None when none is installed. Never downloads."""
    explicit = path or os.environ.get(INCEPTION_ENV)
    if explicit:
        candidate = Path(explicit).expanduser()
        if candidate.is_dir():
            for name in FID_WEIGHT_NAMES:
                if (candidate / name).is_file():
                    return candidate / name
        elif candidate.is_file():
            return candidate
        raise FeatinvError(f"Inception weights not found at {candidate}; {inception_hint()}")
    for folder in default_inception_locations():
        for name in FID_WEIGHT_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def inception_hint() -> str:
    """Where to put the FID weights (used in every message about them)."""
    where = default_inception_locations()[0]
    return (
        f"copy {FID_WEIGHT_NAMES[0]} (pytorch-fid / torch-fidelity) or {FID_WEIGHT_NAMES[2]} (clean-fid) "
        f"into {where}/ or point ${INCEPTION_ENV} at the file"
    )


def _fid_inception_module() -> torch.nn.Module:
    """torchvision's InceptionV3 with the four changes of the TensorFlow FID graph.

    The 2015 TF graph averages without the zero padding in the A, C and first E blocks, uses max
    instead of average pooling in the last E block and has 1008 classes; the weight file only fits
    (and only gives comparable FIDs) with those changes.
    """
    from torchvision.models import inception as tv

    def _avg(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    class _A(tv.InceptionA):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg(x))], 1)

    class _C(tv.InceptionC):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            bd = x
            for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                bd = layer(bd)
            return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg(x))], 1)

    class _E(tv.InceptionE):
        def __init__(self, in_channels: int, max_pool: bool) -> None:
            super().__init__(in_channels)
            self.max_pool = max_pool

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg(x)
            return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)

    net = tv.Inception3(num_classes=1008, aux_logits=False, init_weights=False, transform_input=False)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = _A(192, 32), _A(256, 64), _A(288, 64)
    net.Mixed_6b, net.Mixed_6c = _C(768, channels_7x7=128), _C(768, channels_7x7=160)
    net.Mixed_6d, net.Mixed_6e = _C(768, channels_7x7=160), _C(768, channels_7x7=192)
    net.Mixed_7b, net.Mixed_7c = _E(1280, max_pool=False), _E(2048, max_pool=True)
    net.fc = torch.nn.Identity()  # pool3 features (2048) are what FID uses
    net.dropout = torch.nn.Identity()
    return net.eval()


def is_torchscript(path: str | os.PathLike[str]) -> bool:
    """Whether a file is a TorchScript archive (a zip holding ``code/``), which can run code when loaded."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def load_fid_inception(path: str | os.PathLike[str], device: str | torch.device = "cpu",
                       trusted: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """Load the FID network from a local file; returns ``images01 [B,3,H,W] -> pool3 [B, 2048]``.

    A state dict (pytorch-fid / torch-fidelity ``.pth``) is loaded data-only into the patched torchvision
    network, fed 299×299 bilinear-resized images scaled to [-1, 1]. A TorchScript file (clean-fid's
    ``inception-2015-12-05.pt``, takes 0..255 pixels and resizes itself) has no safe loading mode, so it
    is loaded only when ``trusted`` — the user named the file (``--fid PATH`` or ``$FEATINV_INCEPTION_WEIGHTS``)
    — and then with a warning; a TorchScript file merely found in a cache folder is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise FeatinvError(f"Inception weights not found at {path}; {inception_hint()}")
    if is_torchscript(path):
        if not trusted:
            raise FeatinvError(f"{path} is a TorchScript file, which can run code when loaded; name it yourself "
                               f"(--fid {path} or ${INCEPTION_ENV}) to trust it, or use the .pth state dict")
        warnings.warn(f"loading TorchScript FID weights {path}: TorchScript has no safe mode, so this runs code "
                      "from that file; use it only if you trust its source", UserWarning, stacklevel=2)
        scripted = torch.jit.load(str(path), map_location=device).eval()

        def embed_script(images01: torch.Tensor) -> torch.Tensor:
            x = (images01.to(device).clamp(0, 1) * 255.0).float()
            return scripted(x, return_features=True).reshape(len(x), -1)

        return embed_script
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FeatinvError(f"cannot read Inception weights {path} ({exc.__class__.__name__}); {inception_hint()}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    net = _fid_inception_module()
    wanted = net.state_dict()
    if not isinstance(state, dict):
        raise FeatinvError(f"{path} is not an Inception state dict; {inception_hint()}")
    missing = [k for k in wanted if k not in state]
    bad = [k for k in wanted if k in state and tuple(state[k].shape) != tuple(wanted[k].shape)]
    if missing or bad:
        problem = f"missing {missing[:3]}" if missing else f"wrong shapes for {bad[:3]}"
        raise FeatinvError(f"{path} does not hold the FID InceptionV3 weights ({problem}); {inception_hint()}")
    net.load_state_dict({k: state[k] for k in wanted})
    net.to(device)

    def embed_state(images01: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images01.to(device).float(), size=(299, 299), mode="bilinear", align_corners=False)
        return net(2.0 * x - 1.0)

    return embed_state


def inception_feature_space(path: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu") -> FeatureSpace:
    """The standard FID space; a clear error saying where to put the file when it is missing."""
    found = find_inception_weights(path)
    if found is None:
        raise FeatinvError(f"no FID Inception weights installed; {inception_hint()}")
    named = bool(path or os.environ.get(INCEPTION_ENV))
    return FeatureSpace(name="inception-v3 pool3", embed=load_fid_inception(found, device, trusted=named),
                        is_inception=True)


def backbone_feature_space(backbone: Any) -> FeatureSpace:
    """A backbone's default-layer features averaged over positions — the labelled FID substitute."""

    def embed(images01: torch.Tensor) -> torch.Tensor:
        x = backbone.normalize(images01.to(backbone.device).float())
        return backbone.features(x).mean(dim=(2, 3))

    return FeatureSpace(name=f"{backbone.spec} pooled", embed=embed, is_inception=False)


def resolve_feature_space(
    choice: str,
    backbone: Any | None = None,
    device: str | torch.device = "cpu",
) -> FeatureSpace | None:
    """Turn the user's FID choice into a feature space.

    ``"auto"``: Inception when its weights are installed, else ``backbone`` (labelled);
    ``"inception"`` or a path: Inception only (error with install hint when missing);
    ``"backbone"``: the given backbone; ``"backbone:SPEC"``: that backbone (pretrained weights);
    ``"none"``: skip FID/KID.
    """
    choice = (choice or "auto").strip()
    if choice == "none":
        return None
    if choice == "auto":
        found = find_inception_weights()
        if found is not None:
            return inception_feature_space(None, device)
        if backbone is None:
            return None
        return backbone_feature_space(backbone)
    if choice == "inception":
        return inception_feature_space(None, device)
    if choice == "backbone":
        if backbone is None:
            raise FeatinvError("fid='backbone' needs a backbone; pass fid='backbone:SPEC' instead")
        return backbone_feature_space(backbone)
    if choice.startswith("backbone:"):
        from featinv.features.backbone import backbone as make_backbone

        return backbone_feature_space(make_backbone(choice.split(":", 1)[1], device=device))
    if Path(choice).expanduser().exists() or choice.endswith((".pt", ".pth")):
        return inception_feature_space(choice, device)
    raise FeatinvError(
        f"unknown FID feature space {choice!r}; use auto, inception, a weight-file path, backbone, backbone:SPEC or none"
    )
