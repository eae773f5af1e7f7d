"""Turn a stock checkpoint of a supported LLaVA family plus a codebook into a pruning-enabled, `trust_remote_code`
model repo. The family is read from the checkpoint's `model_type` (`families.py`)."""

import re
import shutil
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData, snapshot_download

from .codebook import CODEBOOK_FILENAME, resolve_codebook_file
from .families import Family, family_for_model_type
from .loading import load_pruned_model
from .output_dir import check_output_dir, write_output_dir
from .processing_llava_next_codebook import LlavaNextCodebookProcessor
from .pruning_loading import SELF_REPO

EMBEDDED_CODEBOOK = f"codebook/{CODEBOOK_FILENAME}"
# What a llava-hf repo's processor consists of: tokenizer, image (and video) processor configs, chat template. A
# family that uses its stock processor gets these files copied unchanged, never re-serialised: the stock processor
# then loads exactly what the base repo serves (and no video processor, which needs torchvision, is instantiated).
PROCESSOR_FILES = (
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "chat_template.json",
    "chat_template.jinja",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)


def codebook_processor(processor) -> LlavaNextCodebookProcessor:
    """The same tokenizer, image processor and settings, under the pruning-aware processor class."""
    return LlavaNextCodebookProcessor(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        patch_size=processor.patch_size,
        vision_feature_select_strategy=processor.vision_feature_select_strategy,
        chat_template=getattr(processor, "chat_template", None),
        image_token=processor.image_token,
        num_additional_image_tokens=processor.num_additional_image_tokens,
    )


def copy_processor_files(base: str, destination: Path, revision: str | None = None) -> list[str]:
    """Copy the processor files of `base` (local directory, or Hub id resolved through the Hub cache) unchanged."""
    source = (
        Path(base)
        if Path(base).is_dir()
        else Path(snapshot_download(base, revision=revision, allow_patterns=list(PROCESSOR_FILES)))
    )
    copied = []
    for name in PROCESSOR_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, destination / name)
            copied.append(name)
    if not any(name.startswith("tokenizer") for name in copied):
        raise FileNotFoundError(f"{base!r} has no tokenizer files ({', '.join(PROCESSOR_FILES)}): is it a model repo?")
    return copied


def _video_example(family: Family) -> str:
    if "video" not in family.modalities:
        return ""
    return """
# Videos: a list of frames (PIL images or a [frames, height, width, 3] array) per video, pruned per video. The
# stock video processor needs torchvision.
frames = [Image.open(f"clip/frame-{i:02d}.jpg") for i in range(16)]
video = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens in this video?"}]}]
prompt = processor.apply_chat_template(video, add_generation_prompt=True)
inputs = processor(videos=[frames], text=[prompt], return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=64, return_dict_in_generate=True)
"""


