"""Gradio Space: see which visual tokens a redundancy codebook drops, and what that does to the answer and its cost.

This file is the page: what a visitor sees, and which handler (`handlers.Handlers`) answers each event. Everything
else lives in modules beside it: input checks (`inputs`, `video_inputs`), the encoding cache (`encoding`), the model
(`model`), the image and video computations (`images`, `videos`), drawing (`render`, `counts`), the disk bound
(`disk`) and the server's limits (`server`, `limits`). Run locally with `python spaces_app/app.py` (embedded
random-weight demo model) or `python spaces_app/app.py --model llava-hf/llava-v1.6-mistral-7b-hf --codebook
org/codebook`.
"""

import argparse
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
APP_DIR = Path(__file__).resolve().parent


def use_own_file_cache() -> None:
    """Serve from a folder of the Space's own (its files deleted at start, swept, deleted at exit), not from the temp
    folder Gradio shares with any other app on this machine, unless GRADIO_TEMP_DIR names one. Gradio reads the
    variable when it is imported, as well as when the page is built."""
    os.environ.setdefault("GRADIO_TEMP_DIR", str(Path(tempfile.gettempdir()) / "llava-codebook-space"))


if __name__ == "__main__":
    use_own_file_cache()

# Run as a script from a checkout (`python spaces_app/app.py`), this file's siblings are the modules of the package
# `spaces_app`, imported from the checkout's root (as `llava_codebook` is when it is not installed), not top-level
# modules. In the uploaded Space, `spaces_app/` and `llava_codebook/` lie beside app.py, where Python looks first.
if not (APP_DIR / "spaces_app").is_dir():
    if sys.path and sys.path[0] == str(APP_DIR):
        sys.path.pop(0)
    if str(APP_DIR.parent) not in sys.path:
        sys.path.append(str(APP_DIR.parent))

from spaces_app import gpu  # noqa: I001 - first: ZeroGPU must be imported before torch

import gradio as gr
from gradio.utils import get_upload_folder

from spaces_app import limits
from spaces_app.disk import FileCache, OverlayFiles
from spaces_app.examples import write_examples
from spaces_app.handlers import (
    COMPARE_PROMPT,
    UPLOAD_PROMPT,
    VIDEO_UPLOAD_PROMPT,
    Handlers,
    strategy_choices,
)
from spaces_app.model import Backend, ModelLoadError, load_backend
from spaces_app.server import guard_gradio_preprocessing, launch_limits
from spaces_app.video_inputs import VIDEO_FILE_TYPES


# Pictures keep a fixed height (a 33:1 upload must not collapse its box); on a phone the input takes the full width and
# the two overlays sit side by side right under it. Out-of-date answers are greyed out.
SPACE_CSS = """
.picture { height: 300px; }
@media (max-width: 640px) { .picture { height: 200px; } }
.stale { opacity: 0.45; }
#counts td:not(:first-child), #counts th:not(:first-child) { white-space: nowrap; }
"""
THRESHOLD_LABEL = "Threshold t"
THRESHOLD_INFO = "A scored token (base view or tile) is kept iff its score < t."
TILE_SKIPPING_INFO = (
    "Never encode a high-res tile whose region of the base view the codebook finds redundant: the vision tower "
    "runs on fewer crops. Skipped tiles are hatched grey; their tokens count as dropped."
)
TILE_SHARE_INFO = "A tile is skipped when at least this share of its base-view tokens score at or above t."
BUDGET_LABEL = "Token budget: share of the scored tokens kept"
BUDGET_INFO = "Scored = base view + tiles, as in the table; row newlines are not counted and always kept."
STRATEGY_INFO = (
    "Which rule picks the kept tokens. The peers keep a token budget (no threshold); codebook_diverse also reads the "
    "threshold (what it marks redundant is never kept beyond the minimum)."
)
# How the page's events queue: previews (run on every slider move, the latest one wins) two at a time, answers (a
# generation each) one at a time. Both take the image payload unprocessed: `check_image` reads it.
PREVIEW_EVENT = {
    "trigger_mode": "always_last",
    "show_progress": "hidden",
    "concurrency_limit": 2,
    "concurrency_id": "preview",
    "preprocess": False,
}
ANSWER_EVENT = {"concurrency_limit": 1, "concurrency_id": "answer", "preprocess": False}


