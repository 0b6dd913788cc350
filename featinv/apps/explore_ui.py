"""The `featinv explore` page: Gradio panels over :class:`~featinv.apps.explorer.Explorer`, nothing more.

Every handler turns the page's values into an explorer call and its :class:`ExploreResult` into a gallery
and a Markdown note; bad input (an unreadable upload, a bad region, missing concepts) becomes a message in
the page, never a traceback. Gradio is optional (``pip install "featinv[app]"``): it is imported only
inside :func:`require_gradio`, so the rest of featinv never needs it.

Safety: the page listens on 127.0.0.1 unless told otherwise, never makes a share link, opens no path the
browser sends (examples are chosen by name; uploads go through Gradio's own upload folder and are decoded
as images with size limits), and needs no network (system fonts, analytics off).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from featinv.apps.explorer import MAX_UPLOAD_BYTES, Explorer, ExploreResult, ExploreSettings
from featinv.errors import FeatinvError

__all__ = ["LOCAL_HOSTS", "PANELS", "build_app", "check_gradio", "launch", "require_gradio"]

PANELS = ("Reconstruct", "Steer concepts", "Compose", "Interpolate", "Settings", "Export")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
SCHEDULERS = ("ddim", "dpm++", "unipc")
_MISSING = 'the explorer needs Gradio, which is not installed; pip install "featinv[app]"'
REGIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "center", "left", "right", "top", "bottom",
           "full")


def check_gradio() -> None:
    """One line saying how to install Gradio when it is missing (without paying for importing it)."""
    import importlib.util

    try:
        found = importlib.util.find_spec("gradio") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise FeatinvError(_MISSING)


def require_gradio() -> Any:
    """The gradio module with analytics off, or one line saying how to install it."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio
    except ImportError:
        raise FeatinvError(_MISSING) from None
    return gradio


def _settings(steps: float, scheduler: str, guidance: float | None, feature_guidance: float, seeds: float,
              first_seed: float) -> ExploreSettings:
    """The Settings panel's values (guidance 0 or empty: the run's default)."""
    return ExploreSettings(steps=int(steps), scheduler=scheduler, guidance_scale=float(guidance) if guidance else None,
                           feature_guidance=float(feature_guidance), seeds=int(seeds), first_seed=int(first_seed))


def _shown(result: ExploreResult) -> tuple[list[tuple[Any, str]], str]:
    """A result as the page shows it: gallery items (image, caption) and a Markdown note."""
    lines = [f"**{result.display_title()}** — {result.timing()}", *(f"- {note}" for note in result.notes),
             *(f"- ⚠ out of distribution: {warning}" for warning in result.warnings)]
    return [(image, caption) for caption, image in result.panels()], "\n".join(lines)


def _guarded(call: Callable[..., ExploreResult]) -> Callable[..., tuple[list[tuple[Any, str]], str]]:
    """A handler that shows a bad input's one-line message in the page instead of failing the request."""
    def handler(*values: Any) -> tuple[list[tuple[Any, str]], str]:
        try:
            return _shown(call(*values))
        except FeatinvError as exc:
            return [], f"**error:** {exc}"

    handler.__name__ = call.__name__
    return handler


def _image_picker(gr: Any, explorer: Explorer, label: str, default_index: int = 0,
                  upload_api: str | bool = False) -> tuple[Any, Any]:
    """An example dropdown and an upload box above the image they choose; returns (dropdown, image).

    Uploads arrive as plain files and are decoded here (:meth:`Explorer.open_upload`), so a non-image or an
    oversized file is a message under the box rather than a failed request.
    """
    names = list(explorer.examples)
    default = names[min(default_index, len(names) - 1)] if names else None
    with gr.Column():
        dropdown = gr.Dropdown(names, value=default, label=f"{label}: example", interactive=True)
        upload = gr.File(label=f"{label}: or upload an image (PNG/JPEG, at most {MAX_UPLOAD_BYTES // 2**20} MB)",
                         file_types=["image"], type="filepath", height=60)
        image = gr.Image(value=explorer.examples.get(default) if default else None, type="filepath", format="png",
                         interactive=False, label=label, height=200)
        message = gr.Markdown()

    def uploaded(path: str | None) -> tuple[Any, Any, str]:
        try:
            return explorer.open_upload(path), None, ""
        except FeatinvError as exc:
            return gr.skip(), gr.skip(), f"**error:** {exc}"

    dropdown.input(lambda name: (explorer.example(name), "") if name else (gr.skip(), ""), dropdown, [image, message],
                   api_name=False)
    upload.upload(uploaded, upload, [image, dropdown, message], api_name=upload_api)
    return dropdown, image


