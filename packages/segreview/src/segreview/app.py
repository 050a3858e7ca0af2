"""The web UI (Gradio): a review tab and a try-out tab wired to :mod:`segreview.callbacks`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import gradio as gr

from segcontract import ContractError
from segreview import callbacks
from segreview.callbacks import AppState
from segreview.review import SORTS
from segreview.tryout import CLICK_MODES, TASKS

__all__ = ["build_app", "launch"]

#: Errors a user can fix (a wrong path, a missing model, an empty selection): shown in the page, not as a crash.
_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError, RuntimeError, ContractError)


def _shown(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        try:
            return fn(*args)
        except _USER_ERRORS as error:
            raise gr.Error(str(error)) from error

    return wrapper


def _sample_components() -> list[gr.components.Component]:
    status = gr.Markdown("Open a dataset.", elem_id="review-status")
    with gr.Row():
        image = gr.Image(label="image", interactive=False, height=320, elem_id="review-image")
        panoptic = gr.Image(label="panoptic", interactive=False, height=320, elem_id="review-panoptic")
        semantic = gr.Image(label="semantic", interactive=False, height=320, elem_id="review-semantic")
    legend = gr.HTML(elem_id="review-legend")
    attention = gr.Gallery(
        label="attention heat maps (where stored)", columns=6, height="auto", object_fit="contain"
    )
    details = gr.Markdown(elem_id="review-details")
    return [status, image, panoptic, semantic, legend, attention, details]


def _review_tab(state: AppState, source: str) -> None:
    with gr.Row():
        path = gr.Textbox(
            value=source,
            label="dataset (folder, shard folder, parquet folder or Hub id)",
            elem_id="source",
            scale=4,
        )
        open_button = gr.Button("Open", elem_id="open", variant="primary")
    with gr.Row():
        class_name = gr.Dropdown(choices=[""], value="", label="class", elem_id="filter-class")
        min_quality = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="min quality", elem_id="min-quality")
        sort = gr.Dropdown(choices=list(SORTS), value=SORTS[0], label="sort", elem_id="sort")
        apply = gr.Button("Apply", elem_id="apply")
    with gr.Row():
        previous = gr.Button("◀ Previous", elem_id="prev")
        following = gr.Button("Next ▶", elem_id="next")
        reject = gr.Button("Reject / keep", elem_id="reject", variant="stop")
    sample = _sample_components()
    with gr.Row():
        output = gr.Textbox(label="save kept samples to (a new folder)", elem_id="output", scale=4)
        save = gr.Button("Save kept subset", elem_id="save")
    saved = gr.Markdown(elem_id="save-status")
    with gr.Row():
        pixels = gr.BarPlot(x="class", y="pixels", title="pixels per class", y_lim=[0, None])
        instances = gr.BarPlot(x="class", y="instances", title="instances per class", y_lim=[0, None])
        ignore = gr.BarPlot(
            x="class", y="ignore share", title="ignore share of images with the class", y_lim=[0, None]
        )
    table = gr.Dataframe(label="per-class statistics", interactive=False)

    def opened(text: str) -> list[Any]:
        outputs, names, frame, out = callbacks.open_source(state, text)
        return [*outputs, gr.update(choices=["", *names], value=""), frame, frame, frame, frame, out]

    open_button.click(_shown(opened), [path], [*sample, class_name, pixels, instances, ignore, table, output])
    apply.click(_shown(functools.partial(callbacks.arrange, state)), [class_name, min_quality, sort], sample)
    previous.click(_shown(lambda: callbacks.step(state, -1)), [], sample)
    following.click(_shown(lambda: callbacks.step(state, 1)), [], sample)
    reject.click(_shown(lambda: callbacks.reject(state)), [], sample)
    save.click(_shown(functools.partial(callbacks.save, state)), [output], [saved])


def _tryout_tab(state: AppState, model: str, adapters: str) -> None:
    with gr.Row():
        name = gr.Textbox(value=model, label="SEEM checkpoint or preset (tiny, focalt, ...)", elem_id="model")
        adapter_path = gr.Textbox(
            value=adapters, label="adapters (folder or Hub id, optional)", elem_id="adapters"
        )
        load = gr.Button("Load model", elem_id="load-model", variant="primary")
    loaded = gr.Markdown("No model loaded.", elem_id="model-status")
    with gr.Row():
        image = gr.Image(
            label="image (click: a point or a box corner)",
            type="numpy",
            sources=["upload"],
            elem_id="tryout-image",
            height=360,
        )
        overlay = gr.Image(label="prediction", interactive=False, height=360, elem_id="tryout-output")
    with gr.Row():
        task = gr.Radio(list(TASKS), value="visual prompt", label="task", elem_id="task")
        mode = gr.Radio(list(CLICK_MODES), value=CLICK_MODES[0], label="a click adds", elem_id="click-mode")
    with gr.Row():
        classes = gr.Textbox(label="classes (semantic / panoptic), comma-separated", elem_id="classes")
        things = gr.Textbox(label="thing classes (panoptic; empty: all)", elem_id="things")
        sentence = gr.Textbox(label="sentence (grounding)", elem_id="sentence")
        box = gr.Textbox(label="box x0, y0, x1, y1 (or click two box corners)", elem_id="box")
    with gr.Row():
        run = gr.Button("Run", elem_id="run", variant="primary")
        clear = gr.Button("Clear clicks", elem_id="clear-points")
    summary = gr.Markdown(elem_id="tryout-status")
    scores = gr.Dataframe(label="scores", interactive=False, elem_id="scores")
    results = [overlay, scores, summary]

    def clicked(picture: Any, adds: str, kind: str, typed_box: str, event: gr.SelectData) -> Any:
        x, y = event.index[:2]
        outcome = callbacks.click(state, picture, x, y, adds, kind, typed_box)
        if outcome is None:
            return gr.skip(), gr.skip(), f"{state.tryout.describe_prompts()} clicked; press Run."
        return outcome

    def cleared() -> str:
        state.tryout.clear()
        return "No points yet: click on the object."

    load.click(_shown(functools.partial(callbacks.load_model, state)), [name, adapter_path], [loaded])
    image.select(_shown(clicked), [image, mode, task, box], results)
    image.upload(cleared, [], [summary])
    clear.click(cleared, [], [summary])
    run.click(
        _shown(functools.partial(callbacks.run_model, state)),
        [image, task, classes, things, sentence, box],
        results,
    )


def build_app(state: AppState, source: str = "", model: str = "tiny", adapters: str = "") -> gr.Blocks:
    """The two-tab app on ``state``; ``source``/``model``/``adapters`` fill the text boxes."""
    with gr.Blocks(title="segreview") as demo:
        gr.Markdown("## segreview: review synthetic segmentation data, try the adapted model")
        with gr.Tab("Dataset review", elem_id="tab-review"):
            _review_tab(state, source)
        with gr.Tab("Model try-out", elem_id="tab-tryout"):
            _tryout_tab(state, model, adapters)
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, *, block: bool = True) -> str:
    """Serve ``demo`` on ``host`` (localhost by default: the app reads and writes local files); the URL."""
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, ssr_mode=False, quiet=True)
    return str(demo.local_url)
