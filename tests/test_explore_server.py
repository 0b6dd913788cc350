"""The `featinv explore` page served for real on 127.0.0.1: every panel over HTTP (gradio_client) gives the
Python API's images, bad uploads are messages in the page, and headless Chromium renders the panels."""

from __future__ import annotations

import socket
from pathlib import Path

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


#: the standard deviation of each loaded image's pixels in a gallery (0 for a blank image)
GALLERY_SPREAD = """(() => [...document.querySelectorAll('#NAME-gallery img')]
  .filter(img => img.complete && img.naturalWidth > 0).map(img => {
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const context = canvas.getContext('2d'); context.drawImage(img, 0, 0);
    const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let sum = 0, squares = 0;
    for (let k = 0; k < data.length; k++) { if (k % 4 !== 3) { sum += data[k]; squares += data[k] * data[k]; } }
    const n = data.length * 3 / 4, mean = sum / n;
    return Math.sqrt(Math.max(squares / n - mean * mean, 0));
  }))()"""
MOVE_SLIDER = """(() => { const slider = document.querySelector('#concept-0-slider input[type=range]');
  Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(slider, '0.25');
  slider.dispatchEvent(new Event('input', {bubbles: true})); return slider.value; })()"""


def test_a_user_reconstructs_and_steers_in_headless_chromium(served, tmp_path):
    """Open the page, click Reconstruct on the example shown, wait for the images; open Steer concepts, move
    concept 0's slider to 0.25, click Steer, wait for the steered images; all shown and none blank."""
    from tests.chromium import Chromium, find_chromium

    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium found (Debian: apt-get install chromium); .ci/run installs it")
    with Chromium(binary, tmp_path / "profile") as page:
        page.open(served[2])
        page.wait_for("!!document.getElementById('reconstruct-button')", what="the page to load")
        text = page.evaluate("document.body.innerText")
        assert all(panel in text for panel in PANELS), text[:500]
        page.evaluate("document.getElementById('reconstruct-button').click()")
        page.wait_for("document.body.innerText.includes('run1 seed 1, cos')", 120, "the reconstructions")
        spread = page.wait_for(GALLERY_SPREAD.replace("NAME", "reconstruct") + ".length === 5 && "
                               + GALLERY_SPREAD.replace("NAME", "reconstruct"), what="the 5 images to load")
        assert min(spread) > 1, f"a blank image among the reconstructions: {spread}"
        page.evaluate("[...document.querySelectorAll('button[role=tab]')].find(b => b.textContent.trim() === "
                      "'Steer concepts').click()")
        page.wait_for("!!document.querySelector('#concept-0-slider input[type=range]')", what="the Steer panel")
        assert page.evaluate(MOVE_SLIDER) == "0.25"
        page.evaluate("document.getElementById('steer-button').click()")
        page.wait_for("document.body.innerText.includes('concept 0 x0.25')", 180, "the steered reconstruction")
        spread = page.wait_for(GALLERY_SPREAD.replace("NAME", "steer") + ".length === 9 && "
                               + GALLERY_SPREAD.replace("NAME", "steer"), what="the 9 steering images to load")
        assert min(spread) > 1, f"a blank image among the steering panels: {spread}"
        shot = page.screenshot(tmp_path / "explore.png")
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.shape == (1200, 1280) and pixels.std() > 10
