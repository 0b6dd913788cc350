"""FeatInv-Viz (paper section 4.2, Algorithm 1, Figure 4): see a concept by attenuating it in feature space.

For a concept ``c`` the edited map is ``sum_{i != c} parts_i + a * parts_c`` (``a = 0.25`` by default). The
original and the edited map are reconstructed with the same ``n`` seeds; the per-pixel Euclidean RGB
distance of each pair, median over the pairs, is the concept's high-resolution difference map. Normalised
by its maximum and thresholded at 0.33 it becomes the mask drawn over the image.

Next to it the figure shows what a reader would otherwise use: the coarse concept activation map
``|part_c|^2`` upsampled bilinearly, and Grad-CAM for the same layer and the image's top-1 class (captum),
so the extra detail FeatInv-Viz brings is visible at a glance.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from featinv.analyses.base import (
    Analysis,
    AnalysisResult,
    NamedImage,
    SamplingOptions,
    as_decomposer,
    as_images,
    as_model,
    check_count,
    reconstruct_unique,
    seeds_for,
)
from featinv.analyses.figures import (
    display_image,
    heat_overlay,
    image_panel,
    masked_view,
    new_figure,
    to_uint8,
)
from featinv.analyses.shift import (
    check_feature_norms,
    reference_norms,
    warn_if_shifted,
)
from featinv.errors import FeatinvError
from featinv.report.notebook import GridDisplay, Panel

__all__ = ["Steering", "SteeringItem", "gradcam", "parse_concepts", "steer_concepts"]

DEFAULT_ATTENUATE = 0.25
DEFAULT_THRESHOLD = 0.33


def parse_concepts(concepts: str | int | Sequence[int] | None, n_concepts: int) -> list[int]:
    """``"all"``/None, an index, ``"0,2"`` or a list -> validated concept indices (0-based)."""
    if concepts is None or (isinstance(concepts, str) and concepts.strip().lower() == "all"):
        return list(range(n_concepts))
    if isinstance(concepts, str):
        try:
            chosen = [int(part) for part in concepts.split(",") if part.strip()]
        except ValueError:
            raise FeatinvError(f"concept {concepts!r} is not an index; pass e.g. 0, 0,2 or all") from None
    elif isinstance(concepts, int) and not isinstance(concepts, bool):
        chosen = [concepts]
    else:
        chosen = [int(c) for c in concepts]
    if not chosen:
        raise FeatinvError("no concept chosen; pass an index such as 0, a list such as 0,2, or all")
    bad = [c for c in chosen if not 0 <= c < n_concepts]
    if bad:
        raise FeatinvError(f"concept {bad[0]} does not exist; these concepts have indices 0..{n_concepts - 1} "
                           "(or pass all)")
    return list(dict.fromkeys(chosen))


def class_name(index: int, num_classes: int) -> str | None:
    """The ImageNet name of a top-1 class when the classifier has the 1000 ImageNet outputs."""
    if num_classes != 1000:
        return None
    try:
        from featinv.features.imagenet import imagenet_classes

        return imagenet_classes()[index].name
    except (FeatinvError, IndexError):
        return None


def _normalise(maps: Tensor) -> Tensor:
    """Divide each map ``[K, H, W]`` by its maximum (an all-zero map stays zero)."""
    peak = maps.flatten(1).amax(1).clamp_min(0)
    return torch.where(peak[:, None, None] > 0, maps / peak.clamp_min(1e-30)[:, None, None], torch.zeros_like(maps))


def gradcam(backbone: Any, x: Tensor, target: int, size: tuple[int, int]) -> Tensor:
    """Grad-CAM ``[H, W]`` (ReLU'd, normalised to [0, 1]) at ``backbone.layer`` for class ``target``.

    Uses captum's ``LayerGradCam`` and ``LayerAttribution.interpolate`` when the layer outputs NCHW; for
    token / channels-last layers the same formula runs on the backbone's NCHW view of the layer.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    module = dict(backbone.model.named_modules())[backbone.layer]
    grid = tuple(backbone.info.grid)
    x = x.detach().clone().to(backbone.device).requires_grad_(True)
    with torch.enable_grad():
        attr = LayerGradCam(lambda inputs: _logits(backbone, inputs), module).attribute(
            x, target=int(target), relu_attributions=True)
        if attr.ndim != 4 or tuple(attr.shape[1:]) != (1, *grid):
            attr = _gradcam_nchw(backbone, module, x, int(target))
    cam = LayerAttribution.interpolate(attr.detach().float(), size, interpolate_mode="bilinear")[0, 0]
    cam = cam.clamp_min(0)
    peak = float(cam.max())
    return (cam / peak if peak > 0 else cam).cpu()


def _logits(backbone: Any, x: Tensor) -> Tensor:
    """The backbone's class logits with gradients (a Hugging Face model returns them inside an output object)."""
    return backbone.knowledge.logits(backbone.knowledge.run(backbone.model, x))


def _gradcam_nchw(backbone: Any, module: torch.nn.Module, x: Tensor, target: int) -> Tensor:
    store: dict[str, Any] = {}

    def hook(_m: torch.nn.Module, _i: Any, output: Any) -> None:
        store["output"] = output

    handle = module.register_forward_hook(hook)
    try:
        logits = _logits(backbone, x)
    finally:
        handle.remove()
    output = backbone.knowledge.layer_output(store["output"])
    (grad,) = torch.autograd.grad(logits[:, target].sum(), output)
    acts = backbone.to_nchw(output, x)
    grads = backbone.to_nchw(grad, x)
    return F.relu((grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1, keepdim=True))


@dataclass
class SteeringItem(GridDisplay):
    """FeatInv-Viz result for one image; maps are ``[K, R, R]`` at the reconstruction resolution."""

    name: str
    image: np.ndarray                 # [R, R, 3] uint8, the crop the backbone sees
    concepts: list[int]
    top1: int | None                  # None: the backbone has no classifier
    top1_name: str | None
    difference: Tensor                # median Euclidean RGB distance per concept (raw)
    normalised: Tensor                # difference / its max
    masks: Tensor                     # normalised >= threshold
    concept_maps: Tensor              # coarse |part|^2 upsampled bilinearly, normalised
    coarse_maps: Tensor               # [K, h, w] raw |part|^2 at the feature grid
    gradcam: Tensor | None            # [R, R] in [0, 1]
    original_reconstruction: Tensor   # [3, R, R], first seed
    edited_reconstructions: Tensor    # [K, 3, R, R], first seed
    seeds: list[int]
    threshold: float
    energy_share: list[float]         # concept's share of the feature map's squared norm
    reconstruction_cosine: float      # median cosine of the original reconstructions' features vs the map
    norm_checks: list[dict[str, Any]] = field(default_factory=list)
    attenuate: float | None = None    # the factor each concept was scaled by

    def display_rows(self) -> list[list[Panel]]:
        """The original, Grad-CAM and the reconstruction; then per concept its map, its FeatInv-Viz mask and
        the steered reconstruction (the figure's panels, for notebooks and the explorer)."""
        top = [("original", self.image)]
        if self.gradcam is not None:
            top.append(("Grad-CAM (top-1)", heat_overlay(self.image, self.gradcam.numpy())))
        top.append((f"reconstruction, cos {self.reconstruction_cosine:.2f}", to_uint8(self.original_reconstruction)))
        factor = "" if self.attenuate is None else f" x{self.attenuate:g}"
        rows = [top]
        for j, c in enumerate(self.concepts):
            share = 100 * float(self.masks[j].float().mean())
            rows.append([(f"concept {c} map", heat_overlay(self.image, self.concept_maps[j].numpy())),
                         (f"concept {c}: {share:.0f}% changed", masked_view(self.image, self.masks[j].numpy())),
                         (f"concept {c}{factor}", to_uint8(self.edited_reconstructions[j]))])
        return rows

    def display_title(self) -> str:
        return f"{self.name}: top-1 {self.top1}" + (f" {self.top1_name}" if self.top1_name else "")

    def numbers(self) -> dict[str, Any]:
        """Numbers as JSON: per concept, difference, mask share, energy share and norm check."""
        per_concept = []
        for k, c in enumerate(self.concepts):
            per_concept.append({
                "concept": c,
                "difference_max": float(self.difference[k].max()),
                "difference_mean": float(self.difference[k].mean()),
                "mask_fraction": float(self.masks[k].float().mean()),
                "energy_share": self.energy_share[k],
                "norm_check": self.norm_checks[k] if k < len(self.norm_checks) else None,
            })
        return {"image": self.name, "top1_class": self.top1, "top1_name": self.top1_name, "seeds": self.seeds, "threshold": self.threshold,
                "reconstruction_cosine": self.reconstruction_cosine, "concepts": per_concept}


class Steering(Analysis):
    """FeatInv-Viz: concept steering visualised in input space (Algorithm 1 of the paper).

    ``attenuate``: factor for the concept's part (0.25 in the paper; 1 changes nothing; values above 1
    amplify and are flagged as out of distribution when they push norms beyond the reference); ``n``:
    seed pairs; ``threshold``: mask threshold on the normalised difference (0.33).
    """

    name = "steering"

    def __init__(self, attenuate: float = DEFAULT_ATTENUATE, n: int = 5, threshold: float = DEFAULT_THRESHOLD, *,
                 gradcam: bool = True, progress: bool = True, sampling: SamplingOptions | None = None,
                 **sampling_fields: Any) -> None:
        """``sampling`` (or its fields: seed, steps, guidance_scale, scheduler, batch_size, bf16) sets how to sample."""
        super().__init__(progress, sampling=sampling, **sampling_fields)
        if isinstance(attenuate, bool) or not isinstance(attenuate, (int, float)) or not np.isfinite(attenuate) \
                or attenuate < 0:
            raise FeatinvError(f"attenuate must be a number >= 0, got {attenuate!r}; use 0.25 (the paper) to weaken "
                               "a concept, 0 to remove it")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise FeatinvError(f"threshold must be in (0, 1], got {threshold!r}; the paper uses 0.33")
        self.attenuate = float(attenuate)
        self.n = check_count(n, "n")
        self.threshold = float(threshold)
        self.use_gradcam = bool(gradcam)

    def settings(self) -> dict[str, Any]:
        return {"attenuate": self.attenuate, "n": self.n, "threshold": self.threshold, **self.sampling.settings()}

    def run(self, model: Any, images: Any, out_dir: Any = None, device: Any = "cpu", *,  # type: ignore[override]
            decomposer: Any, concepts: str | int | Sequence[int] | None = "all") -> AnalysisResult:
        """FeatInv-Viz for every image: ``<image>.png`` (Figure 4 style) + ``<image>.json`` + ``summary.json``."""
        return super().run(model, images, out_dir, device, decomposer=decomposer, concepts=concepts)

    def compute(self, model: Any, images: Any, *, decomposer: Any = None,  # type: ignore[override]
                concepts: str | int | Sequence[int] | None = "all") -> list[SteeringItem]:
        """Difference maps, masks and the comparison maps for every image (nothing written)."""
        if decomposer is None:
            raise FeatinvError("FeatInv-Viz needs fitted concepts; pass decomposer= (or --concepts DIR)")
        model = as_model(model)
        decomposer = as_decomposer(decomposer)
        info = model.backbone.info
        decomposer.check_backbone(info.spec, info.layer, info.channels)
        chosen = parse_concepts(concepts, decomposer.n_concepts)
        if not model.backbone.has_classifier:
            warnings.warn(f"{info.spec} has no classifier head: the top-1 class and Grad-CAM are left out",
                          UserWarning, stacklevel=2)
        return [self._one(model, decomposer, item, chosen) for item in as_images(images)]

    def _one(self, model: Any, decomposer: Any, item: NamedImage, chosen: list[int]) -> SteeringItem:
        from featinv.analyses.base import image_features, reconstruction_features
        from featinv.evaluation.metrics import cosine_median

        backbone = model.backbone
        x = backbone.preprocess(item.image)
        top1 = None
        if backbone.has_classifier:  # an encoder without a classifier has no top-1 class and no Grad-CAM
            with torch.no_grad():
                top1 = int(backbone.logits(x).argmax(-1)[0])
        fmap = image_features(model, [item.image])
        decomposition = decomposer.decompose(fmap)
        original = decomposition.total()   # Algorithm 1: phi = sum_i phi_i
        edited = torch.cat([decomposition.edited(c, self.attenuate) for c in chosen])   # [K, C, h, w]
        reference, ref_name = reference_norms(model, fmap)
        checks = []
        for k, c in enumerate(chosen):
            check = check_feature_norms(edited[k:k + 1], reference, ref_name)
            checks.append(check.as_dict())
            warn_if_shifted(check, f"concept {c} x{self.attenuate:g} on {item.name}",
                            "use attenuate <= 1 (the paper attenuates to 0.25)")

        seeds = seeds_for(self.sampling.seed, self.n)
        k_count = len(chosen)
        maps = torch.cat([original.expand(self.n, -1, -1, -1), edited.repeat_interleave(self.n, dim=0)])
        all_seeds = seeds * (k_count + 1)
        recon = reconstruct_unique(model, maps, all_seeds, self.sampling, self.progress, self.samples)
        originals = recon[:self.n]                                             # [n, 3, R, R]
        edits = recon[self.n:].reshape(k_count, self.n, *recon.shape[1:])     # [K, n, 3, R, R]
        distance = (originals[None] - edits).pow(2).sum(2).sqrt()              # [K, n, R, R]
        difference = torch.quantile(distance.double(), 0.5, dim=1).float() if self.n > 1 else distance[:, 0]
        normalised = _normalise(difference)
        size = tuple(recon.shape[-2:])

        coarse = decomposition.concept_maps()[chosen, 0].float().cpu()        # [K, h, w]
        upsampled = F.interpolate(coarse[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        energy = decomposition.parts.double().pow(2).sum(dim=(1, 2, 3, 4))
        total_energy = float(energy.sum()) or 1.0
        cam = gradcam(backbone, x, top1, size) if self.use_gradcam and top1 is not None else None
        rec_cos = float(cosine_median(original.expand(self.n, -1, -1, -1).cpu(),
                                      reconstruction_features(model, originals).cpu()).median())
        return SteeringItem(
            name=item.name, image=display_image(item.image, size[0], tuple(info_aspect(backbone))), concepts=chosen,
            top1=top1, top1_name=class_name(top1, backbone.info.num_classes) if top1 is not None else None, difference=difference, normalised=normalised, masks=normalised >= self.threshold,
            concept_maps=_normalise(upsampled.clamp_min(0)), coarse_maps=coarse, gradcam=cam,
            original_reconstruction=originals[0], edited_reconstructions=edits[:, 0], seeds=seeds,
            threshold=self.threshold, energy_share=[float(energy[c]) / total_energy for c in chosen],
            reconstruction_cosine=rec_cos, norm_checks=checks, attenuate=self.attenuate,
        )

    def figure(self, item: SteeringItem) -> Any:
        """Figure 4 layout: original + one FeatInv-Viz mask per concept; below, Grad-CAM and the coarse
        upsampled concept maps; bottom row, one seed's reconstruction of the original and of each edit."""
        k = len(item.concepts)
        fig, axes = new_figure(3, k + 1)
        label = "" if item.top1 is None else f"top-1: {item.top1}" + (f" {item.top1_name}" if item.top1_name else "")
        image_panel(axes[0, 0], item.image, "original", label)
        for j, c in enumerate(item.concepts):
            dimmed = masked_view(item.image, item.masks[j].numpy())
            share = 100 * float(item.masks[j].float().mean())
            image_panel(axes[0, j + 1], dimmed, f"concept {c}: FeatInv-Viz", f"{share:.0f}% of pixels")
            image_panel(axes[1, j + 1], item.image, f"concept {c}: upsampled map")
            axes[1, j + 1].imshow(item.concept_maps[j].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            image_panel(axes[2, j + 1], to_uint8(item.edited_reconstructions[j]), f"concept {c} x{self.attenuate:g}")
        if item.gradcam is not None:
            image_panel(axes[1, 0], item.image, "Grad-CAM (top-1)")
            axes[1, 0].imshow(item.gradcam.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        image_panel(axes[2, 0], to_uint8(item.original_reconstruction), f"reconstruction (seed {item.seeds[0]})",
                    f"cos {item.reconstruction_cosine:.2f}")
        fig.suptitle(f"{item.name}: mask = normalised median difference >= {item.threshold:g}", fontsize=9)
        return fig


def info_aspect(backbone: Any) -> tuple[int, int]:
    """The backbone input's (height, width), which fixes the aspect of the crop it sees."""
    return tuple(int(v) for v in backbone.info.input_size)  # type: ignore[return-value]


def steer_concepts(model: Any, decomposer: Any, images: Any, out_dir: Any = None,
                   concepts: str | int | Sequence[int] | None = "all", attenuate: float = DEFAULT_ATTENUATE,
                   n: int = 5, threshold: float = DEFAULT_THRESHOLD, seed: int = 0, steps: int = 50,
                   guidance_scale: float | None = None, scheduler: str = "ddim", batch_size: int = 16,
                   gradcam: bool = True, device: str = "cpu", progress: bool = True) -> AnalysisResult:
    """FeatInv-Viz in one call: ``model`` (FeatInv or run folder), ``decomposer`` (fitted or its folder),
    ``images`` (paths, folders or PIL images); writes figures + JSON to ``out_dir`` when given."""
    analysis = Steering(attenuate=attenuate, n=n, threshold=threshold, seed=seed, steps=steps,
                        guidance_scale=guidance_scale, scheduler=scheduler, batch_size=batch_size,
                        gradcam=gradcam, progress=progress)
    return analysis.run(model, images, out_dir, device, decomposer=decomposer, concepts=concepts)


def __getattr__(name: str) -> Any:
    """``FeatInvViz``, the class's name before 0.2, still works for one release (with a DeprecationWarning)."""
    if name == "FeatInvViz":
        warnings.warn("featinv.FeatInvViz is now featinv.Steering (the analysis is registered and run as "
                      "`steering`); the old name will be removed in the next release", DeprecationWarning,
                      stacklevel=2)
        return Steering
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
