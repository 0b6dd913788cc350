"""Report helpers: figures are written, the HTML page embeds them and shows the table."""

from __future__ import annotations

import numpy as np
from PIL import Image

from featinv.report.figures import image_grid, markdown_table, table_figure
from featinv.report.html import Section, write_html_report


def _img(value: int) -> Image.Image:
    return Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8))


def test_grid_table_and_html(tmp_path):
    grid = image_grid([[_img(0), _img(255)], [_img(128)]], tmp_path / "grid.png", row_labels=["a", "b"],
                      col_labels=["x", "y"], captions=[["cos 0.5", ""], ["cos 0.1"]])
    rows = [{"model": "unpooled", "cos": 0.42}, {"model": "pooled", "cos": 0.13}]
    table = table_figure(rows, tmp_path / "table.png", title="metrics")
    assert Image.open(grid).size[0] > 50 and Image.open(table).size[0] > 50
    assert markdown_table(rows).splitlines()[2] == "| unpooled | 0.420 |"
    page = write_html_report(tmp_path / "report.html", "demo", [Section("Results", ["text <b>"], rows, [grid])])
    content = page.read_text()
    assert "data:image/png;base64," in content and "<td>0.130</td>" in content and "text &lt;b&gt;" in content