def _name(example: str | None, path: str | None) -> str:
    """What a picked image is called in captions: the example's name, else "upload"."""
    return example if example and path else "upload"


def build_app(explorer: Explorer) -> Any:
    """The page as a ``gradio.Blocks`` (launch it with :func:`launch`, or ``.launch()`` yourself)."""
    gr = require_gradio()
    runs = list(explorer.models)
    with gr.Blocks(title="featinv explore", analytics_enabled=False) as app:
        gr.Markdown(f"# featinv explore\nRuns: {', '.join(f'`{r}`' for r in runs)}; concepts: "
                    f"{explorer.n_concepts or 'none'}. Each answer says how long it took; repeated ones come from "
                    "the cache.")
        with gr.Accordion("Settings", open=False), gr.Row():
            steps = gr.Slider(1, 100, value=explorer.settings.steps, step=1, label="steps")
            scheduler = gr.Dropdown(list(SCHEDULERS), value=explorer.settings.scheduler, label="scheduler")
            guidance = gr.Number(value=None, label="guidance (empty: the run's default)")
            feature_guidance = gr.Slider(0, 1, value=0, step=0.01, label="feature guidance (0: paper's sampler)")
            seeds = gr.Slider(1, 8, value=explorer.settings.seeds, step=1, label="seeds")
            first_seed = gr.Number(value=0, precision=0, label="first seed")
            run = gr.Dropdown(runs, value=explorer.analysis_run(), label="run for steer/compose/interpolate")
        settings = [steps, scheduler, guidance, feature_guidance, seeds, first_seed]
        with gr.Tabs():
            _reconstruct_tab(gr, explorer, settings)
            _steer_tab(gr, explorer, settings, run)
            _compose_tab(gr, explorer, settings, run)
            _interpolate_tab(gr, explorer, settings, run)
            _export_tab(gr, explorer)
    return app


def _outputs(gr: Any, label: str, name: str) -> tuple[Any, Any]:
    gallery = gr.Gallery(label=label, columns=4, height="auto", format="png", object_fit="contain",
                         elem_id=f"{name}-gallery")
    note = gr.Markdown()
    return gallery, note


def _reconstruct_tab(gr: Any, explorer: Explorer, settings: list[Any]) -> None:
    with gr.Tab("Reconstruct"):
        example, image = _image_picker(gr, explorer, "image", upload_api="upload")
        button = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct-button")
        gallery, note = _outputs(gr, "original, then each run's reconstructions", "reconstruct")

        def reconstruct(example_name: str | None, path: str | None, *values: Any) -> ExploreResult:
            return explorer.reconstruct(explorer.open_upload(path), _settings(*values), _name(example_name, path))

        button.click(_guarded(reconstruct), [example, image, *settings], [gallery, note], api_name="reconstruct")


