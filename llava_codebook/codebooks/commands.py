"""`llava-codebook build | push | import-seed | inspect`: the codebook commands, registered on the main CLI app.

Heavy imports (torch, transformers, datasets, accelerate) happen inside the command bodies. Errors are raised, not
printed: the app's one error reporter (`llava_codebook.cli.ReportingGroup`) turns them into one line on stderr.
"""

import contextlib
import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class DType(str, Enum):
    """Model dtypes `build` accepts (a choice, so a typo is named before anything loads)."""

    auto = "auto"
    float16 = "float16"
    bfloat16 = "bfloat16"
    float32 = "float32"


def _at_least_one(value: Optional[int]) -> Optional[int]:
    """Option callback for counts: the error names the value given (the parser's own range check does not)."""
    if value is not None and value < 1:
        raise typer.BadParameter(f"{value} is not a count; give a whole number of at least 1.")
    return value


def _parse_ids(ids: Optional[str]):
    """`--ids` is a text file (one id per line) or a comma-separated list."""
    if ids is None:
        return None
    if Path(ids).is_file():
        return Path(ids)
    return [i.strip() for i in ids.split(",") if i.strip()]


def build(
    model: Annotated[str, typer.Option(help="Hub id or local directory of a LLaVA (1.5, NeXT, OneVision) checkpoint.")],
    images: Annotated[str, typer.Option(help="A folder of images, or a `datasets` id / path.")],
    out: Annotated[Path, typer.Option(help="Directory to write the codebook to.")],
    num_images: Annotated[
        Optional[int], typer.Option(callback=_at_least_one, help="Use the first N images of the source.")
    ] = None,
    split: Annotated[str, typer.Option(help="Dataset split (datasets sources only).")] = "train",
    image_column: Annotated[str, typer.Option(help="Image column (datasets sources only).")] = "image",
    id_column: Annotated[
        Optional[str], typer.Option(help="Column with a stable image id (default: split/row).")
    ] = None,
    ids: Annotated[
        Optional[str], typer.Option(help="Only these ids: a text file (one per line) or a comma list.")
    ] = None,
    streaming: Annotated[bool, typer.Option(help="Stream the dataset instead of downloading it whole.")] = True,
    preset: Annotated[
        str, typer.Option(help="The release's thresholds and probe recipe: llava-1.5, llava-next-llama3 or llava-ov.")
    ] = "llava-next-llama3",
    top1_prob_thres: Annotated[Optional[float], typer.Option(help="Override the preset's p_max threshold.")] = None,
    jsd_thres: Annotated[Optional[float], typer.Option(help="Override the preset's divergence threshold.")] = None,
    cluster_size_thres: Annotated[
        Optional[int], typer.Option(help="Override the per-image cluster size limit.")
    ] = None,
    prototype_cluster_nums: Annotated[
        Optional[int], typer.Option(help="Override the number of global clusters.")
    ] = None,
    min_unique_images: Annotated[
        Optional[int], typer.Option(help="Override: a kept cluster has members from at least this many images.")
    ] = None,
    divergence: Annotated[
        Optional[str], typer.Option(help="'release' (default, the thresholds' scale) or 'jsd'.")
    ] = None,
    conversation: Annotated[
        Optional[str],
        typer.Option(
            help="Prompt conversation: 'release' (default: the preset's, from the release's scripts), 'checkpoint' "
            "(the checkpoint's chat template), or llava_v1 / llava_llama_3 / qwen_1_5."
        ),
    ] = None,
    skip_first_token: Annotated[
        Optional[str],
        typer.Option(
            help="Read the second step's logits when the greedy first token is this one (llava-1.5 preset: '▁A', "
            "the release's 'A' step); 'none' turns it off."
        ),
    ] = None,
    pad_token_id: Annotated[
        Optional[int], typer.Option(help="Pad-embedding row for leave-one-out (default: the preset's, the release's).")
    ] = None,
    rank_precision: Annotated[
        Optional[str],
        typer.Option(help="[CLS]-similarity ranking in 'float32' (default) or 'float16' (the release's)."),
    ] = None,
    rank_ties: Annotated[
        Optional[str],
        typer.Option(help="'split' (default: one patch per rank) or 'group' (the release's: tied patches together)."),
    ] = None,
    index_rank_start: Annotated[
        Optional[int],
        typer.Option(help="Towers without [CLS]: raster index of rank 1 (the llava-ov preset's 1 is the release's)."),
    ] = None,
    group_selection: Annotated[
        Optional[str],
        typer.Option(
            help="With --rank-ties group: 'release' (default: each kept row adds its probe's whole tied group, "
            "duplicates included) or 'unique' (each patch once per image)."
        ),
    ] = None,
    cluster_dtype: Annotated[
        Optional[str],
        typer.Option(
            help="DPC-KNN arithmetic: 'float64' (default) or 'float32' (direct differences), 'float16' (TCFormer's "
            "form on fp16 tensors, as the release ran it)."
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(callback=_at_least_one, help="Language-model sequences per forward pass.")
    ] = 96,
    image_batch_size: Annotated[
        int, typer.Option(callback=_at_least_one, help="Images encoded and probed together.")
    ] = 4,
    work_dir: Annotated[
        Optional[Path], typer.Option(help="Per-image probe results (default OUT/probes); reuse to resume.")
    ] = None,
    revision: Annotated[Optional[str], typer.Option(help="Model revision (recorded in the codebook).")] = None,
    dtype: Annotated[DType, typer.Option(help="Model dtype.")] = DType.auto,
    pad_embedding: Annotated[
        Optional[Path], typer.Option(help="A .pt tensor [D] to use as the pad embedding (read weights-only).")
    ] = None,
    prompt: Annotated[Optional[str], typer.Option(help="Probe prompt (default: the release's).")] = None,
    probe_ranks: Annotated[
        Optional[str], typer.Option(help="Comma-separated 1-based ranks (default: the release's 96).")
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option(help="Allow the checkpoint's own code (pruning-enabled repos).")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Build a redundancy codebook for a LLaVA model from a folder of images or a `datasets` dataset.

    Probes use the base crop only (the first crop of pixel_values, the whole image at the tower's resolution), as
    the release does. The preset carries the release's recipe for its family (conversation, "A" step, pad row,
    index ranking); the options above override it. Rerunning the same command resumes; other thresholds, group
    selection or cluster dtype reuse the stored probes, another probe recipe is refused with what differs named.
    For several GPUs run it under `accelerate launch` (or torchrun): images are split across processes and merged
    at the end.
    Ctrl-C stops it with the number of finished images; rerunning the same command resumes from there.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..hub_access import Reference, check_references
    from ..output_dir import refuse_source_overlap
    from .build import build_codebook, partial_state
    from .data import open_image_source
    from .presets import RELEASE_PROBE_RANKS, RELEASE_PROMPT, get_preset

    state = partial_state()
    overrides = {
        "top1_prob_thres": top1_prob_thres,
        "jsd_thres": jsd_thres,
        "cluster_size_thres": cluster_size_thres,
        "prototype_cluster_nums": prototype_cluster_nums,
        "min_unique_images": min_unique_images,
        "divergence": divergence,
        "conversation": None if conversation == "release" else conversation,
        "skip_first_token": "" if skip_first_token == "none" else skip_first_token,
        "pad_token_id": pad_token_id,
        "rank_dtype": rank_precision,
        "rank_ties": rank_ties,
        "index_rank_start": index_rank_start,
        "group_selection": group_selection,
        "cluster_dtype": cluster_dtype,
    }
    # Bad input fails before the model is loaded.
    get_preset(preset, **overrides)
    ranks = _parse_ranks(probe_ranks) if probe_ranks else RELEASE_PROBE_RANKS
    check_references(
        Reference(model, "--model", revision=revision),
        Reference(images, "--images", None, repo_type="dataset"),
        Reference(pad_embedding, "--pad-embedding", None, kind="file", local_only=True),
    )
    source = open_image_source(
        images,
        split=split,
        image_column=image_column,
        id_column=id_column,
        ids=_parse_ids(ids),
        streaming=streaming,
    )
    # The codebook's config.json and card go to --out, probes to the work dir: never into the checkpoint or the
    # image folder (an --out around them is fine: build adds files, it never removes any).
    sources = {"model checkpoint": model, "image folder": images}
    for directory in (out, work_dir):
        if directory is not None:
            refuse_source_overlap(directory, sources, replaces=False)
    torch_dtype = "auto" if dtype is DType.auto else getattr(torch, dtype.value)
    processor = AutoProcessor.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code)
    with _transformers_progress_bars(progress):
        network = AutoModelForImageTextToText.from_pretrained(
            model, revision=revision, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    network = network.to(state.device if state is not None else "cpu").eval()
    pad = torch.load(pad_embedding, map_location="cpu", weights_only=True).flatten() if pad_embedding else None
    result = build_codebook(
        network,
        processor,
        source,
        out=out,
        work_dir=work_dir,
        preset=preset,
        preset_overrides=overrides,
        num_images=num_images,
        batch_size=batch_size,
        image_batch_size=image_batch_size,
        probe_ranks=ranks,
        prompt=prompt or RELEASE_PROMPT,
        pad_embedding=pad,
        base_model=model,
        base_model_revision=revision,
        source={"images": images, "split": split, "image_column": image_column, "id_column": id_column},
        progress=progress,
    )
    if result.codebook is not None:
        typer.echo(str(result.summary))
        typer.echo(f"Wrote {result.codebook.num_prototypes} x {result.codebook.dim} codebook to {out}")


@contextlib.contextmanager
def _transformers_progress_bars(enabled: bool):
    """--no-progress silences transformers' weight-loading bar too (restored afterwards: it is process-wide)."""
    from transformers.utils import logging as transformers_logging

    were_enabled = transformers_logging.is_progress_bar_enabled()
    if not enabled:
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if were_enabled and not enabled:
            transformers_logging.enable_progress_bar()


def _parse_ranks(probe_ranks: str) -> list[int]:
    try:
        return [int(rank) for rank in probe_ranks.split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"{probe_ranks!r} is not a comma-separated list of integers (e.g. 1,2,3).", param_hint="--probe-ranks"
        ) from None


def push(
    path: Annotated[Path, typer.Argument(help="Local codebook directory (or codebook.safetensors).")],
    repo: Annotated[str, typer.Option(help="Target Hub repo id, e.g. org/codebook-llama3-llava-next-8b.")],
    revision: Annotated[Optional[str], typer.Option(help="Branch to push to (created if missing).")] = None,
    create_pr: Annotated[bool, typer.Option(help="Open a pull request instead of committing directly.")] = False,
    private: Annotated[Optional[bool], typer.Option(help="Create the repo as private.")] = None,
    verify_base_model: Annotated[
        bool, typer.Option(help="Check dimension and feature space against the base model's config.")
    ] = True,
    token: Annotated[Optional[str], typer.Option(help="Hub token (default: the logged-in one).")] = None,
) -> None:
    """Publish a codebook on the Hub, after checking it fits its declared base model."""
    from ..hub_access import Reference, check_references
    from .hub import push_codebook

    check_references(
        Reference(path, "PATH", None, local_only=True),
        Reference(repo, "--repo", None, needs_hub=True, hub_only=True),
        fix="push when the Hub can be reached (check the connection, HF_ENDPOINT and proxy settings)",
    )
    info = push_codebook(
        path, repo, revision=revision, create_pr=create_pr, private=private, token=token,
        verify_base_model=verify_base_model,
    )  # fmt: skip
    typer.echo(f"Pushed {path} to {repo}: {getattr(info, 'pr_url', None) or getattr(info, 'commit_url', info)}")


def import_seed(
    path: Annotated[
        Path, typer.Argument(help="A released .pt codebook: one [K, D] tensor (or a dict of tensors, with --key).")
    ],
    base_model: Annotated[
        str, typer.Option(help="The llava-hf model it was built for, e.g. llava-hf/llava-1.5-7b-hf (Hub id or dir).")
    ],
    out: Annotated[Path, typer.Option(help="New or empty directory to write the safetensors codebook to.")],
    key: Annotated[
        Optional[str], typer.Option(help="For a .pt holding a dict of several entries: the key of the codebook.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace the contents of a non-empty --out.")] = False,
    vision_feature_layer: Annotated[
        Optional[int], typer.Option(help="Vision feature layer it was built at (default: the base model's own).")
    ] = None,
    verify_base_model: Annotated[
        bool, typer.Option(help="Check the base model is a supported family whose hidden size is the codebook's.")
    ] = True,
) -> None:
    """Convert a released pickled codebook to safetensors (read tensor-only, weights_only=True).

    The base model's config is read (Hub, its cache, or a local directory): it must be a supported LLaVA family
    whose language model's hidden size is the codebook's dimension (--no-verify-base-model skips the check).
    """
    from ..hub_access import OFFLINE_FIX, Reference, check_references
    from .release import import_release_codebook, load_release_tensor

    check_references(Reference(path, "FILE", None, kind="file", local_only=True))
    # A wrong file is refused before the Hub is asked for the base model (read again below: a few MB).
    load_release_tensor(path, key=key)
    if verify_base_model:
        check_references(
            Reference(base_model, "--base-model"),
            fix=f"{OFFLINE_FIX}, or skip the base-model check with --no-verify-base-model",
        )
    codebook = import_release_codebook(
        path,
        base_model,
        out=out,
        key=key,
        overwrite=overwrite,
        vision_feature_layer=vision_feature_layer,
        verify_base_model=verify_base_model,
    )
    picked = codebook.build_parameters.get("source_key")
    typer.echo(
        f"Wrote {codebook.num_prototypes} x {codebook.dim} {codebook.prototypes.dtype} codebook"
        + (f" (the dict entry {picked!r})" if picked is not None else "")
        + f" to {out}"
    )


def inspect(
    reference: Annotated[str, typer.Argument(help="Hub repo id or local codebook path.")],
    revision: Annotated[Optional[str], typer.Option(help="Hub revision.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Describe a codebook: size, dtype, base model, build parameters, duplicate rows."""
    from ..codebook import CODEBOOK_FILENAME
    from ..hub_access import Reference, check_references
    from .hub import inspect_codebook

    check_references(Reference(reference, "CODEBOOK", CODEBOOK_FILENAME, revision))
    info = inspect_codebook(reference, revision=revision)
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    params = info.pop("build_parameters")
    for key, value in info.items():
        typer.echo(f"{key:>26}: {value}")
    typer.echo("          build_parameters:")
    for key, value in sorted(params.items()):
        typer.echo(f"{key:>26}  {json.dumps(value, default=str)}")


def register(app: typer.Typer) -> None:
    """Add `build`, `push`, `import-seed` and `inspect` to the main app."""
    app.command("build")(build)
    app.command("push")(push)
    app.command("import-seed")(import_seed)
    app.command("inspect")(inspect)
