"""Model loading and generation: the model the Space serves (`Backend`), loaded from `MODEL_ID` or built in code,
and the answers with and without pruning.

A model that was asked for and cannot be loaded is an error (`ModelLoadError`) that names it, says why and what to
do: the Space never shows a visitor another model than the one asked for.
"""

import inspect
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .encoding import EncodingCache
from .frame_processor import frame_video_processor

logger = logging.getLogger("llava_codebook.space")

TINY_THRESHOLD = 0.9

DEMO_NOTICE = (
    "**Demonstration model.** This Space is serving the embedded *random-weight* tiny LLaVA-NeXT (56 px crops, 4×4 "
    "tokens each) with a codebook of flat-colour patches. Its answers are meaningless words; the pruning mechanics "
    "(AnyRes packing, scoring, kept/dropped tokens, prompt compaction, FLOPs) are the real ones. Set `MODEL_ID` (and "
    "`CODEBOOK_REPO`) to serve a real checkpoint."
)


@dataclass
class Backend:
    """The model the Space serves, its processor, and what to tell the user about it.

    `family` is the stock `model_type` of the model's family (`llava_codebook.families`): `"llava_next"` and
    `"llava_next_video"` images are drawn with LLaVA-NeXT's AnyRes pixel geometry; `"llava"` (one view) and
    `"llava_onevision"` images as token grids read from the family's crop ids; `"llava_onevision"` and
    `"llava_next_video"` also take videos, drawn as a strip of frames.
    """

    model: object
    processor: object
    name: str
    is_demo: bool
    notice: str
    default_threshold: float
    cache: EncodingCache = field(default_factory=EncodingCache)
    family: str = "llava_next"

    @property
    def anyres_geometry(self) -> bool:
        """Images are drawn with LLaVA-NeXT's pixel geometry (base view and AnyRes tiles, in pixels)."""
        return self.family in ("llava_next", "llava_next_video")

    @property
    def takes_video(self) -> bool:
        return "video" in getattr(self.model.model, "pruning_modalities", ())

    def strategies(self, modality: str = "image") -> tuple[str, ...]:
        """The pruning strategies this model can serve on `modality` (`available_strategies`), `"none"` aside: the
        page already answers without pruning."""
        return tuple(name for name in self.model.available_strategies(modality) if name != "none")


def load_tiny_backend() -> Backend:
    """The embedded default: built in code, offline, in about a second."""
    from llava_codebook.tiny import build_tiny_model, build_tiny_processor, flat_colour_codebook

    model = build_tiny_model(seed=0, codebook_threshold=TINY_THRESHOLD)
    processor = build_tiny_processor()
    model.load_codebook(flat_colour_codebook(model, processor))
    return Backend(model, processor, "embedded tiny random-weight LLaVA-NeXT", True, DEMO_NOTICE, TINY_THRESHOLD)


def load_processor(model_id: str, family) -> object:
    """The processor of `model_id` for its family (`llava_codebook.families.Family`).

    LLaVA-NeXT gets the package's processor (the stock one plus its pixel geometry); the others their stock one.
    The stock video processors of LLaVA-OneVision and LLaVA-NeXT-Video need torchvision: where it does not import,
    the processor is put together from the checkpoint's image processor, tokenizer and settings, with frames
    prepared by `frames.frame_video_processor` as the checkpoint's video-processor config says.
    """
    from llava_codebook import LlavaNextCodebookProcessor

    if family.stock_model_type == "llava_next":
        return LlavaNextCodebookProcessor.from_pretrained(model_id)
    try:
        return family.processor_class.from_pretrained(model_id)
    except ImportError:
        if "video" not in family.modalities:
            raise
        logger.info("The stock video processor needs torchvision; preparing frames with PIL instead")
    import json

    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.utils import cached_file

    def read_json(name: str) -> dict:
        path = cached_file(model_id, name, _raise_exceptions_for_missing_entries=False)
        return json.loads(Path(path).read_text()) if path else {}

    settings = read_json("processor_config.json")
    video_config = settings.pop("video_processor", None) or read_json("video_preprocessor_config.json")
    tokenizer = AutoTokenizer.from_pretrained(model_id)
    template = cached_file(model_id, "chat_template.jinja", _raise_exceptions_for_missing_entries=False)
    accepted = inspect.signature(family.processor_class.__init__).parameters
    kwargs = {k: v for k, v in settings.items() if k in accepted and k not in ("image_processor", "tokenizer")}
    return family.processor_class(
        image_processor=AutoImageProcessor.from_pretrained(model_id),
        tokenizer=tokenizer,
        video_processor=frame_video_processor(video_config),
        chat_template=Path(template).read_text() if template else getattr(tokenizer, "chat_template", None),
        **kwargs,
    )


class ModelLoadError(RuntimeError):
    """A model that was asked for could not be loaded: the message names it, says why and what to do."""


LOAD_HINT = (
    "Give a Hub id or a local directory of a LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision or LLaVA-NeXT-Video checkpoint "
    "(stock or made with `llava-codebook convert`), and CODEBOOK_REPO where its config names no codebook; a private or "
    "gated repo needs HF_TOKEN. Run without a model to serve the embedded tiny demo model."
)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _load_failure(model_id: str, step: str, exc: Exception) -> ModelLoadError:
    """The one message for a model that could not be loaded at `step`: which model, why (the first line of the cause,
    or what is missing) and what to do."""
    # A Hub id is `name` or `org/name`; anything else given was meant as a directory.
    looks_like_path = model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1 or "\\" in model_id
    if looks_like_path and not Path(model_id).expanduser().exists():
        why = f"there is no directory {model_id}"
    elif isinstance(exc, OSError) and step == "its config" and _offline():
        why = "it is not in the local Hugging Face cache, and HF_HUB_OFFLINE keeps the Hub out of reach"
    else:
        first_line = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        why = f"{type(exc).__name__}: {first_line[:1000]}"
    return ModelLoadError(f"Could not load the model {model_id!r} ({step}): {why.rstrip('.')}. {LOAD_HINT}")