def model_card(config, base: str, repo_id: str | None, base_revision: str | None) -> ModelCard:
    from . import __version__

    repo = repo_id or "<this repo>"
    family = family_for_model_type(config.model_type)
    data = ModelCardData(
        base_model=base if not Path(base).exists() else None,
        pipeline_tag="image-text-to-text",
        library_name="transformers",
        tags=["llava-codebook", family.stock_model_type, "visual-token-pruning", "custom_code"],
    )
    codebook = config.codebook_repo if config.codebook_repo != SELF_REPO else f"this repo ({config.codebook_filename})"
    body = f"""
# {repo.split("/")[-1]}: {base} with redundancy-codebook token pruning

The weights of [`{base}`]({"https://huggingface.co/" + base if not Path(base).exists() else base})
{f"(revision `{base_revision}`) " if base_revision else ""}unchanged ({family.name}), with a vision path that drops
redundant visual tokens before the language model sees them: {family.pruned_tokens} is compared with the
prototypes of a redundancy codebook, and tokens too similar to one are pruned per {" and per ".join(family.modalities)}.

## Quick start

```python
from transformers import AutoModelForImageTextToText, AutoProcessor
from PIL import Image

model = AutoModelForImageTextToText.from_pretrained("{repo}", trust_remote_code=True, dtype="auto")
processor = AutoProcessor.from_pretrained("{repo}", trust_remote_code=True)
image = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What is shown here?"}}]}}]
prompt = processor.apply_chat_template(image, add_generation_prompt=True)
inputs = processor(images=[Image.open("photo.jpg")], text=[prompt], return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=64, return_dict_in_generate=True)
print(processor.batch_decode(out.sequences[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
print(out.visual_token_selection.num_kept, "of", out.visual_token_selection.num_total, "visual tokens kept")
{_video_example(family)}
model.generate(**inputs, codebook_threshold=0.2)   # per-call override
with model.pruning_disabled():                      # exact stock behaviour
    model.generate(**inputs)
```

## Pruning settings

| field | value |
|---|---|
| codebook | `{codebook}` (revision `{config.codebook_revision}`) |
| pruning_mode | `{config.pruning_mode}` |
| codebook_threshold | `{config.codebook_threshold}` |
| keep_ratio / keep_tokens | `{config.keep_ratio}` / `{config.keep_tokens}` |
| min_visual_tokens | `{config.min_visual_tokens}` |
| always_keep_newline | `{config.always_keep_newline}` |
| position_mode | `{config.position_mode}` |

Made with `llava-codebook convert` (llava-codebook {__version__}).
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def pinned_commit(repo_id: str, filename: str) -> str | None:
    """The commit of `repo_id` whose `filename` is in the local Hub cache now (`main`'s, as just resolved)."""
    path = Path(resolve_codebook_file(repo_id, filename=filename))
    parts = path.parts
    if "snapshots" in parts:
        commit = parts[parts.index("snapshots") + 1]
        if re.fullmatch(r"[0-9a-f]{40}", commit):
            return commit
    return None


def convert_checkpoint(
    base: str,
    codebook: str,
    out: str | Path,
    *,
    threshold: float | None = None,
    base_revision: str | None = None,
    codebook_revision: str | None = None,
    codebook_filename: str = CODEBOOK_FILENAME,
    push_to: str | None = None,
    create_pr: bool = False,
    private: bool | None = None,
    overwrite: bool = False,
    **pruning,
) -> Path:
    """Write a pruning-enabled repo to `out` (and push it when `push_to` is given); returns `out`.

    `base` is a stock checkpoint of a supported family (LLaVA 1.5, LLaVA-NeXT, LLaVA-OneVision, LLaVA-NeXT-Video),
    read from its `model_type`. The repo ships that family's remote-code files only, and its processor: LLaVA-NeXT's
    pruning-aware one, or for the other families the base checkpoint's own processor files, copied unchanged.

    `out` must be new or empty unless `overwrite` (then its whole contents are replaced), and never the base
    checkpoint or the codebook (nor inside or around them). The repo is written beside `out` and renamed into place
    when complete, so an interrupted run changes nothing.

    A codebook given as a local path is copied into the repo (`codebook/`) and referenced as `"."`, so the repo is
    self-contained on the Hub; a Hub repo id stays a reference, pinned to the commit loaded now unless
    `codebook_revision` names one.
    """
    from transformers import AutoProcessor

    out = Path(out)
    local_codebook = Path(codebook).exists()
    sources = {"base checkpoint": base, "codebook": codebook}
    check_output_dir(out, overwrite=overwrite, sources=sources)  # before the (slow) model load
    if threshold is not None:
        pruning["codebook_threshold"] = threshold
    reference = {
        "codebook_repo": codebook,
        "codebook_revision": codebook_revision,
        "codebook_filename": codebook_filename,
    }
    model = load_pruned_model(base, revision=base_revision, dtype="auto", **reference, **pruning)
    family = family_for_model_type(model.config.model_type)
    processor = None
    if not family.ships_stock_processor:
        processor = codebook_processor(AutoProcessor.from_pretrained(base, revision=base_revision))
    if local_codebook:
        model.config.codebook_repo, model.config.codebook_filename = SELF_REPO, EMBEDDED_CODEBOOK
        model.config.codebook_revision = None
    elif codebook_revision is None:
        # A floating "main" would let the converted model change behaviour when the codebook repo changes:
        # pin the commit that was actually loaded.
        model.config.codebook_revision = pinned_commit(codebook, codebook_filename)
    with write_output_dir(out, overwrite=overwrite, sources=sources) as staging:
        if local_codebook:
            model.codebook.save_pretrained(staging / "codebook")
        model.save_pretrained(staging)
        if processor is not None:
            processor.save_pretrained(staging)
        else:
            copy_processor_files(base, staging, base_revision)
        model_card(model.config, base, push_to, base_revision).save(staging / "README.md")
    if push_to:
        api = HfApi()
        api.create_repo(push_to, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=push_to,
            folder_path=str(out),
            create_pr=create_pr,
            commit_message=f"Pruning-enabled {base} (llava-codebook convert)",
        )
    return out