def build_demo(backend: Backend, examples_dir: str | Path | None = None) -> gr.Blocks:
    """The page for `backend`. Every file it writes goes to Gradio's upload folder (`$GRADIO_TEMP_DIR`), which
    `demo.file_cache` bounds and cleans up once the app is launched with `launch_options(demo)`."""
    examples_dir = Path(examples_dir or Path(tempfile.gettempdir()) / "llava-codebook-space-examples")
    example_rows = write_examples(examples_dir)
    file_cache = FileCache(get_upload_folder())
    # The only folders an image or video path may point into (after resolving links and `..`): Gradio's upload
    # cache, where uploads and the example files it serves live, and the app's own example folder.
    allowed_dirs = [file_cache.root, examples_dir.resolve()]
    page = Handlers(backend, allowed_dirs, OverlayFiles(file_cache))
    # No `delete_cache`: Gradio's sweep dies under concurrent uploads; `disk.FileCache` owns the clean-up.
    with gr.Blocks(title="Redundancy-codebook token pruning") as demo:
        gr.Markdown(
            "# Which visual tokens does a redundancy codebook drop?\n"
            "Each visual token of the image (base view and high-res tiles) is scored by its best cosine similarity "
            "to a codebook prototype, and dropped when the score reaches the threshold (or, with a budget, only the "
            "least redundant share is kept). Row newlines are not scored and always kept. Pick another **strategy** "
            "to see a peer rule (FasterVLM, VisionZip, DivPrune, HiRED, baselines) at a token budget, or compare two "
            "below. Move the controls: the overlays are re-scored from cached features, without re-running the "
            "vision tower.\n\n"
            "**Legend:** clear = kept · dark = dropped · yellow = crop borders · magenta = a strip no tile token sees "
            "(the stock unpadding works in whole tokens) · hatched grey = a tile never encoded (tile skipping)."
        )
        gr.Markdown(backend.notice, elem_id="model-notice")
        # The pictures first, side by side: the overlays stay next to the input at any width.
        with gr.Row(equal_height=True):
            with gr.Column(scale=1, min_width=240):
                # The events below take the image payload unprocessed (`preprocess=False`): `check_image` reads it,
                # and Gradio's image preprocessing, which opens any path it is sent, never runs.
                image = gr.Image(
                    type="filepath", image_mode=None, label="Image", elem_id="input-image", elem_classes=["picture"]
                )
            # Qwen-VL sees an image as one grid of merged tokens: there is no tile overlay to show.
            merged_tokens = backend.family.startswith("qwen")
            with gr.Column(scale=2, min_width=240), gr.Row(equal_height=True):
                base_view = gr.Image(
                    label="Merged tokens (whole image)" if merged_tokens else "Base view (whole image)",
                    type="filepath",
                    interactive=False,
                    elem_id="base-overlay",
                    elem_classes=["picture"],
                    buttons=["fullscreen", "download"],
                    min_width=120,
                )
                tile_view = gr.Image(
                    label="High-res tiles",
                    visible=not merged_tokens,
                    type="filepath",
                    interactive=False,
                    elem_id="tile-overlay",
                    elem_classes=["picture"],
                    buttons=["fullscreen", "download"],
                    min_width=120,
                )
        with gr.Row():
            with gr.Column(scale=1, min_width=240):
                question = gr.Textbox(
                    label="Question",
                    placeholder="What is in the picture?",
                    max_length=limits.MAX_QUESTION_CHARS,
                    elem_id="question",
                )
                strategy = gr.Dropdown(
                    strategy_choices(backend.strategies("image")),
                    value="codebook",
                    label="Strategy",
                    info=STRATEGY_INFO,
                    elem_id="strategy",
                )
                mode = gr.Radio(["threshold", "budget"], value="threshold", label="Pruning rule", elem_id="mode")
                threshold = gr.Slider(
                    -1.0,
                    1.0,
                    value=backend.default_threshold,
                    step=0.01,
                    label=THRESHOLD_LABEL,
                    info=THRESHOLD_INFO,
                    elem_id="threshold",
                )
                keep_ratio = gr.Slider(
                    0.05,
                    1.0,
                    value=0.25,
                    step=0.05,
                    label=BUDGET_LABEL,
                    info=BUDGET_INFO,
                    elem_id="keep-ratio",
                    visible=False,
                )
                has_tiles = "image" in getattr(backend.model.model, "tile_skipping_modalities", ())
                tile_skipping = gr.Checkbox(
                    False,
                    label="Skip redundant tiles (tile skipping)",
                    info=TILE_SKIPPING_INFO,
                    elem_id="tile-skipping",
                    visible=has_tiles,
                )
                tile_skip_share = gr.Slider(
                    0.0,
                    1.0,
                    value=0.9,
                    step=0.05,
                    label="Tile skip share",
                    info=TILE_SHARE_INFO,
                    elem_id="tile-skip-share",
                    visible=False,
                )
                max_new_tokens = gr.Slider(
                    1, limits.MAX_NEW_TOKENS, value=24, step=1, label="Max new tokens", elem_id="max-new-tokens"
                )
                ask = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column(scale=2, min_width=240):
                counts = gr.Markdown(UPLOAD_PROMPT, elem_id="counts")
                with gr.Accordion("Raw counts", open=False):
                    details = gr.JSON(label="counts and FLOPs")
                answer_notice = gr.Markdown(visible=False, elem_id="answer-notice")
                with gr.Row():
                    with gr.Column(min_width=160):
                        pruned_time = gr.Markdown("**With pruning**", elem_id="pruned-time")
                        pruned_answer = gr.Textbox(
                            label="Answer with pruning", interactive=False, elem_id="pruned-answer"
                        )
                    with gr.Column(min_width=160):
                        full_time = gr.Markdown("**Without pruning**", elem_id="full-time")
                        full_answer = gr.Textbox(
                            label="Answer without pruning", interactive=False, elem_id="full-answer"
                        )
        offered = backend.strategies("image")
        gr.Markdown(
            "## Compare two strategies at the same budget\n"
            "The image above, pruned by two strategies to the same number of tokens. Both are re-scored from the "
            "cached vision outputs (features and the tower's [CLS] attention): changing a strategy or the budget "
            "never re-runs the vision tower."
        )
        with gr.Row():
            compare_a = gr.Dropdown(
                strategy_choices(offered), value="codebook", label="Strategy A", elem_id="compare-a", min_width=160
            )
            compare_b = gr.Dropdown(
                strategy_choices(offered),
                value="divprune" if "divprune" in offered else offered[-1],
                label="Strategy B",
                elem_id="compare-b",
                min_width=160,
            )
            compare_budget = gr.Slider(
                0.05,
                1.0,
                value=0.25,
                step=0.05,
                label="Token budget for both: share of the scored tokens kept",
                elem_id="compare-budget",
                min_width=160,
            )
        with gr.Row(equal_height=True):
            compare_views = []
            for side in ("A", "B"):
                for view, label in (("base", "base view"), ("tile", "high-res tiles")):
                    compare_views.append(
                        gr.Image(
                            label=f"{side}: {label}",
                            type="filepath",
                            interactive=False,
                            elem_id=f"compare-{side.lower()}-{view}",
                            elem_classes=["picture"],
                            buttons=["fullscreen", "download"],
                            min_width=120,
                        )
                    )
        compare_counts = gr.Markdown(COMPARE_PROMPT, elem_id="compare-counts")
        with gr.Accordion("Raw comparison", open=False):
            compare_details = gr.JSON(label="counts, FLOPs and overlap")
        examples = gr.Examples(example_rows, inputs=[image, question], label="Examples (drawn in code)")
        if backend.takes_video:
            video_events = build_video_section(page, mode, threshold, keep_ratio, max_new_tokens, strategy)
        else:
            video_events = []
        asked = gr.State(None)  # what the answer being made is made with
        answered = gr.State(None)  # what the answers on screen were made with

        preview_inputs = [image, mode, threshold, keep_ratio, question, strategy, tile_skipping, tile_skip_share]
        preview_outputs = [base_view, tile_view, counts, details]
        answer_inputs = [
            image,
            question,
            mode,
            threshold,
            keep_ratio,
            max_new_tokens,
            strategy,
            tile_skipping,
            tile_skip_share,
        ]
        compare_inputs = [image, compare_a, compare_b, compare_budget, threshold, question]
        compare_outputs = compare_views + [compare_counts, compare_details]
        answer_outputs = preview_outputs + [pruned_answer, pruned_time, full_answer, full_time]
        freshness_outputs = [answer_notice, pruned_answer, full_answer, pruned_time, full_time]
        private = {"api_visibility": "private", "preprocess": False, "show_progress": "hidden"}
        events = []  # every event that takes the image: its payload is checked before Gradio processes it
        tile_skipping.change(
            lambda on: gr.Slider(visible=on), [tile_skipping], [tile_skip_share], queue=False, **private
        )
        for control in (image, mode, threshold, keep_ratio, tile_skipping, tile_skip_share):
            events.append(
                control.change(
                    page.on_preview,
                    preview_inputs,
                    preview_outputs,
                    api_name="preview" if control is image else False,
                    **PREVIEW_EVENT,
                )
            )
        mode.change(page.on_mode, [mode, strategy], [threshold, keep_ratio], queue=False, **private)
        # A new strategy first brings the rule and the sliders in line with it (a peer has no threshold rule), then
        # previews: previewing first would ask for a rule the strategy may not have.
        events.append(
            strategy.change(
                page.on_strategy, [strategy, mode], [mode, threshold, keep_ratio], queue=False, **private
            ).then(
                page.on_preview,
                preview_inputs,
                preview_outputs,
                **PREVIEW_EVENT,
                api_visibility="private",
            )
        )
        for control in (image, compare_a, compare_b, compare_budget, threshold):
            events.append(
                control.change(
                    page.on_compare,
                    compare_inputs,
                    compare_outputs,
                    api_name="compare" if control is image else False,
                    **PREVIEW_EVENT,
                )
            )
        for control in (
            image,
            question,
            mode,
            threshold,
            keep_ratio,
            max_new_tokens,
            strategy,
            tile_skipping,
            tile_skip_share,
        ):
            events.append(
                control.change(
                    page.on_controls_changed,
                    answer_inputs + [answered],
                    freshness_outputs,
                    queue=False,
                    trigger_mode="always_last",
                    **private,
                )
            )
        for trigger, api_name in ((ask.click, "answer"), (question.submit, None)):
            checked = trigger(
                page.on_ask, answer_inputs, asked, concurrency_limit=2, concurrency_id="preview", **private
            )
            answered_now = checked.success(
                page.on_answer,
                answer_inputs,
                answer_outputs,
                api_name=api_name or False,
                api_visibility="public" if api_name else "private",
                **ANSWER_EVENT,
            )
            settled = answered_now.success(
                page.on_answered,
                answer_inputs + [asked],
                [answered, *freshness_outputs, *preview_outputs],
                concurrency_limit=2,
                concurrency_id="preview",
                **private,
            )
            events += [checked, answered_now, settled]
    guard_gradio_preprocessing(demo, [event["id"] for event in events + video_events], allowed_dirs, examples)
    demo.queue(max_size=limits.QUEUE_SIZE, default_concurrency_limit=1)
    file_cache.blocks = demo
    demo.file_cache = file_cache
    return demo


