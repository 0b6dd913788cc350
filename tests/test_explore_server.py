"""The `featinv explore` page served for real on 127.0.0.1: every panel over HTTP (gradio_client) gives the
Python API's images, bad uploads are messages in the page, and headless Chromium renders the panels."""

from __future__ import annotations

import io
import os
import shutil
import socket
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio", reason="the app extra is not installed (pip install \"featinv[app]\")")
pytestmark = pytest.mark.usefixtures("one_thread")

from featinv.apps.explore_ui import PANELS, launch  # noqa: E402
from featinv.apps.explorer import Explorer, ExploreSettings  # noqa: E402
from featinv.data import to_uint8  # noqa: E402
from tests.fixtures_model import make_tiny_model, make_tiny_photos  # noqa: E402
from tests.test_explore import tiny_concepts, tiny_pooled_twin  # noqa: E402

FAST = ExploreSettings(steps=2, seeds=2)
#: the Settings panel's values in the order every panel takes them: steps, scheduler, guidance, feature
#: guidance, seeds, first seed
SETTINGS = (2, "ddim", None, 0, 2, 0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(explorer, model, url, examples folder) with the page listening on 127.0.0.1."""
    torch.manual_seed(0)
    model = make_tiny_model(tmp_path_factory.mktemp("explore-server"))
    photos = make_tiny_photos()
    folder = tmp_path_factory.mktemp("examples")
    for name, image in photos.items():
        image.save(folder / name)
    explorer = Explorer([model, tiny_pooled_twin(model)], concepts=tiny_concepts(model, photos), images=folder,
                        settings=FAST)
    app, url = launch(explorer, host="127.0.0.1", port=free_port(), block=False, say=lambda _line: None)
    assert url.startswith("http://127.0.0.1:")
    yield explorer, model, url, folder
    app.close()


@pytest.fixture(scope="module")
def client(served, tmp_path_factory):
    from gradio_client import Client

    return Client(served[2], verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def _pixels(item: dict) -> np.ndarray:
    with Image.open(item["image"]) as image:
        return np.asarray(image.convert("RGB"))


def test_every_panel_over_http_gives_the_python_apis_images(served, client):
    from gradio_client import handle_file

    explorer, model, _, folder = served
    noise, ramp = handle_file(str(folder / "noise.png")), handle_file(str(folder / "ramp.png"))
    gallery, note = client.predict("noise.png", noise, *SETTINGS, api_name="/reconstruct")
    image = explorer.example("noise.png")
    direct = model.reconstruct(images=[image, image], seeds=[0, 1], steps=2, progress=False)
    assert len(gallery) == 5 and gallery[1]["caption"].startswith("run0 seed 0")
    assert np.array_equal(_pixels(gallery[1]), to_uint8(direct.images[0]))
    assert np.array_equal(_pixels(gallery[2]), to_uint8(direct.images[1]))
    assert "took" in note and "top-5" in note

    gallery, note = client.predict("noise.png", noise, "run0", 0.25, 1.0, *SETTINGS, api_name="/steer")
    want = explorer.steer(image, [0.25, 1.0], FAST, "run0")
    assert [g["caption"] for g in gallery] == [c for c, _ in want.panels()]
    assert all(np.array_equal(_pixels(g), p) for g, (_, p) in zip(gallery, want.panels(), strict=True))

    gallery, _ = client.predict("noise.png", noise, "ramp.png", ramp, "top-left", "", "run0", *SETTINGS,
                                api_name="/compose")
    want = explorer.compose(image, explorer.example("ramp.png"), "top-left", FAST, "run0", ("noise.png", "ramp.png"))
    assert all(np.array_equal(_pixels(g), p) for g, (_, p) in zip(gallery, want.panels(), strict=True))

    gallery, _ = client.predict("noise.png", noise, "ramp.png", ramp, 0.5, "run0", *SETTINGS, api_name="/interpolate")
    want = explorer.interpolate(image, explorer.example("ramp.png"), 0.5, FAST, "run0", ("noise.png", "ramp.png"))
    assert len(gallery) == 3 and np.array_equal(_pixels(gallery[1]), want.rows[0][1][1])

    path, note = client.predict(api_name="/export")
    assert "result(s) exported" in note and Path(path).read_text().count("data:image/png;base64,") >= 4


def test_bad_input_is_a_message_in_the_page(served, client, tmp_path):
    from gradio_client import handle_file

    text = tmp_path / "notes.png"
    text.write_text("not an image")
    _, _, message = client.predict(handle_file(str(text)), api_name="/upload")
    assert message.startswith("**error:**") and "not a readable image" in message
    gallery, note = client.predict(None, None, *SETTINGS, api_name="/reconstruct")
    assert gallery == [] and "choose an example or upload" in note
    gallery, note = client.predict("noise.png", handle_file(str(served[3] / "noise.png")), "ramp.png",
                                   handle_file(str(served[3] / "ramp.png")), "top-left", "9,9,12,12", "run0",
                                   *SETTINGS, api_name="/compose")
    assert gallery == [] and "leaves the" in note


def chrome(tmp_path: Path) -> Any:
    """Headless Debian Chromium under Selenium, with the chromedriver found on PATH (so Selenium Manager never
    looks for one online); skips with one line when either is missing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no chromium/chromedriver on PATH (Debian: apt-get install chromium chromium-driver); "
                    ".ci/run installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")
    service = Service(executable_path=driver, log_output=str(tmp_path / "chromedriver.log"))
    return webdriver.Chrome(options=options, service=service)


