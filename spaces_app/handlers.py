"""What answers each event of the page: one method of `Handlers` per event, wired to its components by `app.py`.

A handler checks nothing itself: the plain functions it calls (`images.preview`, `videos.answer_video`, ...) check
every input. The parameter names of the handlers that are API endpoints are the endpoints' input names (and what
`server.check_payload_form` checks them by).
"""

import html

import gradio as gr

from llava_codebook.strategies import STRATEGIES

from .disk import OverlayFiles
from .freshness import answer_signature, freshness_updates
from .images import answer, compare, image_inputs, preview
from .inputs import STRATEGY_LABELS, InputError, MissingImage, strategy_modes, strategy_reads_threshold
from .model import Backend, Generations
from .server import user_error
from .videos import answer_video, preview_video

UPLOAD_PROMPT = "Upload an image (or pick an example) to see which tokens are kept."
COMPARE_PROMPT = "Upload an image (or pick an example) to compare two strategies on it."
VIDEO_UPLOAD_PROMPT = "Upload a video (an animated GIF, WebP or PNG) to see each frame's kept and dropped tokens."


def _in_place(exc: Exception) -> str:
    """An error shown in place of the counts (the previews run on every slider move: no modal). Markdown would take a
    quoted `<image>` for an HTML tag."""
    return f"⚠️ {html.escape(user_error(exc).message, quote=False)}"


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def generation_outputs(made: Generations) -> tuple[str, str, str, str]:
    """The answers with and without pruning and their time lines, as the image and video sections show them."""
    return (
        made.pruned_text,
        f"**With pruning:** {_seconds(made.pruned_seconds)} · prompt of {made.pruned_prompt_tokens} tokens",
        made.full_text,
        f"**Without pruning:** {_seconds(made.full_seconds)} · prompt of {made.full_prompt_tokens} tokens",
    )


def strategy_choices(names) -> list[tuple[str, str]]:
    """Dropdown choices: (label, name) for each strategy."""
    return [(STRATEGY_LABELS.get(name, name), name) for name in names]


def control_visibility(strategy: str, mode: str) -> tuple:
    """Updates for [threshold slider, budget slider]: each shown when the strategy reads it under `mode`."""
    reads_threshold = strategy_reads_threshold(strategy, mode) if strategy in STRATEGIES else mode != "budget"
    return gr.Slider(visible=reads_threshold), gr.Slider(visible=mode == "budget")


