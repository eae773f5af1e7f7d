"""What each prompt of a batch cost the language model: visual tokens kept / total, prompt length, prefill FLOPs.

Family-independent: the totals are the modality placeholders the processor wrote into `input_ids` (what the stock
model would give the language model), and the kept counts come from the call's `VisualTokenSelection`, whose
segments (an image, a video, ...) are matched to the rows of the batch by walking them in order until they cover
each row's placeholders. Nothing here knows how a family lays its tokens out.
"""

from dataclasses import dataclass

import torch

from ..flops import prefill_flops, vision_tower_flops

MODALITIES = ("image", "video")


@dataclass(frozen=True)
class RowAccount:
    """One prompt of a batch.

    visual_tokens_kept / visual_tokens_total: visual tokens the language model received / would have received
        without pruning (row newlines included, as the selection report counts them).
    prompt_tokens / prompt_tokens_unpruned: the prompt length that reached the language model / without pruning.
    prefill_flops / prefill_flops_unpruned: `llava_codebook.flops.prefill_flops` of those two lengths.
    tiles_skipped: AnyRes tiles of the prompt's images that tile skipping left unencoded.
    vision_flops_saved: the vision-tower FLOPs those tiles would have cost (`flops.vision_tower_flops`).
    """

    visual_tokens_kept: int
    visual_tokens_total: int
    prompt_tokens: int
    prompt_tokens_unpruned: int
    prefill_flops: float
    prefill_flops_unpruned: float
    tiles_skipped: int = 0
    vision_flops_saved: float = 0.0


def modality_token_ids(config) -> dict[str, int]:
    """The placeholder token id of each modality the config names (`image_token_id` / `image_token_index`, ...)."""
    ids = {}
    for modality in MODALITIES:
        for name in (f"{modality}_token_id", f"{modality}_token_index"):
            value = getattr(config, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                ids[modality] = value
                break
    return ids


def _segments_per_row(selection, modality: str, placeholders: list[int]) -> list[list[int]]:
    """Per row, the indices of the selection's `modality` segments that fill its placeholders."""
    own = [i for i, m in enumerate(selection.modalities) if m == modality]
    total = [int(selection.num_total[i]) for i in own]
    rows, segment = [], 0
    for need in placeholders:
        covered, members = 0, []
        while covered < need and segment < len(total):
            covered, segment = covered + total[segment], segment + 1
            members.append(own[segment - 1])
        if covered != need:
            break
        rows.append(members)
    if len(rows) != len(placeholders) or segment != len(total):
        raise RuntimeError(
            f"The selection's {modality} segments (sizes {total}) do not cover the batch's {modality} placeholders "
            f"per prompt ({placeholders}); the report cannot be attributed to prompts."
        )
    return rows


def account_rows(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, selection) -> list[RowAccount]:
    """Per row of the caller's (uncompacted) `input_ids`: what the language model received, given the call's
    `selection` (`VisualTokenSelection`, or `None` when nothing was pruned)."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    present = attention_mask.bool()
    lengths = present.sum(dim=1).tolist()
    token_ids = modality_token_ids(model.config)
    placeholders = {m: ((input_ids == t) & present).sum(dim=1).tolist() for m, t in token_ids.items()}
    batch = input_ids.shape[0]
    total = [sum(placeholders[m][row] for m in placeholders) for row in range(batch)]
    kept = list(total)
    skipped = [0] * batch
    if selection is not None:
        kept = [0] * batch
        for modality in set(selection.modalities or ()):
            if modality not in placeholders:
                raise RuntimeError(f"The config names no placeholder token for the selection's {modality!r} tokens.")
        for modality, counts in placeholders.items():
            if modality not in (selection.modalities or ()):
                kept = [k + c for k, c in zip(kept, counts)]  # a modality the call did not prune: all kept
                continue
            rows = _segments_per_row(selection, modality, counts)
            kept = [k + sum(int(selection.num_kept[i]) for i in members) for k, members in zip(kept, rows)]
            tiles = selection.skipped_tiles
            if tiles is not None:
                skipped = [
                    s + sum(0 if tiles[i] is None else int(tiles[i].numel()) for i in members)
                    for s, members in zip(skipped, rows)
                ]
    text_config = model.config.text_config
    crop_flops = vision_tower_flops(model.config.vision_config) if any(skipped) else 0.0
    accounts = []
    for row in range(batch):
        pruned_length = lengths[row] - total[row] + kept[row]
        accounts.append(
            RowAccount(
                visual_tokens_kept=kept[row],
                visual_tokens_total=total[row],
                prompt_tokens=pruned_length,
                prompt_tokens_unpruned=lengths[row],
                prefill_flops=prefill_flops(text_config, pruned_length),
                prefill_flops_unpruned=prefill_flops(text_config, lengths[row]),
                tiles_skipped=skipped[row],
                vision_flops_saved=skipped[row] * crop_flops,
            )
        )
    return accounts
