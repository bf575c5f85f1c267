"""The Gradio page of ``aledit ui``: components and their wiring. What happens on each event is
in :mod:`aledit.ui.logic` (plain functions, tested without a browser).

One model per process, loaded before the page is served; every event runs through Gradio's
queue with a concurrency of 1, so two edits never share the pipeline's state at the same time.
"""

from __future__ import annotations

import argparse
import functools
import logging
from dataclasses import dataclass, field

import gradio as gr
import numpy as np

from ..commands import UsageError, first_line, mask_provider
from ..edits import EditType
from ..masks.ops import MaskError
from . import logic
from .logic import MAX_OBJECTS, SCORE_COLUMNS

__all__ = ["CSS", "PIPELINE_QUEUE", "AppContext", "build_app"]

logger = logging.getLogger("aledit")

SCENE_PROVIDER = "scene (exact masks)"
# Every event that runs the pipeline (edits, attention masks) waits in this one queue, one at a time.
PIPELINE_QUEUE = "pipeline"
PROVIDERS = ("attention", "grounded-sam")


@dataclass
class AppContext:
    """What the page shares between requests: the one pipeline, its name, the synthetic
    settings when it is ``synthetic-tiny``, and mask providers loaded on first use."""

    pipe: object
    model: str
    settings: object | None = None
    device_choices: tuple[str, ...] = ("cpu",)
    providers: dict = field(default_factory=dict)

    @property
    def synthetic(self) -> bool:
        return self.settings is not None