def _steer_tab(gr: Any, explorer: Explorer, settings: list[Any], run: Any) -> None:
    with gr.Tab("Steer concepts"):
        if explorer.decomposer is None:
            gr.Markdown("**No concepts loaded.** Start with `featinv explore --run RUN --concepts DIR`; fit concepts "
                        "with `featinv concepts fit`.")
            return
        example, image = _image_picker(gr, explorer, "image")
        gr.Markdown("One slider per concept: 0 removes it, 1 keeps it, 2 doubles it (the paper uses 0.25).")
        with gr.Row():
            sliders = [gr.Slider(0, 2, value=1, step=0.05, label=f"concept {k}", elem_id=f"concept-{k}-slider")
                       for k in range(explorer.n_concepts)]
        button = gr.Button("Steer", variant="primary", elem_id="steer-button")
        gallery, note = _outputs(gr, "original, Grad-CAM, reconstruction; per concept: map, changed pixels, steered", "steer")

        def steer(example_name: str | None, path: str | None, run_name: str, *values: Any) -> ExploreResult:
            factors, sampling = values[:explorer.n_concepts], values[explorer.n_concepts:]
            return explorer.steer(explorer.open_upload(path), factors, _settings(*sampling), run_name,
                                  _name(example_name, path))

        inputs = [example, image, run, *sliders, *settings]
        button.click(_guarded(steer), inputs, [gallery, note], api_name="steer")
        for slider in sliders:
            slider.release(_guarded(steer), inputs, [gallery, note], api_name=False)


def _compose_tab(gr: Any, explorer: Explorer, settings: list[Any], run: Any) -> None:
    with gr.Tab("Compose"):
        with gr.Row():
            example_a, image_a = _image_picker(gr, explorer, "A")
            example_b, image_b = _image_picker(gr, explorer, "B", default_index=1)
        grid = explorer.models[explorer.analysis_run()].backbone.info.grid
        with gr.Row():
            picker = _cell_picker(gr, explorer, image_a, grid)
            with gr.Column():
                preset = gr.Dropdown(list(REGIONS), value="top-left", label="region of A that takes B's features")
                cells = gr.Textbox(label=f"or feature-grid cells x0,y0,x1,y1 (grid {grid[0]}x{grid[1]}; end exclusive; "
                                   "clicking cells on the left fills this in)", placeholder="e.g. 0,0,1,1",
                                   elem_id="compose-cells")
        button = gr.Button("Compose", variant="primary", elem_id="compose-button")
        gallery, note = _outputs(gr, "A, A reconstructed, composed (region outlined), B reconstructed, B", "compose")
        picker(cells)

        def compose(name_a: str | None, path_a: str | None, name_b: str | None, path_b: str | None, region: str,
                    cell_text: str, run_name: str, *values: Any) -> ExploreResult:
            return explorer.compose(explorer.open_upload(path_a), explorer.open_upload(path_b),
                                    (cell_text or "").strip() or region, _settings(*values), run_name,
                                    (_name(name_a, path_a), _name(name_b, path_b)))

        button.click(_guarded(compose), [example_a, image_a, example_b, image_b, preset, cells, run, *settings],
                     [gallery, note], api_name="compose")


def _cell_picker(gr: Any, explorer: Explorer, image_a: Any, grid: tuple[int, int]) -> Callable[[Any], None]:
    """Image A with the feature grid drawn; a click toggles a cell (see :mod:`featinv.apps.explore_grid`).

    Returns a function that wires the picture to the cells text box once that exists: the box holds the
    rectangle covering the clicked cells, so typing cells and choosing presets keep working as before.
    """
    from featinv.analyses.figures import display_image
    from featinv.apps.explore_grid import GRID_PICTURE_SIZE, cell_at, cells_region, grid_picture, toggle_cell

    aspect = tuple(int(v) for v in explorer.models[explorer.analysis_run()].backbone.info.input_size)

    def base(path: str | None) -> Any:
        return display_image(explorer.open_upload(path), GRID_PICTURE_SIZE, aspect)

    first = image_a.value["path"] if isinstance(image_a.value, dict) else image_a.value
    chosen = gr.State([])
    picture = gr.Image(value=grid_picture(base(first), grid) if first else None, type="numpy", format="png",
                       interactive=False, label="A's feature grid: click cells to choose the region",
                       height=GRID_PICTURE_SIZE, elem_id="compose-grid", buttons=[])

    def redraw(path: str | None) -> tuple[Any, list[Any], str]:
        try:
            return grid_picture(base(path), grid), [], ""
        except FeatinvError:
            return None, [], ""

    def clicked(path: str | None, cells: list[Any], evt: Any) -> tuple[Any, list[Any], str]:
        try:
            shown = base(path)
        except FeatinvError:
            return gr.skip(), cells, gr.skip()
        x, y = evt.index[:2]
        cells = toggle_cell(cells, cell_at(x, y, (shown.shape[1], shown.shape[0]), grid))
        return grid_picture(shown, grid, cells), cells, cells_region(cells)

    clicked.__annotations__ = {"evt": gr.SelectData}  # how Gradio knows to pass the click (no string annotation)

    def wire(cells_box: Any) -> None:
        image_a.change(redraw, image_a, [picture, chosen, cells_box], api_name=False)
        picture.select(clicked, [image_a, chosen], [picture, chosen, cells_box], api_name=False)

    return wire