def build_video_section(page: Handlers, mode, threshold, keep_ratio, max_new_tokens, strategy) -> list:
    """The video part of the page, for families that take videos: the upload, the strip of frames, the counts and the
    answers; it shares the pruning controls (strategy included: those that read the tower's [CLS] attention cannot
    rank pooled frame tokens, and say so). Returns its events (their payloads are checked like the image's)."""
    if page.backend.family.startswith("qwen"):
        how = (
            "as the model merges them: each temporal patch (two consecutive frames) becomes one grid of merged tokens, "
            "scored like an image's and dropped when redundant; the strip shows each patch's first frame. Uses the "
            "pruning controls above."
        )
    else:
        how = (
            "as the model pools them: each frame's pooled tokens are scored like an image's and dropped when "
            "redundant. Uses the pruning controls above (strategies that read the vision tower's [CLS] attention do "
            "not apply to pooled frames)."
        )
    gr.Markdown(f"## Video\nThe frames (up to {limits.VIDEO_FRAMES}, spread evenly) {how}")
    with gr.Row():
        with gr.Column(scale=1, min_width=240):
            video = gr.File(
                label="Video (animated GIF, WebP or PNG)", file_types=VIDEO_FILE_TYPES, elem_id="input-video"
            )
            video_question = gr.Textbox(
                label="Question about the video",
                placeholder="What happens in the video?",
                max_length=limits.MAX_QUESTION_CHARS,
                elem_id="video-question",
            )
            ask_video = gr.Button("Ask about the video", variant="primary", elem_id="ask-video")
        with gr.Column(scale=2, min_width=240):
            strip = gr.Image(
                label="Frames: kept / dropped tokens",
                type="filepath",
                interactive=False,
                elem_id="video-strip",
                buttons=["fullscreen", "download"],
            )
            video_counts = gr.Markdown(VIDEO_UPLOAD_PROMPT, elem_id="video-counts")
            with gr.Accordion("Raw video counts", open=False):
                video_details = gr.JSON(label="counts and FLOPs")
            video_answer_notice = gr.Markdown(visible=False, elem_id="video-answer-notice")
            with gr.Row():
                with gr.Column(min_width=160):
                    video_pruned_time = gr.Markdown("**With pruning**", elem_id="video-pruned-time")
                    video_pruned = gr.Textbox(label="Answer with pruning", interactive=False, elem_id="video-pruned")
                with gr.Column(min_width=160):
                    video_full_time = gr.Markdown("**Without pruning**", elem_id="video-full-time")
                    video_full = gr.Textbox(label="Answer without pruning", interactive=False, elem_id="video-full")
    preview_inputs = [video, mode, threshold, keep_ratio, video_question, strategy]
    preview_outputs = [strip, video_counts, video_details]
    events = []
    for control in (video, mode, threshold, keep_ratio, strategy):
        events.append(
            control.change(
                page.on_video_preview,
                preview_inputs,
                preview_outputs,
                api_name="preview_video" if control is video else False,
                **PREVIEW_EVENT,
            )
        )
    answer_inputs = [video, video_question, mode, threshold, keep_ratio, max_new_tokens, strategy]
    answered = gr.State(None)  # what the video answers on screen were made with
    answer_outputs = preview_outputs + [video_pruned, video_pruned_time, video_full, video_full_time, answered]
    freshness_outputs = [video_answer_notice, video_pruned, video_full, video_pruned_time, video_full_time]
    private = {"api_visibility": "private", "preprocess": False, "show_progress": "hidden"}
    for trigger, api_name in ((ask_video.click, "answer_video"), (video_question.submit, None)):
        made = trigger(
            page.on_video_answer,
            answer_inputs,
            answer_outputs,
            api_name=api_name or False,
            api_visibility="public" if api_name else "private",
            **ANSWER_EVENT,
        )
        # Controls moved while the answer was made: it arrives marked.
        settled = made.success(
            page.on_video_controls_changed, answer_inputs + [answered], freshness_outputs, queue=False, **private
        )
        events += [made, settled]
    for control in (video, video_question, mode, threshold, keep_ratio, max_new_tokens, strategy):
        events.append(
            control.change(
                page.on_video_controls_changed,
                answer_inputs + [answered],
                freshness_outputs,
                queue=False,
                trigger_mode="always_last",
                **private,
            )
        )
    return events


