"""The schema of a run folder's ``config.json``, checked whenever a run is loaded.

Run folders are shared and hand-edited; a value of the wrong kind (``"pooled": "no"``, which Python would
read as true) or a typo in a key must be one line naming the key, not a silent misreading or a traceback
three calls later. Keys that older featinv versions did not write are optional.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featinv.errors import FeatinvError
from featinv.validation import Field, check_fields

__all__ = ["FORMAT", "FORMAT_VERSION", "RUN_CONFIG", "check_run_config"]

FORMAT = "featinv-run"
FORMAT_VERSION = 1

BACKBONE_FIELDS = {
    "spec": Field("str", required=True), "layer": Field("str", required=True), "weights": Field("str"),
    "input_size": Field("pair", low=1), "channels": Field("int", required=True, low=1),
    "grid": Field("pair", required=True, low=1),
    "preprocessing": Field("object"),  # a user-given mean/std (``--mean``/``--std``), so a reload rebuilds them
}
BASE_FIELDS = {
    "spec": Field("str", required=True), "resolution": Field("int", low=1), "latent_channels": Field("int", low=1),
    "latent_size": Field("int", low=1), "first_block_width": Field("int", low=1),
    "cross_attention_dim": Field("int", low=1), "prediction_type": Field("str"),
}
RUN_CONFIG = {
    "format": Field("str", required=True), "format_version": Field("int", low=1), "pooled": Field("bool"),
    "guidance_scale": Field("number"), "encoder": Field("str"),
    "backbone": Field("object", required=True, fields=BACKBONE_FIELDS),
    "base": Field("object", required=True, fields=BASE_FIELDS),
    "feature_norms": Field("any"),  # optional training norms (see featinv.analyses.shift)
}


def check_run_config(config: Any, path: Path) -> dict[str, Any]:
    """``config`` (read from ``path``) if it is a run config of this or an older format; else one line."""
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise FeatinvError(f"{path} is not a FeatInv run config; pass a folder written by `featinv train`")
    check_fields(config, RUN_CONFIG, str(path), "fix the value by hand or retrain the run")
    if config.get("format_version", 1) > FORMAT_VERSION:
        raise FeatinvError(f"{path} was written by a newer featinv (format {config['format_version']}); upgrade featinv")
    return config