def _page_errors(fn):
    """Shows a user's mistake as its one line in the page (a Gradio error), never a stack trace;
    anything unexpected is logged with its traceback on the server and shown as one line."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except logic.USER_ERRORS as exc:
            raise gr.Error(logic.one_line(exc), print_exception=False) from None
        except Exception as exc:  # the page shows one line; the server log keeps the traceback
            logger.exception("the edit failed")
            raise gr.Error(f"the edit failed: {first_line(exc)}", print_exception=False) from None

    return wrapper


def _provider(ctx: AppContext, name: str, size):
    """The CLI's mask provider ``name`` (loaded once, then kept), with the CLI's messages."""
    if name not in ctx.providers:
        args = argparse.Namespace(
            provider=name, model=ctx.model, device=str(ctx.pipe.device), size=size or 512,
            attention_threshold=0.2, box_threshold=0.45, text_threshold=0.40, detector=None, segmenter=None,
            no_mask_cache=True, mask_cache=None,
        )
        ctx.providers[name] = mask_provider(args, ctx.pipe)
    provider = ctx.providers[name]
    if name == "attention" and size:
        provider.size = int(size)
    return provider


CSS = """
#source img, #comparison img, #results img { image-rendering: pixelated; }
#source img { width: 100%; height: 100%; object-fit: contain; }
"""


def build_app(ctx: AppContext) -> gr.Blocks:
    """The page. ``ctx.pipe`` is used by every edit; nothing else is global. Serve it with
    ``launch(css=CSS)``."""
    choices = logic.method_choices()
    default_methods = ["ale", logic.NAIVE] if ctx.synthetic else ["ale"]
    defaults = ctx.settings or None
    with gr.Blocks(title="aledit", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# aledit: multi-object editing without attribute leakage\n"
            f"Model `{ctx.model}`. Give an image, one edit per object (`cat -> tiger`), a mask per object "
            "(find it, upload it, or paint it over the preview), pick methods and press **Edit**."
        )
        scene_state = gr.State(None)
        rows_state = gr.State(2)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(label="source image", type="pil", sources=["upload", "clipboard"], elem_id="source", height=300)
                with gr.Group(visible=ctx.synthetic):
                    gr.Markdown("**Synthetic scene** (exact scores after the edit)")
                    with gr.Row():
                        scene_seed = gr.Number(5, label="scene seed", precision=0, minimum=0, elem_id="scene-seed")
                        n_objects = gr.Slider(1, 3, value=3, step=1, label="objects", elem_id="scene-objects")
                        edit_type = gr.Dropdown([t.value for t in EditType], value="material", label="edit type", elem_id="scene-edit-type")
                    generate = gr.Button("Generate scene", elem_id="generate")
            with gr.Column(scale=2):
                with gr.Row():
                    providers = ([SCENE_PROVIDER] if ctx.synthetic else []) + list(PROVIDERS)
                    provider = gr.Dropdown(providers, value=providers[0], label="mask provider", elem_id="provider", scale=2)
                    find = gr.Button("Find masks", elem_id="find-masks", scale=1)
                    add = gr.Button("Add edit", elem_id="add-edit", scale=1)
                    remove = gr.Button("Remove edit", elem_id="remove-edit", scale=1)
                groups, texts, editors, uploads, givens, clears = [], [], [], [], [], []
                for i in range(MAX_OBJECTS):
                    givens.append(gr.State(None))
                    with gr.Row(visible=i < 2) as group:
                        with gr.Column(scale=1, min_width=180):
                            texts.append(gr.Textbox(label=f"edit {i + 1}", placeholder="cat -> tiger", elem_id=f"edit-{i}"))
                            uploads.append(
                                gr.Image(label="upload its mask", type="numpy", sources=["upload"], height=110, elem_id=f"mask-upload-{i}")
                            )
                            clears.append(gr.Button("Clear mask", size="sm", elem_id=f"clear-{i}"))
                        editors.append(
                            gr.ImageEditor(
                                label=f"mask {i + 1}: preview; paint to add", type="numpy", sources=[], height=280,
                                brush=gr.Brush(colors=[_hex(i)], color_mode="fixed", default_size=12),
                                transforms=[], layers=False, elem_id=f"mask-{i}", scale=2,
                            )
                        )
                    groups.append(group)
        with gr.Row():
            methods = gr.CheckboxGroup(list(choices), value=default_methods, label="methods (side by side)", elem_id="methods", scale=3)
            seed = gr.Number(0, label="seed", precision=0, elem_id="seed", min_width=80)
            steps = gr.Number(defaults.steps if defaults else None, label="steps (empty: the method's)", precision=0, elem_id="steps", min_width=80)
            size = gr.Number(defaults.size if defaults else None, label="size (empty: the method's)", precision=0, elem_id="size", min_width=80)
            device = gr.Dropdown(list(ctx.device_choices), value=str(ctx.pipe.device), label="device", elem_id="device", min_width=80)
        with gr.Accordion("Method options (defaults shown; edit a value to change it)", open=False):
            tables = {}
            for choice in choices:
                tables[choice] = gr.Dataframe(
                    logic.option_rows(choice, ctx.settings), headers=["option", "value"], label=choice,
                    type="array", interactive=True, static_columns=[0], column_count=2, elem_id=f"options-{choice}",
                )
        run = gr.Button("Edit", variant="primary", elem_id="run")
        status = gr.Markdown("", elem_id="status")
        comparison = gr.Image(label="source | masks | result, one row per method", type="pil", interactive=False, elem_id="comparison")
        scores = gr.Dataframe(
            headers=["method", *(title for _, title in SCORE_COLUMNS)], label="exact scores (synthetic scene)",
            interactive=False, elem_id="scores",
        )
        with gr.Row():
            results = gr.Gallery(label="results", columns=4, height=300, elem_id="results")
            attention = gr.Gallery(label="cross-attention of each object's words", columns=4, height=300, elem_id="attention")
        files = gr.File(label="download", file_count="multiple", elem_id="download")

        # --- events -------------------------------------------------------------------------

        def rows_update(n):
            return [n, *(gr.update(visible=i < n) for i in range(MAX_OBJECTS))]

        add.click(lambda n: rows_update(min(MAX_OBJECTS, n + 1)), rows_state, [rows_state, *groups])
        remove.click(
            lambda n: [*rows_update(max(1, n - 1)), *(gr.update() if i < max(1, n - 1) else "" for i in range(MAX_OBJECTS))],
            rows_state, [rows_state, *groups, *texts],
        )

        def reset_masks(picture):
            return [*(None for _ in range(MAX_OBJECTS)), *(logic.editor_value(picture) for _ in range(MAX_OBJECTS))]

        image.upload(_page_errors(lambda p: [None, *reset_masks(p)]), image, [scene_state, *givens, *editors])

        @_page_errors
        def on_generate(seed_value, objects, kind):
            scene_obj, scene_edit = logic.new_scene(seed_value or 0, objects, kind)
            picture = gr_image(scene_obj.image)
            pairs = [f"{s} -> {t}" for s, t in scene_edit.pairs]
            row_texts = [pairs[i] if i < len(pairs) else "" for i in range(MAX_OBJECTS)]
            return [picture, scene_obj, *rows_update(max(1, len(pairs))), *row_texts, *reset_masks(picture)]

        generate.click(on_generate, [scene_seed, n_objects, edit_type], [image, scene_state, rows_state, *groups, *texts, *givens, *editors])

        for i in range(MAX_OBJECTS):

            def on_upload(picture, source, i=i):
                if picture is None or source is None:
                    return gr.update(), gr.update()
                mask = logic.upload_mask(picture)
                return mask, logic.editor_value(source, mask, i)

            uploads[i].upload(_page_errors(on_upload), [uploads[i], image], [givens[i], editors[i]])
            clears[i].click(_page_errors(lambda source: (None, logic.editor_value(source))), image, [givens[i], editors[i]])

        @_page_errors
        def on_find(picture, scene_obj, n, provider_name, size_value, *row_texts):
            if picture is None:
                raise UsageError("no image: upload one or generate a synthetic scene")
            edits = logic.parse_rows(row_texts[:n])
            names = [e.source for e in edits]
            if provider_name == SCENE_PROVIDER:
                if scene_obj is None:
                    raise UsageError("the scene's exact masks need a generated scene; pick another mask provider")
                shapes = [o.shape for o in scene_obj.objects]
                unknown = [s for s in names if s not in shapes]
                if unknown:
                    raise UsageError(f"{unknown[0]!r} is not an object of the scene (its objects: {', '.join(shapes)})")
                found = {s: scene_obj.masks[shapes.index(s)] for s in names}
            else:
                _, size_int, _ = logic.check_settings(None, size_value, 0)
                try:
                    found = _provider(ctx, provider_name, size_int)(picture.convert("RGB"), names)
                except MaskError as exc:
                    raise UsageError(str(exc).replace("\n", " ")) from None
            masks, values, j = [], [], 0
            for i in range(MAX_OBJECTS):
                text = row_texts[i]
                if i < n and text and text.strip():
                    mask = np.asarray(found[edits[j].source]) > 0
                    masks.append(mask)
                    values.append(logic.editor_value(picture, mask, i))
                    j += 1
                else:
                    masks.append(gr.update())
                    values.append(gr.update())
            return [*masks, *values]

        find.click(
            on_find, [image, scene_state, rows_state, provider, size, *texts], [*givens, *editors],
            concurrency_id=PIPELINE_QUEUE, concurrency_limit=1,
        )

        @_page_errors
        def on_run(picture, scene_obj, n, chosen, seed_value, steps_value, size_value, device_name, *rest, progress=gr.Progress()):
            row_texts = list(rest[:MAX_OBJECTS])
            given_masks = list(rest[MAX_OBJECTS:2 * MAX_OBJECTS])
            editor_values = list(rest[2 * MAX_OBJECTS:3 * MAX_OBJECTS])
            option_tables = dict(zip(choices, rest[3 * MAX_OBJECTS:]))
            steps_int, size_int, seed_int = logic.check_settings(steps_value, size_value, seed_value)
            visible = [i for i in range(n) if row_texts[i] and row_texts[i].strip()]
            edits = logic.parse_rows([row_texts[i] for i in visible])
            if device_name and str(ctx.pipe.device) != device_name:
                ctx.pipe.to(device_name)
            progress(0, desc="editing")
            done = logic.run_methods(
                ctx.pipe, picture, edits, [given_masks[i] for i in visible], [editor_values[i] for i in visible],
                chosen, option_tables, seed=seed_int, steps=steps_int, size=size_int, scene=scene_obj,
                settings=ctx.settings, progress=lambda fraction, text: progress(fraction, desc=text),
            )
            result_items = [(r.image, r.name) for r in done.results]
            release_freed_memory()
            return done.summary(seed_int), done.sheet, logic.score_rows(done.results), result_items, done.attention_gallery(), done.files

        run.click(
            on_run,
            [image, scene_state, rows_state, methods, seed, steps, size, device, *texts, *givens, *editors, *tables.values()],
            [status, comparison, scores, results, attention, files],
            concurrency_id=PIPELINE_QUEUE, concurrency_limit=1,
        )
    demo.queue(default_concurrency_limit=1)
    return demo


def release_freed_memory() -> None:
    """Hands memory freed by an edit back to the system (glibc keeps it per thread arena
    otherwise, and a long-running server's RSS creeps up); a no-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def gr_image(array):
    from PIL import Image

    return Image.fromarray(np.asarray(array))


def _hex(index: int) -> str:
    r, g, b = logic.PALETTE[index % len(logic.PALETTE)]
    return f"#{r:02x}{g:02x}{b:02x}"