def launch_options(demo: gr.Blocks) -> dict:
    """`demo.launch` arguments: the server's limits (`server.launch_limits`) and the page's style."""
    return {**launch_limits(demo), "ssr_mode": False, "css": SPACE_CSS}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the redundancy-codebook pruning Space locally.")
    parser.add_argument(
        "--model",
        default=os.environ.get("MODEL_ID"),
        help="Hub id or local dir (default: $MODEL_ID, else the embedded random-weight demo model)",
    )
    parser.add_argument(
        "--codebook",
        default=os.environ.get("CODEBOOK_REPO"),
        help="codebook repo or dir (default: $CODEBOOK_REPO, else the model config's)",
    )
    parser.add_argument("--host", default=None, help="address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    use_own_file_cache()
    try:
        backend = load_backend(args.model, args.codebook)
    except ModelLoadError as exc:
        sys.exit(f"error: {exc}")
    gpu.serve(backend)
    demo = build_demo(backend)
    try:
        demo.file_cache.claim()
    except RuntimeError as exc:
        sys.exit(f"error: {exc}")
    # A stop signal ends the server as Ctrl-C does. On the way out the files are deleted here, whether or not the
    # server's own shutdown got that far: Gradio waits 5 s for it, and open connections can hold it longer.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        demo.launch(server_name=args.host, server_port=args.port, **launch_options(demo))
    finally:
        demo.close()
        demo.file_cache.stop()


if __name__ == "__main__":
    main()
