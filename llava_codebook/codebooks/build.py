"""Build a redundancy codebook for a LLaVA model from a set of images (stages 1-5 end to end).

Stages 1-2 (probes, the expensive part) run per batch of images and write one result file per image to the work
directory as each batch finishes; a rerun skips finished images. Stages 3-5 (redundancy test, clustering,
codebook) run on the main process from those files, so they can be rerun with other thresholds without probing
again. Under `accelerate launch`, image batches are dealt round-robin to the processes (batch `k` to process
`k % num_processes`); the work directory must then be on a filesystem all processes share.

Resuming: a stored result is reused only for an image with the same id and the same content hash, in a work
directory whose probe settings (model, revision, dtype, layer, prompt and conversation, ranks and ranking recipe,
pad embedding, "A" step, ...) are those of this run; other settings stop the build with the differing values
named (see `store.py`). Thresholds and the clustering precision are not probe settings: changing them reuses the
probes. Ctrl-C raises `BuildInterrupted`, whose message says how many images are finished and how to resume.

Determinism: a batch is always the same images (batch `k` holds source positions `[k*B, (k+1)*B)`), and every
later step is deterministic, so an interrupted build resumed with the same `image_batch_size` (and `batch_size`)
gives the same codebook as an uninterrupted one. Another batch size only changes the float rounding of the probes.
"""

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.utils import tqdm

from ..codebook import RedundancyCodebook
from ..output_dir import replace_files
from .data import ImageItem, UnreadableImageError, open_image_source
from .presets import RELEASE_PROBE_RANKS, RELEASE_PROMPT, BuildPreset, get_preset
from .probe import ProbeRunner, probe_images
from .select import redundant_mask, select_in_image, select_prototype_clusters
from .store import ResultStore, tensor_digest


class CodebookBuildError(RuntimeError):
    """The build finished its probes but cannot produce a codebook (e.g. no cluster passed the filters)."""


class BuildInterrupted(KeyboardInterrupt):
    """Ctrl-C during a build. A KeyboardInterrupt still; its message says how far the build got and how to resume."""


@dataclass
class BuildSummary:
    """What a build did; `str()` gives the report the CLI prints."""

    num_images: int = 0
    num_probed_now: int = 0
    num_resumed: int = 0
    num_changed: int = 0
    unreadable: list[dict] = field(default_factory=list)
    num_probes: int = 0
    num_redundant: int = 0
    num_after_image_clusters: int = 0
    num_global_clusters: int = 0
    num_kept_clusters: int = 0
    num_prototypes: int = 0
    probe_seconds: float = 0.0
    images_per_second: float = 0.0
    probes_per_second: float = 0.0

    @property
    def num_unreadable(self) -> int:
        return len(self.unreadable)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "num_unreadable": self.num_unreadable}

    def __str__(self) -> str:
        lines = [
            f"images: {self.num_images} ({self.num_probed_now} probed now, {self.num_resumed} from earlier runs, "
            f"{self.num_unreadable} unreadable and skipped)"
            + (
                f"; {self.num_changed} had a stored result of other content under their name and were probed again"
                if self.num_changed
                else ""
            ),
            f"probes: {self.num_probes}, redundant: {self.num_redundant}, kept after per-image clustering: "
            f"{self.num_after_image_clusters}",
            f"global clusters: {self.num_global_clusters}, kept: {self.num_kept_clusters} -> "
            f"{self.num_prototypes} prototypes",
            f"probe stage: {self.probe_seconds:.1f} s, {self.images_per_second:.2f} images/s, "
            f"{self.probes_per_second:.1f} probes/s",
        ]
        lines += [f"  unreadable: {u['image_id']}: {u['error']}" for u in self.unreadable[:20]]
        if self.num_unreadable > 20:
            lines.append(f"  ... and {self.num_unreadable - 20} more")
        return "\n".join(lines)


@dataclass
class BuildResult:
    codebook: RedundancyCodebook | None
    summary: BuildSummary
    output_dir: Path | None = None