def load_backend(model_id: str | None = None, codebook_repo: str | None = None) -> Backend:
    """Serve `model_id` (Hub id or local directory of any supported family: LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision,
    LLaVA-NeXT-Video) with `codebook_repo`; with no model, the embedded demo model. A model that cannot be loaded
    (a wrong id, offline, no codebook, an unsupported family) raises `ModelLoadError`."""
    if not model_id:
        return load_tiny_backend()
    from transformers import PretrainedConfig

    from llava_codebook import CodebookNotFoundError, load_pruned_model
    from llava_codebook.families import family_for_config

    step = "its config"
    try:
        family = family_for_config(PretrainedConfig.get_config_dict(model_id)[0], model_id)
        step = "its weights"
        cuda = torch.cuda.is_available()
        overrides = {"codebook_repo": codebook_repo} if codebook_repo else {}
        model = load_pruned_model(model_id, dtype=torch.float16 if cuda else torch.float32, **overrides).eval()
        if cuda:
            model = model.to("cuda")
        step = "its processor"
        processor = load_processor(model_id, family)
        step = f"its codebook {codebook_repo or getattr(model.config, 'codebook_repo', None)!r}"
        if model.codebook is None:
            model.load_codebook()
    except Exception as exc:
        logger.debug("Could not load %s", model_id, exc_info=True)
        if isinstance(exc, CodebookNotFoundError):  # raised while the weights load, by the codebook's loader
            step = f"its codebook {codebook_repo!r}" if codebook_repo else "its codebook"
        raise _load_failure(model_id, step, exc) from exc
    codebook = model.codebook
    notice = (
        f"Serving **{model_id}** ({family.name}) with codebook **{codebook_repo or model.config.codebook_repo}** "
        f"({codebook.prototypes.shape[0]} prototypes) on {'GPU' if cuda else 'CPU'}."
    )
    if not family.stock_model_type.startswith("llava_next"):
        notice += f" {GRID_VIEW_NOTES[family.stock_model_type]}"
    if "video" in family.modalities:
        notice += f" {VIDEO_NOTE}"
    return Backend(
        model,
        processor,
        model_id,
        False,
        notice,
        float(model.config.codebook_threshold),
        family=family.stock_model_type,
    )


GRID_VIEW_NOTES = {
    "llava": "This family sees each image as one square view (the centre crop, its outside tinted magenta); the "
    "overlay draws that view's token grid.",
    "llava_onevision": "Images are drawn as token grids: the base view over the whole image, and the unpadded AnyRes "
    "tile grid as the model packs it (shrunk to about nine crops' worth of tokens for large images) over the image.",
}

VIDEO_NOTE = (
    "It also takes videos: upload an animated GIF, WebP or PNG below to see each frame's pooled tokens, kept and "
    "dropped, as a strip."
)


def build_prompt(processor, question: str, kind: str = "image") -> str:
    """The checkpoint's chat template with one image (or video, `kind`) and the question, or `<image> question`
    without a template."""
    if getattr(processor, "chat_template", None):
        conversation = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True)
    return f"{getattr(processor, f'{kind}_token')} {question}"


def text_token_count(processor, question: str, kind: str = "image") -> int:
    """Prompt tokens other than the image (video) placeholders (the one `<image>` before the processor expands it)."""
    ids = processor.tokenizer(build_prompt(processor, question or "?", kind))["input_ids"]
    placeholder = getattr(processor, f"{kind}_token_id")
    return len(ids) - sum(1 for token in ids if token == placeholder)


@dataclass
class Generations:
    pruned_text: str
    pruned_seconds: float
    pruned_prompt_tokens: int
    full_text: str
    full_seconds: float
    full_prompt_tokens: int


def _timed_generate(model, inputs: dict, **kwargs):
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    output = model.generate(**inputs, do_sample=False, return_dict_in_generate=True, **kwargs)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return output, time.perf_counter() - start


def generate_both(
    backend: Backend, image, question: str, overrides: dict, max_new_tokens: int, kind: str = "image"
) -> Generations:
    """Greedy answers with pruning and without (the stock computation), each timed end to end, vision tower included.
    `kind="video"`: `image` is a video's list of frames."""
    processor, model = backend.processor, backend.model
    media = {"videos": [image]} if kind == "video" else {"images": [image]}
    inputs = processor(**media, text=[build_prompt(processor, question, kind)], return_tensors="pt")
    inputs = {
        k: (v.to(model.device, model.dtype) if k.startswith("pixel_values") else v.to(model.device))
        for k, v in inputs.items()
        if isinstance(v, torch.Tensor)
    }
    prompt_len = inputs["input_ids"].shape[1]
    pruned, pruned_seconds = _timed_generate(model, inputs, max_new_tokens=max_new_tokens, **overrides)
    full, full_seconds = _timed_generate(model, inputs, max_new_tokens=max_new_tokens, pruning=False)
    selection = pruned.visual_token_selection
    decode = processor.tokenizer.decode
    return Generations(
        pruned_text=decode(pruned.sequences[0, prompt_len:], skip_special_tokens=True).strip(),
        pruned_seconds=pruned_seconds,
        pruned_prompt_tokens=prompt_len - int(selection.num_total.sum() - selection.num_kept.sum()),
        full_text=decode(full.sequences[0, prompt_len:], skip_special_tokens=True).strip(),
        full_seconds=full_seconds,
        full_prompt_tokens=prompt_len,
    )