WINDOW = (1280, 1200)


def gallery_images(page: Any, name: str) -> list[np.ndarray]:
    """The images a gallery shows, fetched from the server by their ``src`` and decoded (empty until loaded)."""
    from selenium.webdriver.common.by import By

    sources = [e.get_attribute("src") or "" for e in page.find_elements(By.CSS_SELECTOR, f"#{name}-gallery img")]
    decoded: dict[str, np.ndarray] = {}  # identical images share one URL (Gradio names files by content)
    for source in dict.fromkeys(s for s in sources if s.startswith("http")):
        with urllib.request.urlopen(source, timeout=30) as answer, Image.open(io.BytesIO(answer.read())) as image:
            decoded[source] = np.asarray(image.convert("RGB"), dtype=np.float32)
    return [decoded[s] for s in sources if s in decoded]


def wait_for_images(page: Any, name: str, count: int, timeout: float, caption: str) -> list[np.ndarray]:
    """Wait until the page shows ``caption`` and the gallery ``count`` images; returns them decoded."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(page, timeout, poll_frequency=0.25).until(lambda p: caption in p.find_element("tag name", "body").text)
    except TimeoutException:
        text = page.find_element("tag name", "body").text
        raise AssertionError(f"no {caption!r} after {timeout} s; the page says: ...{text[-1500:]}") from None
    return WebDriverWait(page, 60, poll_frequency=0.25).until(
        lambda p: (found := gallery_images(p, name)) and len(found) >= count and found)


def screenshot_path(tmp_path: Path, name: str) -> Path:
    """Where a screenshot goes: the docs' image (docs/img/) only with FEATINV_UPDATE_SCREENSHOT=1, else tmp_path,
    so a test run never writes into the checkout."""
    if os.environ.get("FEATINV_UPDATE_SCREENSHOT") == "1":
        return Path(__file__).resolve().parents[1] / "docs" / "img" / name
    return tmp_path / name


def open_tab(page: Any, label: str) -> None:
    from selenium.webdriver.common.by import By

    next(b for b in page.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text.strip() == label).click()


def test_a_user_reconstructs_steers_and_clicks_grid_cells_in_headless_chromium(served, tmp_path):
    """Selenium drives the real page: pick an example, click Reconstruct, wait for the images; drag concept 0's
    slider down (its release steers), wait for the steered images; none blank. Then in Compose click two
    feature-grid cells on A's picture and compose that region."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    explorer, model, url, _ = served
    page = chrome(tmp_path)
    try:
        page.get(url)
        WebDriverWait(page, 60).until(lambda p: p.find_elements(By.ID, "reconstruct-button"))
        text = page.find_element(By.TAG_NAME, "body").text
        assert all(panel in text for panel in PANELS), text[:500]
        choose_example(page, "image: example", "ramp.png")
        page.find_element(By.ID, "reconstruct-button").click()
        shown = wait_for_images(page, "reconstruct", 5, 120, "run1 seed 1, cos")
        assert len(shown) == 5 and min(p.std() for p in shown) > 1, [p.std() for p in shown]
        assert "ramp.png" in page.find_element(By.TAG_NAME, "body").text

        open_tab(page, "Steer concepts")
        slider = WebDriverWait(page, 30).until(
            lambda p: p.find_element(By.CSS_SELECTOR, "#concept-0-slider input[type=range]"))
        width = slider.size["width"]
        ActionChains(page).move_to_element(slider).click_and_hold().move_by_offset(-int(width * 0.375), 0).release().perform()
        value = float(slider.get_attribute("value"))
        assert 0 < value < 1, value
        page.find_element(By.ID, "steer-button").click()  # the slider's release may have asked already: then cached
        steered = wait_for_images(page, "steer", 9, 300, f"concept 0 x{value:g}")
        assert len(steered) == 9 and min(p.std() for p in steered) > 1, [p.std() for p in steered]
        _save_screenshot(page, screenshot_path(tmp_path, "explore.png"))

        open_tab(page, "Compose")
        grid = WebDriverWait(page, 30).until(lambda p: p.find_element(By.CSS_SELECTOR, "#compose-grid img"))
        rows, columns = model.backbone.info.grid
        cells = page.find_element(By.CSS_SELECTOR, "#compose-cells textarea, #compose-cells input")
        for column, row, region in ((0, 0, "0,0,1,1"), (1, 1, "0,0,2,2"), (1, 1, "0,0,1,1"), (1, 1, "0,0,2,2")):
            click_cell(page, grid, column, row, (rows, columns))  # each click toggles a cell; the box follows
            try:
                WebDriverWait(page, 60, poll_frequency=0.25).until(lambda p, r=region: cells.get_attribute("value") == r)
            except TimeoutException:
                raise AssertionError(f"clicking cell {column},{row} left {cells.get_attribute('value')!r}, not "
                                     f"{region!r}") from None
        page.find_element(By.ID, "compose-button").click()
        composed = wait_for_images(page, "compose", 5, 120, "region cells x0,y0,x1,y1 = [0, 0, 2, 2]")
        assert min(p.std() for p in composed) > 1
        _save_screenshot(page, screenshot_path(tmp_path, "explore-compose.png"))
    finally:
        page.quit()


