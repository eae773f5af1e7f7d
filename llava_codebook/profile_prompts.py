"""The prompts `llava-codebook profile` runs: a mix of text-only, one-image and several-image prompts, in batches.

A prompt is a question and the images it asks about (none, one or several). Prompts come from image files (one
prompt per image, `--images`) and / or a prompts file (`--prompts`, JSON Lines, one prompt per line):

    {"text": "Describe this image.", "images": ["photos/street.jpg"]}
    {"text": "Which of the two is larger?", "images": ["a.png", "b.png"]}
    {"text": "What is the capital of France?"}

Image paths are relative to the file's folder; blank lines and lines starting with `#` are skipped. Prompts are
batched in file order, `batch_size` at a time (the last batch may be shorter), left-padded as batched generation needs.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
DEFAULT_PROMPT = "Describe this image."


@dataclass(frozen=True)
class Prompt:
    text: str
    images: tuple[Path, ...] = ()

    @property
    def kind(self) -> str:
        count = len(self.images)
        return "text only" if count == 0 else ("1 image" if count == 1 else f"{count} images")


def collect_images(specs: Sequence[str]) -> list[Path]:
    """Image files named directly, comma-separated, or found (sorted, not recursively) in named folders."""
    paths = []
    for spec in specs:
        for item in (part.strip() for part in str(spec).split(",")):
            if not item:
                continue
            path = Path(item).expanduser()
            if path.is_dir():
                found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
                if not found:
                    raise ValueError(f"No image files ({', '.join(IMAGE_SUFFIXES)}) in the folder {str(path)!r}.")
                paths.extend(found)
            elif path.is_file():
                paths.append(path)
            else:
                raise ValueError(f"No such image file or folder: {str(path)!r}.")
    return paths


def image_prompts(images: Sequence[str], question: str = DEFAULT_PROMPT) -> list[Prompt]:
    """One prompt per image file of `images` (see `collect_images`), each asking `question`."""
    return [Prompt(question, (path,)) for path in collect_images(images)]


def read_prompts(path: str | Path) -> list[Prompt]:
    """The prompts of a JSON Lines file (see the module docstring); every error names the file and line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"No such prompts file: {str(path)!r}.")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f'{where} is not JSON ({error.msg}); write one {{"text": ..., "images": [...]}} per line.')
        if not isinstance(entry, dict) or not isinstance(entry.get("text"), str) or set(entry) - {"text", "images"}:
            raise ValueError(
                f'{where}: expected {{"text": "question", "images": ["file", ...]}} ("images" optional), got {line!r}.'
            )
        images = entry.get("images", [])
        if not isinstance(images, list) or not all(isinstance(image, str) for image in images):
            raise ValueError(f'{where}: "images" must be a list of file paths, got {images!r}.')
        files = tuple((path.parent / image).expanduser() for image in images)
        missing = [str(file) for file in files if not file.is_file()]
        if missing:
            raise ValueError(f"{where}: no such image file {missing[0]!r} (paths are relative to the prompts file).")
        prompts.append(Prompt(entry["text"], files))
    if not prompts:
        raise ValueError(f"The prompts file {str(path)!r} holds no prompt.")
    return prompts


def batches(prompts: Sequence[Prompt], batch_size: int) -> list[list[Prompt]]:
    """Consecutive batches of `batch_size` prompts (the last may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1.")
    return [list(prompts[start : start + batch_size]) for start in range(0, len(prompts), batch_size)]


def prompt_text(processor, prompt: Prompt) -> str:
    """The prompt as the model's chat template renders it (one image entry per image), or, without a template,
    one image token per image on its own line, then the question."""
    if getattr(processor, "chat_template", None):
        content = [{"type": "image"} for _ in prompt.images] + [{"type": "text", "text": prompt.text}]
        messages = [{"role": "user", "content": content}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image_token = getattr(processor, "image_token", "<image>")
    return "".join(f"{image_token}\n" for _ in prompt.images) + prompt.text


def encode_batch(processor, batch: Sequence[Prompt]):
    """The processor's inputs for one batch, left-padded (batched generation appends new tokens on the right)."""
    from PIL import Image

    def load(path: Path):
        with Image.open(path) as image:
            return image.convert("RGB")

    # Nested per prompt: families that lay a multi-image prompt out differently (LLaVA-OneVision) count per prompt.
    images = [[load(path) for path in prompt.images] for prompt in batch if prompt.images]
    tokenizer = getattr(processor, "tokenizer", processor)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return processor(
            images=images or None,
            text=[prompt_text(processor, prompt) for prompt in batch],
            padding=True,
            return_tensors="pt",
        )
    finally:
        tokenizer.padding_side = side


__all__ = [
    "DEFAULT_PROMPT",
    "IMAGE_SUFFIXES",
    "Prompt",
    "batches",
    "collect_images",
    "encode_batch",
    "image_prompts",
    "prompt_text",
    "read_prompts",
]