class Handlers:
    """The page's event handlers for one served `backend`. `allowed_dirs` are the only folders an image or video path
    may point into (Gradio's upload cache and the example folder; filled in as the page is built); `overlays` writes
    the pictures the page shows into the file cache."""

    def __init__(self, backend: Backend, allowed_dirs: list, overlays: OverlayFiles):
        self.backend = backend
        self.allowed_dirs = allowed_dirs
        self.overlays = overlays

    # ------------------------------------------------------------------------------------------------ image
    def on_preview(
        self, image, mode, threshold, keep_ratio, question, strategy, tile_skipping=False, tile_skip_share=0.9
    ):
        try:
            shown = preview(
                self.backend,
                image,
                mode,
                threshold,
                keep_ratio,
                question,
                self.allowed_dirs,
                strategy,
                tile_skipping,
                tile_skip_share,
            )
            pictures = self.overlays.save(shown.base_overlay), self.overlays.save(shown.tile_overlay)
        except MissingImage:
            return None, None, UPLOAD_PROMPT, {}
        except Exception as exc:  # noqa: BLE001 - every error is shown; `user_error` logs unexpected ones
            return None, None, _in_place(exc), {}
        return *pictures, shown.markdown, {"counts": shown.counts, "flops": shown.flops}

    def on_ask(
        self,
        image,
        question,
        mode,
        threshold,
        keep_ratio,
        max_new_tokens,
        strategy,
        tile_skipping=False,
        tile_skip_share=0.9,
    ):
        """The page's first step of Ask: check the inputs. A user error is a message (a warning toast), not a failed
        event: it leaves every output as it was, where a failed answer would mark each one with an error badge. The
        hidden error stops the chain. Returns what the answer will be made with, for `on_answered`."""
        try:
            image_inputs(
                self.backend,
                image,
                question,
                mode,
                threshold,
                keep_ratio,
                self.allowed_dirs,
                strategy,
                max_new_tokens,
                required=True,
                tile_skipping=tile_skipping,
                tile_skip_share=tile_skip_share,
            )
        except InputError as exc:
            message = user_error(exc).message
            gr.Warning(html.escape(message, quote=False))  # the toast renders HTML
            raise gr.Error(message, visible=False, print_exception=False) from None
        except Exception as exc:  # noqa: BLE001 - every error is shown; `user_error` logs unexpected ones
            raise user_error(exc) from None
        return answer_signature(
            image, question, mode, threshold, keep_ratio, max_new_tokens, strategy, tile_skipping, tile_skip_share
        )

    def on_answer(
        self,
        image,
        question,
        mode,
        threshold,
        keep_ratio,
        max_new_tokens,
        strategy,
        tile_skipping=False,
        tile_skip_share=0.9,
    ):
        try:
            result = answer(
                self.backend,
                image,
                question,
                mode,
                threshold,
                keep_ratio,
                max_new_tokens,
                self.allowed_dirs,
                strategy,
                tile_skipping,
                tile_skip_share,
            )
            shown = result.preview
            pictures = self.overlays.save(shown.base_overlay), self.overlays.save(shown.tile_overlay)
        except Exception as exc:  # noqa: BLE001 - every error is shown; `user_error` logs unexpected ones
            raise user_error(exc) from None
        details = {"counts": shown.counts, "flops": shown.flops}
        return *pictures, shown.markdown, details, *generation_outputs(result.generations)

    def on_answered(
        self,
        image,
        question,
        mode,
        threshold,
        keep_ratio,
        max_new_tokens,
        strategy,
        tile_skipping,
        tile_skip_share,
        asked=None,
    ):
        """After an answer arrived: remember what it was made with, and if the controls moved meanwhile, mark it out
        of date and bring the overlays and counts (which the answer reset to its own settings) back to the controls."""
        tiles = tile_skipping, tile_skip_share
        current = answer_signature(image, question, mode, threshold, keep_ratio, max_new_tokens, strategy, *tiles)
        if current == asked:
            refreshed = [gr.skip()] * 4
        else:
            refreshed = list(self.on_preview(image, mode, threshold, keep_ratio, question, strategy, *tiles))
        return [asked, *freshness_updates(asked, current), *refreshed]

    def on_controls_changed(
        self,
        image,
        question,
        mode,
        threshold,
        keep_ratio,
        max_new_tokens,
        strategy,
        tile_skipping,
        tile_skip_share,
        answered=None,
    ):
        current = answer_signature(
            image, question, mode, threshold, keep_ratio, max_new_tokens, strategy, tile_skipping, tile_skip_share
        )
        return freshness_updates(answered, current)

    def on_mode(self, mode, strategy):
        """Only the controls the strategy reads under the rule are shown (a hidden one keeps its value)."""
        return control_visibility(strategy, mode)

    def on_strategy(self, strategy, mode):
        """Offer only the rules the strategy defines (a peer has a budget only), then show the controls it reads."""
        if strategy not in STRATEGIES:
            return gr.skip(), gr.skip(), gr.skip()
        modes = strategy_modes(strategy)
        mode = mode if mode in modes else "budget"
        return gr.Radio(choices=list(modes), value=mode), *control_visibility(strategy, mode)

    def on_compare(self, image, strategy_a, strategy_b, keep_ratio, threshold, question):
        try:
            shown = compare(
                self.backend, image, strategy_a, strategy_b, keep_ratio, threshold, question, self.allowed_dirs
            )
            names, save = shown.strategies, self.overlays.save
            pictures = (
                gr.Image(value=save(shown.left.base_overlay), label=f"A: {names[0]}, base view"),
                gr.Image(value=save(shown.left.tile_overlay), label=f"A: {names[0]}, high-res tiles"),
                gr.Image(value=save(shown.right.base_overlay), label=f"B: {names[1]}, base view"),
                gr.Image(value=save(shown.right.tile_overlay), label=f"B: {names[1]}, high-res tiles"),
            )
        except MissingImage:
            return None, None, None, None, COMPARE_PROMPT, {}
        except Exception as exc:  # noqa: BLE001 - every error is shown; `user_error` logs unexpected ones
            return None, None, None, None, _in_place(exc), {}
        details = {
            "strategies": list(names),
            "counts": [shown.left.counts, shown.right.counts],
            "flops": [shown.left.flops, shown.right.flops],
            "overlap": shown.overlap,
        }
        return *pictures, shown.markdown, details

    # ------------------------------------------------------------------------------------------------ video
    def on_video_preview(self, video, mode, threshold, keep_ratio, question, strategy):
        try:
            shown = preview_video(
                self.backend, video, mode, threshold, keep_ratio, question, self.allowed_dirs, strategy
            )
            strip = self.overlays.save(shown.strip)
        except MissingImage:
            return None, VIDEO_UPLOAD_PROMPT, {}
        except Exception as exc:  # noqa: BLE001 - every error is shown; `user_error` logs unexpected ones
            return None, _in_place(exc), {}
        return strip, shown.markdown, {"counts": shown.counts, "flops": shown.flops}

    def on_video_answer(self, video, question, mode, threshold, keep_ratio, max_new_tokens, strategy):
        try:
            result = answer_video(
                self.backend,
                video,
                question,
                mode,
                threshold,
                keep_ratio,
                max_new_tokens,
                self.allowed_dirs,
                strategy,
            )
            shown = result.preview
            strip = self.overlays.save(shown.strip)
        except Exception as exc:  # noqa: BLE001 - every error is shown; `user_error` logs unexpected ones
            raise user_error(exc) from None
        return (
            strip,
            shown.markdown,
            {"counts": shown.counts, "flops": shown.flops},
            *generation_outputs(result.generations),
            # What these answers were made with (a session state: not part of the API's outputs).
            answer_signature(video, question, mode, threshold, keep_ratio, max_new_tokens, strategy),
        )

    def on_video_controls_changed(
        self, video, question, mode, threshold, keep_ratio, max_new_tokens, strategy, answered
    ):
        """The video answers on screen marked out of date (or current again) as the controls move, as the image's."""
        current = answer_signature(video, question, mode, threshold, keep_ratio, max_new_tokens, strategy)
        return freshness_updates(answered, current, medium="video")
