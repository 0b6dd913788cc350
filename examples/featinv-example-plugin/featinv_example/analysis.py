"""An analysis plugin: ``roundtrip`` reconstructs each image from its own features and scores the result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from featinv.analyses.base import Analysis, as_images
from featinv.data import to_uint8
from featinv.hookspecs import Register, hookimpl


@dataclass
class RoundTripItem:
    """One image: what it looked like, its reconstruction and the cosine of their feature maps."""

    name: str
    original: np.ndarray
    reconstruction: np.ndarray
    cosine: float

    def numbers(self) -> dict[str, Any]:
        return {"cosine": self.cosine}


class RoundTrip(Analysis):
    """Feature map -> FeatInv reconstruction -> feature map again; a cosine near 1 means the model inverts well."""

    name = "roundtrip"  # must equal the registered name: it is written to every JSON

    def __init__(self, **common: Any) -> None:
        super().__init__(**common)  # progress= and the sampling options (seed, steps, ...) -> self.sampling

    def settings(self) -> dict[str, Any]:
        return {"steps": self.sampling.steps, "seed": self.sampling.seed}

    def compute(self, model: Any, images: Any, **inputs: Any) -> list[RoundTripItem]:
        items = []
        for named in as_images(images):
            with torch.no_grad():
                original = model.features([named.image]).float()
            recon = model.reconstruct(features=original, seeds=[self.sampling.seed], steps=self.sampling.steps,
                                      progress=self.progress)
            with torch.no_grad():
                again = model.features(recon.images.clamp(0, 1)).float()
            cosine = float(F.cosine_similarity(original.flatten(1), again.flatten(1)).item())
            items.append(RoundTripItem(named.name, np.asarray(named.image.convert("RGB")), to_uint8(recon.images[0]),
                                       cosine))
        return items

    def figure(self, item: RoundTripItem) -> Figure:
        fig = Figure(figsize=(4.4, 2.5), layout="constrained")
        for ax, image, title in zip(fig.subplots(1, 2), (item.original, item.reconstruction),
                                    ("input", f"reconstruction (cos {item.cosine:.2f})"), strict=True):
            ax.imshow(image)
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
        return fig


@hookimpl
def register_analyses(register: Register) -> None:
    register("roundtrip", RoundTrip, description="reconstruct each image from its features, score the cosine (example)")
