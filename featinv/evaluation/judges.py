"""The classifiers that judge reconstructions (``--evaluate-with``), each at its own input size.

A judge is named by a backbone spec (``timm:convnext_base.fb_in22k_ft_in1k``), a spec at a size
(``...@288``: the paper scores ConvNeXt at timm's 288 px test size, not its 224 px default), or a preset
(``paper:resnet50``: that preset's backbone, weights and input size). Table 2 needs all three.
"""

from __future__ import annotations

from typing import Any

from featinv.errors import FeatinvError


def parse_judge(name: str, weights: str = "pretrained") -> dict[str, Any]:
    """``{"spec", "weights", "input_size"}`` for one ``--evaluate-with`` value (nothing is built)."""
    from featinv import presets

    if presets.is_preset(name):
        judge = presets.get(name).judge()
        return judge if weights == "pretrained" else {**judge, "weights": weights}
    spec, at, size = name.rpartition("@") if "@" in name else (name, "", "")
    if not at:
        return {"spec": name, "weights": weights, "input_size": None}
    if not size.isdigit() or int(size) < 8:
        raise FeatinvError(f"--evaluate-with {name!r}: the size after '@' must be a whole number of pixels, "
                           f"e.g. {spec}@288")
    return {"spec": spec, "weights": weights, "input_size": int(size)}


def load_judge(name: str, weights: str = "pretrained", device: str = "cpu") -> Any:
    """The backbone ``name`` describes (see :func:`parse_judge`), built at its input size."""
    from featinv.features.backbone import backbone as make_backbone

    judge = parse_judge(name, weights)
    return make_backbone(judge["spec"], weights=judge["weights"], input_size=judge["input_size"], device=device)