def choose_example(page: Any, label: str, name: str) -> None:
    """Pick ``name`` in the example dropdown labelled ``label`` (a Gradio dropdown: type, then click the option)."""
    from selenium.common.exceptions import ElementClickInterceptedException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    box = next(b for b in page.find_elements(By.CSS_SELECTOR, f"input[aria-label='{label}']") if b.is_displayed())
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)
    # a busy server covers the box with Gradio's translucent status overlay: retry the click until it is gone
    WebDriverWait(page, 120, poll_frequency=0.5, ignored_exceptions=[ElementClickInterceptedException]).until(
        lambda _page: box.click() or True)
    option = WebDriverWait(page, 30).until(
        lambda p: next((o for o in p.find_elements(By.CSS_SELECTOR, f"li[role=option][aria-label='{name}']")
                        if o.is_displayed()), None))
    option.click()
    WebDriverWait(page, 30).until(lambda p: box.get_attribute("value") == name)


def click_cell(page: Any, picture: Any, column: int, row: int, grid: tuple[int, int]) -> None:
    """A real mouse click on the centre of cell (column, row) of the grid picture (offsets from its centre)."""
    from selenium.webdriver.common.action_chains import ActionChains

    width, height = picture.size["width"], picture.size["height"]
    rows, columns = grid
    x = (column + 0.5) * width / columns - width / 2
    y = (row + 0.5) * height / rows - height / 2
    ActionChains(page).move_to_element_with_offset(picture, int(x), int(y)).click().perform()


def _save_screenshot(page: Any, path: Path) -> None:
    """The viewport as PNG: asserted to be a real page (not blank) before it is kept."""
    png = page.get_screenshot_as_png()
    with Image.open(io.BytesIO(png)) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert min(pixels.shape) > 500 and pixels.std() > 10, (pixels.shape, pixels.std())
    path.write_bytes(png)