def partial_state():
    """`accelerate.PartialState` for this launch (None without accelerate).

    On a machine without an accelerator it is created with `cpu=True`: that is what lets `torchrun` /
    `accelerate launch --cpu` start several CPU processes (gloo) instead of each process thinking it is alone.
    """
    try:
        from accelerate import PartialState
    except ImportError:
        return None
    accelerator = getattr(torch, "accelerator", None)
    has_accelerator = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
    return PartialState(cpu=not has_accelerator)


def _distributed_state():
    """(rank, world size, barrier) from `accelerate` when it is installed, else a single process."""
    state = partial_state()
    if state is None:
        return 0, 1, lambda: None
    return state.process_index, state.num_processes, state.wait_for_everyone


def _batches(items: Iterable[ImageItem], size: int, limit: int | None):
    batch = []
    for item in items:
        if limit is not None and item.index >= limit:
            break
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_probes(
    runner: ProbeRunner,
    items: Iterable[ImageItem],
    store: ResultStore,
    *,
    image_batch_size: int = 4,
    num_images: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    summary: BuildSummary | None = None,
) -> tuple[list[ImageItem], BuildSummary]:
    """Stages 1-2 over all items, writing each finished image to `store`; returns every item seen (all ranks)."""
    for name, value in (("num_images", num_images), ("image_batch_size", image_batch_size)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1; got {value}.")
    summary = summary or BuildSummary()
    seen: list[ImageItem] = []
    mine: list[ImageItem] = []  # the items of this process's batches reached so far
    total = num_images
    if hasattr(items, "__len__"):
        total = len(items) if num_images is None else min(num_images, len(items))
    if total is not None and world_size > 1:  # only this process's batches
        starts = range(rank * image_batch_size, total, world_size * image_batch_size)
        total = sum(min(image_batch_size, total - start) for start in starts)
    bar = tqdm(total=total, desc=f"probing (process {rank})" if world_size > 1 else "probing", unit="img",
               disable=not progress)  # fmt: skip
    start = time.perf_counter()
    probed_images = 0
    ids: set[str] = set()
    try:
        for batch_number, batch in enumerate(_batches(items, image_batch_size, num_images)):
            for item in batch:
                if item.image_id in ids:
                    raise ValueError(
                        f"Image id {item.image_id!r} occurs twice in the source; ids name the per-image results, so "
                        "they must be unique. Use an id column with unique values (--id-column), or drop the "
                        "duplicates."
                    )
                ids.add(item.image_id)
                # Every process hashes every image: the main one checks all results against it when assembling.
                item.content_sha256 = item.digest() or ""
            # Keep ids and hashes only: an item's loader may hold the image itself (dataset rows), and memory must
            # not grow with the dataset.
            seen.extend(
                ImageItem(index=i.index, image_id=i.image_id, loader=_released, content_sha256=i.content_sha256)
                for i in batch
            )
            if batch_number % world_size != rank:
                continue
            mine.extend(batch)
            stored = {item.key: store.result_content(item.key) for item in batch}
            done = {item.key for item in batch if stored[item.key] == item.content_sha256}
            summary.num_resumed += len(done)
            summary.num_changed += sum(1 for item in batch if stored[item.key] not in (None, item.content_sha256))
            settled = done | {
                item.key for item in batch if store.unreadable_record(item.key, item.content_sha256) is not None
            }
            if len(settled) < len(batch):
                # A partly finished batch is probed whole again (only the missing results are written) so that every
                # image is always probed in the same company: batched kernels then give bit-identical results.
                decoded, ready = [], []
                for item in batch:
                    try:
                        decoded.append(item.load())
                        ready.append(item)
                    except UnreadableImageError as err:
                        store.mark_unreadable(item.key, item.image_id, item.index, str(err), item.content_sha256)
                if ready:
                    for item, result in zip(ready, probe_images(runner, decoded, ready)):
                        if item.key not in done:
                            store.write(item.key, result)
                            summary.num_probed_now += 1
                    probed_images += len(ready)
            bar.update(len(batch))  # resumed batches count too, so the bar ends at its total
            elapsed = time.perf_counter() - start
            if elapsed > 0 and probed_images:
                bar.set_postfix(probes_per_s=f"{probed_images * len(runner.probe_ranks) / elapsed:.1f}")
    except KeyboardInterrupt as interrupt:
        bar.close()
        finished = sum(1 for item in mine if _settled(store, item))
        of_total = f" of {total}" if total is not None else ""
        raise BuildInterrupted(
            f"Interrupted: {finished}{of_total} images are finished ({summary.num_probed_now} probed in this run), "
            f"their probes kept in {str(store.root)!r}. Run the same command again (same --out / --work-dir and "
            "--image-batch-size) to resume; finished images are not probed again."
        ) from interrupt
    bar.close()
    summary.probe_seconds = time.perf_counter() - start
    if summary.probe_seconds > 0 and probed_images:
        summary.images_per_second = probed_images / summary.probe_seconds
        summary.probes_per_second = summary.images_per_second * len(runner.probe_ranks)
    return seen, summary


def assemble_codebook(
    store: ResultStore, items: Sequence[ImageItem], preset: BuildPreset, summary: BuildSummary, progress: bool = True
) -> tuple[torch.Tensor, list[str], dict]:
    """Stages 3-5 from the stored probes: returns the prototype rows, the ids of the images that were used, and
    per-prototype provenance (`image_ids`, `patch_indices`)."""
    kept_tokens, kept_image, kept_patch, used_ids = [], [], [], []
    for item in tqdm(sorted(items, key=lambda i: i.index), desc="selecting", unit="img", disable=not progress):
        if not store.is_done(item.key, item.content_sha256 or ""):
            record = store.unreadable_record(item.key, item.content_sha256 or "")
            if record is None:
                raise CodebookBuildError(
                    f"Image {item.image_id!r} has no probe result of its current content in {str(store.root)!r}: a "
                    "process stopped before finishing it, or the image changed meanwhile. Rerun the same command to "
                    "resume."
                )
            summary.unreadable.append(record)
            continue
        result = store.read(item.key)
        used_ids.append(result.image_id)
        div_ctx, div_global = result.divergences(preset.divergence)
        redundant = redundant_mask(result.p_max, div_ctx, div_global, preset)
        # The per-image clustering sees every token row; a tied group's rows share their probe's verdict.
        chosen = select_in_image(
            result.tokens, redundant[result.token_probes], preset, result.token_probes, result.token_patch_indices
        )
        summary.num_probes += result.p_max.numel()
        summary.num_redundant += int(redundant.sum())
        kept_tokens.append(result.tokens[chosen])
        kept_image += [len(used_ids) - 1] * chosen.numel()
        kept_patch += result.token_patch_indices[chosen].tolist()
    summary.num_images = len(items)
    if not kept_tokens:
        raise CodebookBuildError("No image could be probed (all were unreadable or the source is empty).")
    tokens = torch.cat(kept_tokens)
    image_of = torch.tensor(kept_image, dtype=torch.long)
    summary.num_after_image_clusters = tokens.shape[0]
    clusters = select_prototype_clusters(tokens, image_of, preset)
    summary.num_global_clusters = int(clusters["labels"].max()) + 1 if clusters["labels"].numel() else 0
    summary.num_kept_clusters = clusters["kept_clusters"].numel()
    members = clusters["members"]
    summary.num_prototypes = members.numel()
    if members.numel() == 0:
        raise CodebookBuildError(
            f"No prototype cluster passed the filters ({summary.num_redundant} of {summary.num_probes} probes were "
            f"redundant, {summary.num_after_image_clusters} survived per-image clustering, and no global cluster "
            f"spans at least min_unique_images={preset.min_unique_images} images). Use more images, or lower "
            "min_unique_images / raise the thresholds; the probes are kept in the work directory, so a rerun with "
            "new thresholds does not probe again."
        )
    rows = {
        "image_ids": [used_ids[int(image_of[m])] for m in members],
        "patch_indices": [kept_patch[int(m)] for m in members],
        "clusters": clusters["labels"][members].tolist(),
    }
    return tokens[members].clone(), used_ids, rows


def build_codebook(
    model,
    processor,
    images,
    *,
    out: str | Path | None = None,
    work_dir: str | Path | None = None,
    preset: str | BuildPreset = "llava-next-llama3",
    preset_overrides: dict | None = None,
    num_images: int | None = None,
    batch_size: int = 96,
    image_batch_size: int = 4,
    probe_ranks: Sequence[int] = RELEASE_PROBE_RANKS,
    prompt: str = RELEASE_PROMPT,
    pad_embedding: torch.Tensor | None = None,
    pad_token_id: int | None = None,
    rank_by: str = "auto",
    base_model: str | None = None,
    base_model_revision: str | None = None,
    source: dict | None = None,
    progress: bool = True,
) -> BuildResult:
    """Build (and with `out`, save) a codebook for `model` from `images`.

    Args:
        model / processor: a LLaVA `...ForConditionalGeneration` (eval mode, any device and dtype) and its
            processor.
        images: an iterable of `ImageItem` (see `llava_codebook.codebooks.data`), a folder, a `datasets` id, or a
            list of PIL images.
        out: directory to save the codebook to (`codebook.safetensors`, `config.json`, `README.md`).
        work_dir: where per-image probe results go (default `<out>/probes`); rerunning with the same work dir
            resumes. Required when `out` is None.
        preset: `llava-1.5`, `llava-next-llama3` (default), `llava-ov`, or a `BuildPreset`; `preset_overrides`
            replaces single fields (e.g. `{"min_unique_images": 8}`).
        num_images: use the first N images of the source (unreadable ones among them are skipped and counted).
        batch_size: language-model sequences per forward pass; `image_batch_size`: images encoded and probed
            together. Memory grows with these, not with the number of images.
        probe_ranks / prompt / pad_embedding / rank_by: probe settings (see `ProbeRunner`). The rest of the probe
            recipe (conversation, "A" step, pad row, ranking precision and ties, index-rank start) comes from the
            preset, the release's for its family (see `BuildPreset`); `pad_token_id` overrides the preset's pad row.
        base_model / base_model_revision: what the codebook declares it was built for (default: the model's
            `name_or_path`).

    Returns a `BuildResult`; on processes other than the main one, `codebook` is None.
    """
    preset_obj = get_preset(preset, **(preset_overrides or {}))
    if work_dir is None:
        if out is None:
            raise ValueError("Give `out` (the codebook directory) or `work_dir` (where per-image probes are kept).")
        work_dir = Path(out) / "probes"
    items = images if _is_item_iterable(images) else open_image_source(images)
    runner = ProbeRunner(
        model,
        processor,
        prompt=prompt,
        conversation=preset_obj.conversation,
        probe_ranks=probe_ranks,
        batch_size=batch_size,
        pad_embedding=pad_embedding,
        pad_token_id=pad_token_id if pad_token_id is not None else preset_obj.pad_token_id,
        rank_by=rank_by,
        top_logits=preset_obj.top_logits,
        pmax_top_logits=preset_obj.pmax_top_logits,
        skip_first_token=preset_obj.skip_first_token,
        rank_dtype=preset_obj.rank_dtype,
        rank_ties=preset_obj.rank_ties,
        index_rank_start=preset_obj.index_rank_start,
    )
    recipe = probe_recipe(runner)
    base_model = base_model or getattr(model, "name_or_path", None) or model.config._name_or_path or None
    fingerprint = {
        "base_model": base_model,
        "base_model_revision": base_model_revision,
        "vision_feature_layer": model.config.vision_feature_layer,
        "vision_feature_select_strategy": model.config.vision_feature_select_strategy,
        "prompt": prompt,
        "prompt_token_ids": runner.prompt_token_ids,
        "probe_ranks": runner.probe_ranks,
        "rank_by": rank_by,
        **recipe,
        # The weights that make the tokens: a work dir of another checkpoint with the same name is caught here.
        "projector_sha256": tensor_digest(
            torch.cat([p.flatten() for p in runner.base.multi_modal_projector.parameters()])
        ),
        "dtype": str(runner.dtype).removeprefix("torch."),
        "top_logits": preset_obj.top_logits,
        "pmax_top_logits": preset_obj.pmax_top_logits,
    }
    rank, world_size, barrier = _distributed_state()
    store = ResultStore(work_dir)
    if rank == 0:
        store.prepare(fingerprint)
    barrier()
    store.prepare(fingerprint, main_process=False)

    summary = BuildSummary()
    seen, summary = run_probes(
        runner,
        items,
        store,
        image_batch_size=image_batch_size,
        num_images=num_images,
        rank=rank,
        world_size=world_size,
        progress=progress,
        summary=summary,
    )
    barrier()
    if rank != 0:
        return BuildResult(codebook=None, summary=summary)

    try:
        prototypes, used_ids, rows = assemble_codebook(store, seen, preset_obj, summary, progress=progress)
    except KeyboardInterrupt as interrupt:
        raise BuildInterrupted(
            f"Interrupted while selecting prototypes: all {len(seen)} images are probed, their probes kept in "
            f"{str(store.root)!r}. Run the same command again to finish without probing again."
        ) from interrupt
    preset_name = preset if isinstance(preset, str) else None
    codebook = RedundancyCodebook(
        prototypes=prototypes,
        base_model=f"{base_model}@{base_model_revision}" if base_model and base_model_revision else base_model,
        base_model_type=model.config.model_type,
        vision_feature_layer=model.config.vision_feature_layer,
        build_parameters={
            "method": "redundancy-codebook (single-token probe + leave-one-out + DPC-KNN), arXiv 2503.20540",
            "preset": preset_name,
            **preset_obj.to_dict(),
            "base_model_revision": base_model_revision,
            "vision_feature_select_strategy": model.config.vision_feature_select_strategy,
            "crop": "base crop only (first crop of pixel_values)",
            "prompt": prompt,
            "probe_ranks": runner.probe_ranks,
            "rank_by": rank_by,
            **recipe,
            "num_images": summary.num_images,
            "num_images_used": len(used_ids),
            "image_ids": used_ids,
            "unreadable_image_ids": [u["image_id"] for u in summary.unreadable],
            "source": source,
            "batch_size": batch_size,
            "image_batch_size": image_batch_size,
            "num_processes": world_size,
            "prototype_image_ids": rows["image_ids"],
            "prototype_patch_indices": rows["patch_indices"],
            "prototype_clusters": rows["clusters"],
        },
    )
    if out is not None:
        # Staged and renamed file by file (the probes live in `out` too), and always with this build's card:
        # save_pretrained keeps an existing README, which would describe an earlier build.
        with replace_files(out) as staging:
            codebook.save_pretrained(staging)
    return BuildResult(codebook=codebook, summary=summary, output_dir=Path(out) if out is not None else None)


def probe_recipe(runner: ProbeRunner) -> dict[str, Any]:
    """The probe recipe as run (after defaults are resolved): part of the work directory's fingerprint, so that a
    changed recipe is refused on resume, and of the codebook's provenance."""
    prompt = runner.probe_prompt
    return {
        "conversation": runner.conversation,
        "template_text": prompt.text,
        "bos_token_ids": prompt.bos_token_ids,
        "skip_first_token": runner.skip_first_token,
        "skip_first_token_id": runner.skip_token_id,
        "pad_token_id": runner.pad_token_id,
        "pad_embedding_sha256": tensor_digest(runner.pad_embedding),
        "ranked_by": "index" if runner.ranks_by_index else "cls",
        "rank_dtype": runner.rank_dtype,
        "rank_ties": runner.rank_ties,
        "index_rank_start": runner.index_rank_start if runner.ranks_by_index else None,
    }


def _settled(store: ResultStore, item: ImageItem) -> bool:
    content = item.content_sha256 or ""
    return store.is_done(item.key, content) or store.unreadable_record(item.key, content) is not None


def _released():
    raise RuntimeError("This image was already probed; its data is no longer held.")


def _is_item_iterable(images) -> bool:
    if isinstance(images, (str, Path)):
        return False
    if isinstance(images, (list, tuple)):
        return bool(images) and isinstance(images[0], ImageItem)
    return not hasattr(images, "column_names") and not hasattr(images, "features")
