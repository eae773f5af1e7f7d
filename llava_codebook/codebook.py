"""A redundancy codebook: prototype visual tokens with their provenance, stored as safetensors on disk or the Hub.

A codebook directory (or Hub repo) holds `codebook.safetensors` with one tensor `prototypes` `[K, D]` and str->str
metadata, plus an optional `config.json` (the same provenance, readable without safetensors) and `README.md`.
A bare `codebook.safetensors` loads on its own.
"""

import json
import os
import tempfile
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, ModelCard, ModelCardData, constants, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

CODEBOOK_FILENAME = "codebook.safetensors"
CONFIG_FILENAME = "config.json"
TENSOR_NAME = "prototypes"
FEATURE_SPACE = "post-projector"
_PICKLE_MAGICS = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


# What a codebook's card says about the family of its base model, by stock `model_type`: the family's name, the
# `model_type` of a model converted with the codebook, and the threshold the paper released for that family (None
# where it released none). Here and not in families.py: this file ships as remote code, families.py does not.
CARD_FAMILIES: dict[str, tuple[str, str, float | None]] = {
    "llava": ("LLaVA 1.5", "llava_codebook", 0.45),
    "llava_next": ("LLaVA-NeXT", "llava_next_codebook", 0.11),
    "llava_onevision": ("LLaVA-OneVision", "llava_onevision_codebook", 0.5),
    "llava_next_video": ("LLaVA-NeXT-Video", "llava_next_video_codebook", None),
}
RELEASED_THRESHOLDS = "0.45 for LLaVA-1.5-7B, 0.11 for LLaMA3-LLaVA-NeXT-8B, 0.5 for LLaVA-OneVision-Qwen2-7B"


class CodebookError(ValueError):
    """A codebook that cannot be used: wrong format, wrong dimension, or missing."""


class CodebookNotFoundError(CodebookError, FileNotFoundError):
    """The codebook reference does not resolve to a file (locally, in the Hub cache, or on the Hub)."""


