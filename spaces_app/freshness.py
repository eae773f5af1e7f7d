"""Out-of-date answers. The answers on screen stay until the next *Ask*; every control they depend on is compared
with the ones they were made with, and when any differs they are greyed out, relabelled, and a line says what
changed."""

import gradio as gr

from llava_codebook.strategies import STRATEGIES

from .inputs import PRUNING_MODES, strategy_reads_threshold

SETTING_NAMES = {
    "image": "the image",
    "question": "the question",
    "strategy": "the strategy",
    "mode": "the pruning rule",
    "threshold": "the threshold",
    "keep_ratio": "the token budget",
    "max_new_tokens": "max new tokens",
    "tile_skipping": "tile skipping",
    "tile_skip_share": "the tile skip share",
}

STALE_CLASS = "stale"


def answer_signature(
    image,
    question,
    mode,
    threshold,
    keep_ratio,
    max_new_tokens,
    strategy="codebook",
    tile_skipping=False,
    tile_skip_share=0.9,
) -> dict:
    """What an answer depends on, comparable between events: the image (its path in the upload cache: a new upload
    is a new image), the question as it is asked, the strategy, the pruning rule with the settings it reads (the
    budget, the threshold, or both for a budget strategy that reads the codebook's threshold), tile skipping (with its
    share and the threshold its rule reads, when on) and max new tokens."""
    if isinstance(image, dict):
        image = image.get("path")
    signature = {
        "image": None if image is None else str(image),
        "question": question.strip() if isinstance(question, str) else question,
        "strategy": strategy,
        "mode": mode,
        "max_new_tokens": max_new_tokens,
        "tile_skipping": tile_skipping,
    }
    if tile_skipping:
        signature["tile_skip_share"] = tile_skip_share
    if mode == "budget":
        signature["keep_ratio"] = keep_ratio
    reads_threshold = mode == "threshold"
    if strategy in STRATEGIES and mode in PRUNING_MODES:
        reads_threshold = strategy_reads_threshold(strategy, mode)
    if reads_threshold or tile_skipping:
        signature["threshold"] = threshold
    return signature


def changed_settings(answered: dict, current: dict) -> list[str]:
    """The names (`SETTING_NAMES`) of what differs between two `answer_signature`s; a change of pruning rule or
    strategy is named once, not also as a setting that only one side reads."""
    settings = ("threshold", "keep_ratio", "tile_skip_share")
    names = [
        name
        for name in SETTING_NAMES
        if name != "mode"
        and answered.get(name) != current.get(name)
        and (name not in settings or (name in answered and name in current))
    ]
    if answered.get("mode") != current.get("mode"):
        names = [name for name in names if name not in settings] + ["mode"]
    return [name for name in SETTING_NAMES if name in names]


def stale_notice(changed: list[str], medium: str = "image") -> str:
    """The line above out-of-date answers: what changed since they were made, and what to do. `medium`: what the
    answers are about (`"image"` or `"video"`; the signature's `image` entry holds either)."""
    what = [f"the {medium}" if name == "image" else SETTING_NAMES[name] for name in changed]
    listed = what[0] if len(what) == 1 else ", ".join(what[:-1]) + " and " + what[-1]
    verb = "has" if len(what) == 1 else "have"
    ask = "Ask about the video" if medium == "video" else "Ask"
    return (
        f"⚠️ **Out of date:** {listed} {verb} changed since these answers. Press **{ask}** to answer with the "
        "current settings."
    )


def freshness_updates(answered: dict | None, current: dict, medium: str = "image") -> list:
    """Updates for [notice, pruned answer, full answer, pruned time, full time]: the answers marked out of date (greyed,
    relabelled, the notice shown) when `current` differs from what they were made with, unmarked when it matches."""
    if answered is None:  # nothing answered yet: nothing to mark
        return [gr.skip()] * 5
    changed = changed_settings(answered, current)
    classes = [STALE_CLASS] if changed else []
    suffix = " (out of date)" if changed else ""
    return [
        gr.Markdown(value=stale_notice(changed, medium) if changed else "", visible=bool(changed)),
        gr.Textbox(label=f"Answer with pruning{suffix}", elem_classes=classes),
        gr.Textbox(label=f"Answer without pruning{suffix}", elem_classes=classes),
        gr.Markdown(elem_classes=classes),
        gr.Markdown(elem_classes=classes),
    ]
