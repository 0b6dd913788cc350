"""Compose's click-to-select grid: a click picks the cell under it, clicks toggle cells, and the region is
the rectangle spanning them, in the ``x0,y0,x1,y1`` form the Compose panel takes."""

from __future__ import annotations

import numpy as np

from featinv.analyses.compose import parse_region
from featinv.apps.explore_grid import cell_at, cells_region, grid_picture, toggle_cell


def test_a_click_picks_the_cell_under_it():
    grid = (2, 4)  # rows, columns (BackboneInfo.grid)
    assert cell_at(0, 0, (320, 160), grid) == (0, 0)
    assert cell_at(319, 159, (320, 160), grid) == (3, 1)
    assert cell_at(320, 160, (320, 160), grid) == (3, 1)  # the far edge stays inside
    assert cell_at(85, 70, (320, 160), grid) == (1, 0)


def test_clicks_toggle_cells_and_the_region_spans_them():
    cells = toggle_cell([], (0, 0))
    assert cells_region(cells) == "0,0,1,1"
    cells = toggle_cell(cells, (2, 1))
    assert cells == [(0, 0), (2, 1)] and cells_region(cells) == "0,0,3,2"
    cells = toggle_cell(cells, (0, 0))
    assert cells == [(2, 1)] and cells_region(cells) == "2,1,3,2"
    assert cells_region(toggle_cell(cells, (2, 1))) == ""
    region = parse_region(cells_region([(0, 0), (2, 1)]), (2, 4))
    assert (region.x0, region.y0, region.x1, region.y1) == (0, 0, 3, 2)


def test_the_grid_picture_shades_the_chosen_region_only():
    image = np.full((64, 64, 3), 40, dtype=np.uint8)
    plain = grid_picture(image, (2, 2))
    chosen = grid_picture(image, (2, 2), [(1, 1)])
    assert plain.shape == chosen.shape == (64, 64, 3)
    assert np.array_equal(plain[:30, :30], chosen[:30, :30])            # cell (0, 0) untouched
    assert chosen[48, 48, 0] > plain[48, 48, 0] + 20                      # cell (1, 1) shaded yellow
    assert plain[32, 10].tolist() != image[32, 10].tolist()               # a grid line