def _table_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _package_version() -> str:
    try:
        return importlib_metadata.version("llava-codebook")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class RedundancyCodebook:
    """Prototype tokens that mark a visual token as redundant when it is too similar to one of them.

    Attributes:
        prototypes: `[K, D]` rows in the feature space named by `feature_space` (the language model's input space
            after the multimodal projector), in the dtype they were built in.
        base_model: the model the codebook was built for (Hub id, optionally `@revision`).
        feature_space: where the rows live; only `"post-projector"` is used by the model.
        vision_feature_layer: the vision tower layer whose hidden states fed the projector.
        build_parameters: every parameter of the build (thresholds, cluster sizes, image ids, ...).
        package_version: the llava-codebook version that wrote the codebook.
        base_model_type: the stock `model_type` of the base model's family (`"llava"`, `"llava_next"`,
            `"llava_onevision"`, `"llava_next_video"`; a converted type's `_codebook` suffix is dropped), when known.
            The card names the family and the release's threshold from it.
    """

    prototypes: torch.Tensor
    base_model: str | None = None
    feature_space: str = FEATURE_SPACE
    vision_feature_layer: int | list[int] | None = -2
    build_parameters: dict[str, Any] = field(default_factory=dict)
    package_version: str = field(default_factory=_package_version)
    base_model_type: str | None = None

    def __post_init__(self):
        if self.base_model_type is not None:
            self.base_model_type = self.base_model_type.removesuffix("_codebook")
        if not isinstance(self.prototypes, torch.Tensor) or self.prototypes.ndim != 2:
            shape = tuple(self.prototypes.shape) if isinstance(self.prototypes, torch.Tensor) else type(self.prototypes)
            raise CodebookError(f"A codebook's prototypes must be a 2-D tensor [K, D], got {shape}.")
        if not self.prototypes.is_floating_point():
            raise CodebookError(f"A codebook's prototypes must be floating point, got {self.prototypes.dtype}.")
        if self.prototypes.shape[0] == 0 or self.prototypes.shape[1] == 0:
            raise CodebookError(
                f"A codebook needs at least one prototype of positive dimension, got shape "
                f"{tuple(self.prototypes.shape)}: with no rows nothing would ever be pruned. Rebuild the codebook "
                "(`llava-codebook build`) or turn pruning off (`pruning_strategy='none'`)."
            )
        finite = torch.isfinite(self.prototypes).all(dim=1)
        if not bool(finite.all()):
            bad = (~finite).nonzero().squeeze(-1).tolist()
            raise CodebookError(
                f"The codebook has NaN or infinite values in {len(bad)} of its {self.prototypes.shape[0]} prototypes "
                f"(rows {bad[:10]}{' ...' if len(bad) > 10 else ''}); cosine scores against them are meaningless. "
                "The file is corrupt or was built in a dtype that overflowed: rebuild or re-export it."
            )

    @property
    def num_prototypes(self) -> int:
        return self.prototypes.shape[0]

    @property
    def dim(self) -> int:
        return self.prototypes.shape[1]

    def provenance(self) -> dict[str, Any]:
        """Everything but the tensor, as JSON-compatible values."""
        return {
            "num_prototypes": self.num_prototypes,
            "dim": self.dim,
            "dtype": str(self.prototypes.dtype).removeprefix("torch."),
            "base_model": self.base_model,
            "base_model_type": self.base_model_type,
            "feature_space": self.feature_space,
            "vision_feature_layer": self.vision_feature_layer,
            "build_parameters": self.build_parameters,
            "package_version": self.package_version,
        }

    def check_compatible(self, hidden_size: int, feature_space: str = FEATURE_SPACE) -> None:
        """Raise a `CodebookError` when the codebook cannot score features of this model."""
        if self.dim != hidden_size:
            raise CodebookError(
                f"The codebook has dimension {self.dim} but the language model's hidden size is {hidden_size}: it was "
                f"built for another model (base_model={self.base_model!r}). Use a codebook built for this checkpoint, "
                "or build one with `llava-codebook build`."
            )
        if self.feature_space != feature_space:
            raise CodebookError(
                f"The codebook lives in feature space {self.feature_space!r}, but the model scores {feature_space!r} "
                "features."
            )

    # ------------------------------------------------------------------ saving
    def save_file(self, path: str | os.PathLike) -> Path:
        """Write the codebook as one safetensors file (`prototypes` plus the provenance as metadata)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {key: json.dumps(value) for key, value in self.provenance().items()}
        meta["format"] = "pt"
        save_file({TENSOR_NAME: self.prototypes.detach().cpu().contiguous()}, path, meta)
        return path

    def save_pretrained(
        self, save_directory: str | os.PathLike, *, model_card: bool = True, filename: str = CODEBOOK_FILENAME
    ) -> Path:
        """Write `filename` (default `codebook.safetensors`), `config.json` and (unless one exists or
        `model_card=False`) `README.md`."""
        save_directory = Path(save_directory)
        self.save_file(save_directory / filename)
        (save_directory / CONFIG_FILENAME).write_text(json.dumps(self.provenance(), indent=2, sort_keys=True) + "\n")
        readme = save_directory / "README.md"
        if model_card and not readme.exists():
            self.model_card().save(readme)
        return save_directory

    def model_card(self, repo_id: str | None = None) -> ModelCard:
        """A card that says what the codebook is for, how it was built and how to reference it from a model config."""
        family = CARD_FAMILIES.get(self.base_model_type or "")
        tags = ["llava-codebook", "redundancy-codebook", "visual-token-pruning"]
        data = ModelCardData(
            library_name="llava-codebook",
            license="apache-2.0",
            tags=tags + ([self.base_model_type] if family else []),
            base_model=self.base_model.split("@")[0] if self.base_model else None,
        )
        reference = repo_id or "<this repo id>"
        # A `|` inside a value (chat-template text such as `<|im_start|>`) would end the table cell: escape it.
        params = "\n".join(
            f"| `{_table_cell(k)}` | `{_table_cell(json.dumps(v)[:200])}` |"
            for k, v in sorted(self.build_parameters.items())
        )
        base = self.base_model or "<base model>"
        if family is None:
            name, model_type, threshold = "a supported LLaVA family", None, None
        else:
            name, model_type, threshold = family
        if threshold is not None:
            setting = f"codebook_threshold={threshold}"
            rule = (
                f"whose best cosine similarity to a prototype reaches the model's `codebook_threshold` (the paper's "
                f"release uses {threshold} for {name})"
            )
            fields = f', "codebook_threshold": {threshold}'
        else:
            setting = 'pruning_mode="budget", keep_ratio=0.25'
            rule = (
                "whose best cosine similarity to a prototype reaches the model's `codebook_threshold`, or keeps a "
                f"fixed share of the least redundant tokens (budget mode; the paper's release has no threshold for "
                f"{'this family' if family else 'an unknown family'}: its thresholds are {RELEASED_THRESHOLDS})"
            )
            fields = ""
        where = (
            f"the `config.json` of a `{model_type}` model (a repo made by `llava-codebook convert`)"
            if model_type
            else "the `config.json` of a pruning-enabled model of the base model's family"
        )
        body = f"""
# Redundancy codebook{f" for {self.base_model}" if self.base_model else ""}

{self.num_prototypes} prototype visual tokens of dimension {self.dim} ({self.feature_space} features, vision
feature layer {self.vision_feature_layer}) for {name}. A {name if family else "pruning-enabled"} model configured with
this codebook drops every visual token {rule}.

## Use it

```python
from llava_codebook import load_pruned_model

model = load_pruned_model("{base}", codebook_repo="{reference}", {setting})
```

or set these fields in {where}:

```json
{{"codebook_repo": "{reference}", "codebook_filename": "{CODEBOOK_FILENAME}", "codebook_revision": null{fields}}}
```

## Provenance

