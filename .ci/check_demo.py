"""CI check of `featinv demo --quick`: every output exists, the metrics are sane numbers, and the paper's
central finding holds (unpooled beats pooled on feature cosine similarity)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def main(out: Path) -> None:
    expected = ["report.html", "metrics.json", "metrics.png", "reconstructions.png", "guidance.png"]
    missing = [name for name in expected if not (out / name).is_file()]
    assert not missing, f"demo outputs missing: {missing}"
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("steering", "interpolation", "composition"):
        assert metrics["analyses"][name], f"{name} summary is empty"
    figures = sorted(p.name for p in (out / "analyses").rglob("*.png"))
    assert len(figures) >= 3, f"analysis figures missing: {figures}"
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 5, "report does not embed the figures"
    for variant in ("unpooled", "pooled"):
        summary = metrics["results"][variant]
        cos = summary["cosine_sim"]["mean"]
        assert math.isfinite(cos) and -1.0 <= cos <= 1.0, f"{variant} cosine {cos} is not a cosine"
        for key in ("top5", "top1"):
            assert 0.0 <= summary[key] <= 1.0, f"{variant} {key}={summary[key]} is not a rate"
        label = summary["fid"]["label"]
        assert label.startswith("FID[") and "pooled" in label, f"FID substitute is not labelled as such: {label}"
        assert math.isfinite(summary["fid"]["value"]), f"{variant} FID substitute is not finite"
    guided = metrics["results"]["unpooled+guidance"]
    assert guided["feature_guidance"]["strength"] > 0, "the guided evaluation did not record its guidance"
    for key in ("pixel_mse", "ssim", "high_freq_ratio"):
        for variant in ("unpooled", "unpooled+guidance"):
            value = metrics["results"][variant]["pixel_checks"][key]
            assert value is not None and math.isfinite(value), f"{variant} {key}={value} is not a finite number"
    assert math.isfinite(guided["cosine_sim"]["mean"]), "guided cosine is not finite"
    assert len(metrics["guidance_table"]) == 2 and (out / "guidance.png").is_file(), "guidance comparison missing"
    unpooled, pooled = (metrics["results"][v]["cosine_sim"]["mean"] for v in ("unpooled", "pooled"))
    assert unpooled > pooled, f"unpooled cosine {unpooled:.3f} does not beat pooled {pooled:.3f} (the paper's ordering)"
    assert metrics["unpooled_beats_pooled_on_cosine"] is True, "the demo's own verdict disagrees with its numbers"
    print(f"demo outputs OK: cosine unpooled {metrics['results']['unpooled']['cosine_sim']['mean']:.3f}, "
          f"pooled {metrics['results']['pooled']['cosine_sim']['mean']:.3f}, "
          f"unpooled with feature guidance {guided['cosine_sim']['mean']:.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