def _interpolate_tab(gr: Any, explorer: Explorer, settings: list[Any], run: Any) -> None:
    with gr.Tab("Interpolate"):
        with gr.Row():
            example_a, image_a = _image_picker(gr, explorer, "A")
            example_b, image_b = _image_picker(gr, explorer, "B", default_index=1)
        weight = gr.Slider(0, 1, value=0.5, step=0.05, label="share of A's feature map")
        button = gr.Button("Interpolate", variant="primary", elem_id="interpolate-button")
        gallery, note = _outputs(gr, "A, the mixed map's reconstruction, B", "interpolate")

        def interpolate(name_a: str | None, path_a: str | None, name_b: str | None, path_b: str | None,
                        share: float, run_name: str, *values: Any) -> ExploreResult:
            return explorer.interpolate(explorer.open_upload(path_a), explorer.open_upload(path_b), float(share),
                                        _settings(*values), run_name, (_name(name_a, path_a), _name(name_b, path_b)))

        inputs = [example_a, image_a, example_b, image_b, weight, run, *settings]
        button.click(_guarded(interpolate), inputs, [gallery, note], api_name="interpolate")
        weight.release(_guarded(interpolate), inputs, [gallery, note], api_name=False)


def _export_tab(gr: Any, explorer: Explorer) -> None:
    with gr.Tab("Export"):
        gr.Markdown("The session so far as one self-contained HTML file (images embedded), like the demo's report.")
        button = gr.Button("Export session", elem_id="export-button")
        file = gr.File(label="session HTML")
        note = gr.Markdown()

        def export() -> tuple[str | None, str]:
            try:
                path = explorer.export()
            except FeatinvError as exc:
                return None, f"**error:** {exc}"
            return str(path), f"{len(explorer.history)} result(s) exported"

        button.click(export, None, [file, note], api_name="export")


def launch(explorer: Explorer, host: str = "127.0.0.1", port: int | None = None, block: bool = True,
           say: Callable[[str], None] = print) -> Any:
    """Serve the page (no share link, uploads capped); returns ``(app, url)``; ``block=False`` returns at once."""
    gr = require_gradio()
    if host not in LOCAL_HOSTS:
        say(f"warning: listening on {host}: anyone who can reach this machine can use the explorer (and its CPU); "
            "there is no login")
    app = build_app(explorer)
    theme = gr.themes.Default(font=["sans-serif"], font_mono=["monospace"])  # system fonts: no CDN offline
    _, url, _ = app.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=True, quiet=True,
                           max_file_size=MAX_UPLOAD_BYTES, theme=theme, footer_links=[], show_error=False,
                           inbrowser=False, ssr_mode=False, mcp_server=False, enable_monitoring=False)
    say(f"featinv explore is running at {url} (Ctrl-C stops it)")
    if block:
        try:
            app.block_thread()
        finally:
            app.close()
    return app, url
