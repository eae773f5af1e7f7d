"""Publish, check and describe codebooks on the Hugging Face Hub.

`push_codebook` refuses a codebook that cannot work with the model it declares: its rows must live in the
post-projector space and have the base model's text hidden size, read from the base model's `config.json`.
"""

import json
import os
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from ..codebook import FEATURE_SPACE, CodebookError, RedundancyCodebook


class BaseModelUnreachableError(CodebookError):
    """The declared base model's config could not be read, so the codebook could not be checked against it."""


def split_revision(model: str) -> tuple[str, str | None]:
    """`"org/name@rev"` -> (`"org/name"`, `"rev"`)."""
    name, _, revision = model.partition("@")
    return name, revision or None


def base_model_config(base_model: str, *, token: str | bool | None = None) -> dict:
    """The `config.json` of `base_model` (Hub id, optionally `@revision`, or a local directory) as a dict."""
    repo, revision = split_revision(base_model)
    if Path(repo).is_dir():
        config_path = Path(repo) / "config.json"
        if not config_path.is_file():
            raise BaseModelUnreachableError(f"The base model directory {repo!r} has no config.json.")
    else:
        try:
            config_path = hf_hub_download(repo, "config.json", revision=revision, token=token)
        except (HfHubHTTPError, OfflineModeIsEnabled, OSError, ValueError) as err:
            offline = (
                " Offline mode is ON (HF_HUB_OFFLINE=1) and it is not in the local cache."
                if constants.HF_HUB_OFFLINE
                else ""
            )
            raise BaseModelUnreachableError(
                f"Could not read the config of the declared base model {base_model!r} to check the codebook against "
                f"it ({type(err).__name__}: {err}).{offline} Fix: check the id, log in for a gated/private model, go "
                "online, or skip the check deliberately with --no-verify-base-model / verify_base_model=False."
            ) from err
    return json.loads(Path(config_path).read_text())


def config_hidden_size(config: dict, base_model: str) -> int | None:
    """The text hidden size a raw `config.json` says: `text_config.hidden_size`, `hidden_size` for original LLaVA
    repos, or, where a llava-hf config leaves the text model's default out (llava-1.5-7b-hf's Llama 4096), the default
    of its family's text config."""
    hidden = (config.get("text_config") or {}).get("hidden_size") or config.get("hidden_size")
    if hidden is None and isinstance(config.get("text_config"), dict):
        from ..families import text_hidden_size

        hidden = text_hidden_size(config, base_model)
    return None if hidden is None else int(hidden)


def base_model_hidden_size(base_model: str, *, token: str | bool | None = None) -> int:
    """The text hidden size of `base_model` (`text_config.hidden_size`, or `hidden_size` for original LLaVA repos)."""
    config = base_model_config(base_model, token=token)
    hidden = config_hidden_size(config, base_model)
    if hidden is None:
        raise BaseModelUnreachableError(
            f"The config of {base_model!r} has neither text_config.hidden_size nor hidden_size; is it a "
            "vision-language model?"
        )
    return int(hidden)


def verify_against_base_model(codebook: RedundancyCodebook, *, token: str | bool | None = None) -> int:
    """Raise `CodebookError` unless the codebook fits its declared base model: post-projector rows, of the base
    model's text hidden size, from the vision feature layer the base model projects. Returns the hidden size."""
    if codebook.feature_space != FEATURE_SPACE:
        raise CodebookError(
            f"The codebook lives in feature space {codebook.feature_space!r}; the LLaVA models score "
            f"{FEATURE_SPACE!r} features, so it would never match. Rebuild it with `llava-codebook build`."
        )
    if not codebook.base_model:
        raise CodebookError(
            "The codebook declares no base model, so nobody can tell which model it is for. Set `base_model` "
            "(e.g. rebuild, or import with --base-model)."
        )
    config = base_model_config(codebook.base_model, token=token)
    hidden = config_hidden_size(config, codebook.base_model)
    if hidden is None:
        raise BaseModelUnreachableError(
            f"The config of {codebook.base_model!r} has neither text_config.hidden_size nor hidden_size; is it a "
            "vision-language model?"
        )
    if int(hidden) != codebook.dim:
        raise CodebookError(
            f"The codebook has dimension {codebook.dim} but its declared base model {codebook.base_model!r} has text "
            f"hidden size {hidden}: it was built for another model. Fix the declared base model or rebuild."
        )
    # llava-hf configs say `vision_feature_layer`, original LLaVA repos `mm_vision_select_layer`.
    layer = config.get("vision_feature_layer", config.get("mm_vision_select_layer"))
    if layer is not None and codebook.vision_feature_layer is not None and layer != codebook.vision_feature_layer:
        raise CodebookError(
            f"The codebook was built from vision feature layer {codebook.vision_feature_layer} but its declared base "
            f"model {codebook.base_model!r} projects layer {layer}: its tokens live in another feature space. Rebuild "
            "it for this model, or fix the declared layer (import-seed --vision-feature-layer)."
        )
    return int(hidden)


def push_codebook(
    path: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    create_pr: bool = False,
    private: bool | None = None,
    token: str | bool | None = None,
    verify_base_model: bool = True,
    commit_message: str | None = None,
):
    """Upload a local codebook (directory or `codebook.safetensors`) to `repo_id`; returns the `CommitInfo`.

    Creates the repo if needed (`exist_ok=True`); with `revision`, pushes to that branch (created if missing)
    or, with `create_pr`, opens a PR against it. The uploaded folder holds `codebook.safetensors`, `config.json`
    and a model card that references `repo_id` (the local work directory of probes is not uploaded).
    """
    codebook = RedundancyCodebook.from_pretrained(path)
    if verify_base_model:
        verify_against_base_model(codebook, token=token)
    message = commit_message or f"Upload redundancy codebook ({codebook.num_prototypes} x {codebook.dim})"
    return codebook.push_to_hub(
        repo_id, revision=revision, create_pr=create_pr, private=private, token=token, commit_message=message
    )


def inspect_codebook(reference: str | os.PathLike, *, revision: str | None = None, **hub_kwargs) -> dict[str, Any]:
    """Load a codebook (local path or Hub repo) and describe it: provenance plus row statistics."""
    codebook = RedundancyCodebook.from_pretrained(reference, revision=revision, **hub_kwargs)
    info = codebook.provenance()
    params = dict(info.pop("build_parameters") or {})
    for key, value in list(params.items()):
        if isinstance(value, list) and len(value) > 8:
            params[key] = f"<{len(value)} items>"
    rows = codebook.prototypes.float()
    unit = torch.nn.functional.normalize(rows, dim=-1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-2.0)
    info.update(
        {
            "reference": str(reference),
            "revision": revision,
            "build_parameters": params,
            "unique_rows": int(torch.unique(codebook.prototypes, dim=0).shape[0]),
            "row_norm_mean": round(float(rows.norm(dim=-1).mean()), 6),
            "max_cosine_between_rows": round(float(similarity.max()), 6) if rows.shape[0] > 1 else None,
        }
    )
    return info