| field | value |
|---|---|
| base model | `{self.base_model}` |
| family (`model_type`) | {f"{name} (`{self.base_model_type}`)" if family else "unknown"} |
| feature space | `{self.feature_space}` |
| vision feature layer | `{self.vision_feature_layer}` |
| prototypes | {self.num_prototypes} x {self.dim}, {str(self.prototypes.dtype).removeprefix("torch.")} |
| llava-codebook version | `{self.package_version}` |

## Build parameters

| parameter | value |
|---|---|
{params or "| (none recorded) | |"}
"""
        return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")

    def push_to_hub(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        create_pr: bool = False,
        private: bool | None = None,
        token: str | bool | None = None,
        commit_message: str = "Upload redundancy codebook",
    ):
        """Create the repo if needed and upload the codebook folder; returns the `CommitInfo`."""
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, model_card=False)
            self.model_card(repo_id).save(Path(tmp) / "README.md")
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp,
                revision=revision,
                create_pr=create_pr,
                commit_message=commit_message,
            )

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "RedundancyCodebook":
        """Load a `codebook.safetensors` file (its provenance comes from the metadata)."""
        path = Path(path)
        if not path.is_file():
            raise CodebookNotFoundError(f"Codebook file {str(path)!r} does not exist.")
        with open(path, "rb") as handle:
            head = handle.read(9)
        # A safetensors file opens with its header's length (8 bytes, little-endian) and the header's "{"; that
        # length can itself begin like a pickle (a 640-byte header is b"\x80\x02..."), so the "{" decides.
        if head[8:9] != b"{" and head.startswith(_PICKLE_MAGICS):
            raise CodebookError(
                f"{str(path)!r} is a pickled PyTorch file, not safetensors. Pickles can run code when loaded, so the "
                f"model never reads them; convert it once with `llava-codebook import-seed {path} --out DIR` "
                "(it reads tensors only, with weights_only=True)."
            )
        try:
            with safe_open(str(path), framework="pt", device="cpu") as reader:
                if TENSOR_NAME not in reader.keys():
                    raise CodebookError(
                        f"{str(path)!r} has no tensor named {TENSOR_NAME!r} (found {list(reader.keys())}); a codebook "
                        f"file holds one [K, D] tensor called {TENSOR_NAME!r}."
                    )
                prototypes = reader.get_tensor(TENSOR_NAME)
                meta = reader.metadata() or {}
        except SafetensorError as err:
            raise CodebookError(f"{str(path)!r} is not a readable safetensors file: {err}") from err
        info = {}
        for key in (
            "base_model",
            "base_model_type",
            "feature_space",
            "vision_feature_layer",
            "build_parameters",
            "package_version",
        ):
            if key in meta:
                try:
                    info[key] = json.loads(meta[key])
                except json.JSONDecodeError:
                    info[key] = meta[key]
        info = {key: value for key, value in info.items() if value is not None or key == "base_model"}
        return cls(prototypes=prototypes, **info)

    @classmethod
    def from_pretrained(
        cls,
        repo_or_path: str | os.PathLike,
        *,
        filename: str = CODEBOOK_FILENAME,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
    ) -> "RedundancyCodebook":
        """Load from a local directory, a local file, or a Hub repo (through the Hub cache; works offline from it)."""
        return cls.from_file(
            resolve_codebook_file(
                repo_or_path,
                filename=filename,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                token=token,
            )
        )


def resolve_codebook_file(
    repo_or_path: str | os.PathLike,
    *,
    filename: str = CODEBOOK_FILENAME,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> str:
    """Turn a codebook reference into a local file path, downloading (or reading the Hub cache) if needed."""
    local = Path(repo_or_path)
    if local.is_file():
        return str(local)
    if local.is_dir():
        candidate = local / filename
        if not candidate.is_file():
            raise CodebookNotFoundError(
                f"The codebook directory {str(local)!r} has no {filename!r} (it holds {sorted(p.name for p in local.iterdir())})."
            )
        return str(candidate)
    repo_id = str(repo_or_path)
    offline = constants.HF_HUB_OFFLINE or local_files_only
    where = f"{filename!r} of Hub repo {repo_id!r} at revision {revision or 'main'!r}"
    mode = (
        "offline mode is ON (HF_HUB_OFFLINE=1 or local_files_only), so only the local Hub cache was searched"
        if offline
        else "offline mode is off"
    )
    try:
        return hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
            library_name="llava-codebook",
        )
    except HFValidationError as err:
        raise CodebookNotFoundError(
            f"Codebook reference {repo_id!r} is neither an existing local path nor a valid Hub repo id: {err}"
        ) from err
    except (EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled, OSError) as err:
        raise CodebookNotFoundError(
            f"Could not load the codebook {where}; {mode}. Cause: {type(err).__name__}: {err}. Fix: check the repo id "
            "and revision (`codebook_repo`, `codebook_revision`), log in for a private repo, or download it once "
            "while online so that it is cached."
        ) from err
