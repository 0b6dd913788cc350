"""The `featinv explore` page served for real on 127.0.0.1: every panel over HTTP (gradio_client) gives the
Python API's images, bad uploads are messages in the page, and headless Chromium renders the panels."""

from __future__ import annotations

import shutil
import socket
import subprocess
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
from tests.fixtures_model import make_tiny_model  # noqa: E402
from tests.test_explore import tiny_concepts, tiny_photos, tiny_pooled_twin  # noqa: E402

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
    photos = tiny_photos()
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


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if path is None:
        pytest.skip("no Chromium found (Debian: apt-get install chromium); .ci/run installs it")
    return path


#: clicks the Reconstruct button once the page has loaded (what a user does first)
CLICK_RECONSTRUCT = "() => { setTimeout(() => document.getElementById('reconstruct-button').click(), 1000); }"


def test_the_page_renders_and_reconstructs_in_headless_chromium(served, tmp_path):
    """Open the page, click Reconstruct on the example shown, and see the panels and the answer's images.

    The answer is computed beforehand (same image, same settings), so the click is served from the cache
    and the browser's virtual clock never outruns the sampler.
    """
    browser = _chromium()
    explorer = served[0]
    explorer.reconstruct(explorer.example("noise.png"), name="noise.png")
    app, url = launch(explorer, port=free_port(), block=False, say=lambda _line: None, page_script=CLICK_RECONSTRUCT)
    try:
        common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                  "--virtual-time-budget=15000", f"--user-data-dir={tmp_path / 'profile'}"]
        dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=90).stdout
        shot = tmp_path / "explore.png"
        subprocess.run([*common, "--window-size=1280,1200", f"--screenshot={shot}", url], capture_output=True,
                       timeout=90, check=True)
    finally:
        app.close()
    for panel in PANELS:
        assert panel in dom, f"panel {panel!r} missing from the rendered page"
    assert "noise.png" in dom  # the examples given with --images
    assert "run0 seed 0, cos" in dom and "run1 seed 1, cos" in dom, "the reconstructions did not appear"
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.shape == (1200, 1280) and pixels.std() > 10  # not a blank page
