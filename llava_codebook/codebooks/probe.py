"""Stages 1 and 2 of a build: the single-token probe and the leave-one-out divergences.

Both feed the language model *visual tokens alone* inside a fixed text prompt: the prompt's single image
placeholder is replaced by 1 (single-token probe), 9 (3x3 context) or all (global) post-projector tokens, the
sequence goes through the language model and `lm_head`, and the first-token logits are read at the last position.
Many such sequences of one length go through each forward pass (`batch_size` of them); this is the expensive part.

Only the first crop of the processor's `pixel_values` is used: for LLaVA-NeXT that is the base image resized to the
vision tower's resolution (336 px for the released models), as in the reference release, which builds codebooks from
the base crop only. The codebook is then applied to every crop (tiles included) at inference time.
"""

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from .divergence import all_divergences
from .presets import RELEASE_PROBE_RANKS, RELEASE_PROMPT


@dataclass
class ImageProbeResult:
    """Everything the build keeps about one image's probed tokens (`P` probes, hidden size `D`).

    `patch_indices[j]` is the raster index of probe `j` in the crop's token grid and `ranks[j]` its 1-based rank by
    [CLS] similarity (by index for towers without [CLS]); `tokens[j]` its post-projector token; `top_ids` /
    `top_probs` the first-token distribution of the single-token probe on its top-50 logits (renormalised), whose
    largest value is `p_max`; `div_*` the leave-one-out divergences (both kinds are stored); `content_sha256` the
    hash of the image the probes were made from (see `ImageItem.digest`), so a stored result is reused for that
    image only.
    """

    image_id: str
    index: int
    patch_indices: torch.Tensor
    ranks: torch.Tensor
    tokens: torch.Tensor
    p_max: torch.Tensor
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    div_ctx_release: torch.Tensor
    div_ctx_jsd: torch.Tensor
    div_global_release: torch.Tensor
    div_global_jsd: torch.Tensor
    content_sha256: str = ""

    TENSORS = (
        "patch_indices", "ranks", "tokens", "p_max", "top_ids", "top_probs",
        "div_ctx_release", "div_ctx_jsd", "div_global_release", "div_global_jsd",
    )  # fmt: skip

    def divergences(self, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(context-level, global-level) divergences of the chosen kind."""
        return getattr(self, f"div_ctx_{kind}"), getattr(self, f"div_global_{kind}")

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).detach().cpu().contiguous() for name in self.TENSORS}


def _parts(model):
    """(base model, language model, lm_head) of a LLaVA-NeXT `...ForConditionalGeneration`."""
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "language_model") or not hasattr(model, "lm_head"):
        raise ValueError(
            f"Expected a LLaVA-NeXT `...ForConditionalGeneration` (with .model.language_model and .lm_head), got "
            f"{type(model).__name__}. Load the checkpoint with LlavaNextCodebookForConditionalGeneration or "
            "LlavaNextForConditionalGeneration."
        )
    return base, base.language_model, model.lm_head


def prompt_ids(processor, prompt: str, image_token_id: int) -> list[int]:
    """Token ids of the probe prompt with exactly one image placeholder, through the model's own tokenizer.

    A processor with a chat template gets a one-turn user message (image, then `prompt`) with the generation
    prompt appended; otherwise the text is `"<image>\\n" + prompt`. The placeholder is *not* expanded.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    image_token = tokenizer.convert_ids_to_tokens(image_token_id)
    template = getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)
    if template:
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(f"{image_token}\n{prompt}", add_special_tokens=True)["input_ids"]
    count = sum(1 for i in ids if i == image_token_id)
    if count != 1:
        raise ValueError(
            f"The probe prompt must hold exactly one image placeholder (id {image_token_id}, {image_token!r}); the "
            f"tokenized prompt holds {count}. Check that the tokenizer knows {image_token!r} as a special token."
        )
    return ids


def context_window(patch_index: int, side: int) -> torch.Tensor:
    """Raster indices of the 3x3 block around `patch_index` on a `side x side` grid, shifted inward at the borders
    so that it always holds 9 tokens (the target is then off-centre)."""
    row, col = divmod(patch_index, side)
    top, left = min(max(row - 1, 0), side - 3), min(max(col - 1, 0), side - 3)
    return torch.tensor([(top + r) * side + left + c for r in range(3) for c in range(3)])


class ProbeRunner:
    """Runs the probes of a LLaVA-NeXT model: encodes base crops and feeds visual tokens to the language model.

    Args:
        model: a LLaVA-NeXT `...ForConditionalGeneration` in eval mode (any device / dtype).
        processor: its processor (image processor + tokenizer, chat template if the model has one).
        prompt: the probe question (default: the release's).
        probe_ranks: 1-based [CLS]-similarity ranks to probe; ranks beyond the crop's token count are left out.
        batch_size: sequences per language-model forward pass.
        pad_embedding: `[D]` embedding that replaces tokens in leave-one-out; default: the input-embedding row of
            the text model's pad token.
        rank_by: `"auto"` ([CLS] similarity when the tower has a [CLS] token, else index), `"cls"` or `"index"`.
    """

    def __init__(
        self,
        model,
        processor,
        *,
        prompt: str = RELEASE_PROMPT,
        probe_ranks: Sequence[int] = RELEASE_PROBE_RANKS,
        batch_size: int = 96,
        pad_embedding: torch.Tensor | None = None,
        pad_token_id: int | None = None,
        rank_by: str = "auto",
        top_logits: int = 10,
        pmax_top_logits: int = 50,
    ):
        if rank_by not in ("auto", "cls", "index"):
            raise ValueError(f"rank_by={rank_by!r} is unknown; use 'auto', 'cls' or 'index'.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.model, self.processor = model, processor
        self.base, self.language_model, self.lm_head = _parts(model)
        config = model.config
        self.feature_layer = config.vision_feature_layer
        self.strategy = config.vision_feature_select_strategy
        self.side = config.vision_config.image_size // config.vision_config.patch_size
        if self.side < 3:
            raise ValueError(f"The crop is a {self.side}x{self.side} token grid; the 3x3 context probe needs >= 3x3.")
        self.batch_size, self.rank_by = batch_size, rank_by
        self.top_logits, self.pmax_top_logits = top_logits, pmax_top_logits
        self.prompt = prompt
        self.embeddings = model.get_input_embeddings()
        self.device, self.dtype = self.embeddings.weight.device, self.embeddings.weight.dtype

        ids = prompt_ids(processor, prompt, config.image_token_id)
        self.prompt_token_ids = ids
        at = ids.index(config.image_token_id)
        with torch.no_grad():
            embedded = self.embeddings(torch.tensor(ids, device=self.device))
        self.prefix, self.suffix = embedded[:at], embedded[at + 1 :]

        num_tokens = self.side * self.side
        ranks = sorted({int(r) for r in probe_ranks})
        if not ranks or ranks[0] < 1:
            raise ValueError(f"probe_ranks must be 1-based positive ranks, got {list(probe_ranks)[:5]}...")
        self.probe_ranks = [r for r in ranks if r <= num_tokens]
        if pad_embedding is None:
            if pad_token_id is None:
                pad_token_id = _pad_token_id(model, processor)
            pad_embedding = self.embeddings.weight[pad_token_id].detach()
        if pad_embedding.shape != (self.embeddings.weight.shape[1],):
            raise ValueError(
                f"pad_embedding must be [{self.embeddings.weight.shape[1]}] (the text hidden size), got "
                f"{tuple(pad_embedding.shape)}."
            )
        self.pad_embedding = pad_embedding.to(self.device, self.dtype)
        self.pad_token_id = pad_token_id

    # ------------------------------------------------------------------ vision side
    def pixel_values(self, images) -> torch.Tensor:
        """`[B, 3, H, W]` base crops (first crop of the processor's `pixel_values`) of PIL images."""
        image_processor = getattr(self.processor, "image_processor", self.processor)
        out = image_processor(images=list(images), return_tensors="pt")
        pixels = out["pixel_values"]
        if pixels.ndim == 5:
            pixels = pixels[:, 0]
        return pixels

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Post-projector tokens `[B, N, D]` of the crop grid and the probe order `[B, N]` (raster indices, most
        [CLS]-similar first; raster order when ranking by index). Ties keep raster order (stable sort)."""
        tower = self.base.vision_tower
        outputs = tower(pixel_values.to(self.device, tower.dtype), output_hidden_states=True, return_dict=True)
        layers = [self.feature_layer] if isinstance(self.feature_layer, int) else list(self.feature_layer)
        hidden = torch.cat([outputs.hidden_states[layer] for layer in layers], dim=-1)
        num_tokens = self.side * self.side
        has_cls = hidden.shape[1] == num_tokens + 1
        if hidden.shape[1] not in (num_tokens, num_tokens + 1):
            raise ValueError(
                f"The vision tower gave {hidden.shape[1]} tokens per crop; expected {num_tokens} (+1 CLS)."
            )
        projected = self.base.multi_modal_projector(hidden if self.strategy == "full" else hidden[:, -num_tokens:])
        tokens = projected[:, -num_tokens:]
        use_cls = self.rank_by == "cls" or (self.rank_by == "auto" and has_cls)
        if use_cls and not has_cls:
            raise ValueError("rank_by='cls' but the vision tower has no [CLS] token; use rank_by='index'.")
        batch = hidden.shape[0]
        if use_cls:
            similarity = torch.nn.functional.cosine_similarity(hidden[:, :1].float(), hidden[:, 1:].float(), dim=-1)
            order = torch.sort(-similarity.cpu(), dim=-1, stable=True).indices
        else:
            order = torch.arange(num_tokens).expand(batch, num_tokens)
        return tokens, order

    def probe_indices(self, order: torch.Tensor) -> torch.Tensor:
        """`[B, P]` raster indices of the probed tokens (ranks `self.probe_ranks`)."""
        return order[:, torch.tensor(self.probe_ranks) - 1]

    # ------------------------------------------------------------------ language side
    @torch.no_grad()
    def first_token_logits(self, visual: torch.Tensor) -> torch.Tensor:
        """`[M, V]` float32 first-token logits for `M` visual sequences `[M, L, D]` spliced into the prompt."""
        out = []
        for start in range(0, visual.shape[0], self.batch_size):
            out.append(self._forward(visual[start : start + self.batch_size]))
        return torch.cat(out) if out else torch.empty(0, self.lm_head.out_features)

    def _forward(self, visual: torch.Tensor) -> torch.Tensor:
        m = visual.shape[0]
        embeds = torch.cat(
            [
                self.prefix.expand(m, -1, -1),
                visual.to(self.device, self.dtype),
                self.suffix.expand(m, -1, -1),
            ],
            dim=1,
        )
        hidden = self.language_model(inputs_embeds=embeds, use_cache=False).last_hidden_state[:, -1]
        return self.lm_head(hidden).float().cpu()


def _pad_token_id(model, processor) -> int:
    for candidate in (
        getattr(model.config.text_config, "pad_token_id", None),
        getattr(model.config, "pad_token_id", None),
        getattr(getattr(processor, "tokenizer", processor), "pad_token_id", None),
    ):
        if candidate is not None:
            return int(candidate)
    raise ValueError(
        "The model has no pad token id (text_config.pad_token_id, config.pad_token_id and the tokenizer's are all "
        "unset); pass pad_token_id=... or pad_embedding=... (the release used each model's pad-token embedding)."
    )


@torch.no_grad()
def single_token_probe(runner: ProbeRunner, tokens: torch.Tensor, probe_indices: torch.Tensor) -> dict:
    """Stage 1: feed each probed token alone; return `p_max` `[B, P]`, `top_ids` / `top_probs` `[B, P, 50]`.

    `p_max` is the largest probability of the softmax over the top-50 first-token logits.
    """
    batch, probes = probe_indices.shape
    picked = tokens[torch.arange(batch)[:, None], probe_indices.to(tokens.device)]  # [B, P, D]
    logits = runner.first_token_logits(picked.reshape(batch * probes, 1, -1))
    top = logits.topk(min(runner.pmax_top_logits, logits.shape[-1]), dim=-1)
    probs = torch.softmax(top.values.double(), dim=-1).float()
    return {
        "p_max": probs[:, 0].reshape(batch, probes),
        "top_ids": top.indices.reshape(batch, probes, -1),
        "top_probs": probs.reshape(batch, probes, -1),
        "tokens": picked,
    }


@torch.no_grad()
def leave_one_out(runner: ProbeRunner, tokens: torch.Tensor, probe_indices: torch.Tensor) -> dict:
    """Stage 2: divergences `[B, P]` of removing each probed token, at context and at global level.

    Context: the 3x3 block alone vs the same block with the target replaced by the pad embedding.
    Global: all tokens of the crop vs all tokens with the 3x3 block replaced by pad embeddings.
    Each is computed on the top-`runner.top_logits` logits of the intact run; both divergence kinds are returned
    (`ctx_release`, `ctx_jsd`, `global_release`, `global_jsd`).
    """
    batch, probes = probe_indices.shape
    windows = torch.stack([context_window(int(i), runner.side) for i in probe_indices.flatten()])  # [B*P, 9]
    image_of = torch.arange(batch).repeat_interleave(probes)
    pad = runner.pad_embedding.to(tokens.device, tokens.dtype)

    intact_ctx = tokens[image_of[:, None], windows.to(tokens.device)]  # [B*P, 9, D]
    perturbed_ctx = intact_ctx.clone()
    target = (windows == probe_indices.flatten()[:, None]).to(tokens.device)
    perturbed_ctx[target] = pad
    ctx_logits = runner.first_token_logits(torch.cat([intact_ctx, perturbed_ctx]))
    ctx = all_divergences(ctx_logits[: batch * probes], ctx_logits[batch * probes :], k=runner.top_logits)

    intact_global = runner.first_token_logits(tokens)  # [B, V]: one intact run per image
    blocked = torch.zeros(batch * probes, tokens.shape[1], dtype=torch.bool)
    blocked[torch.arange(batch * probes)[:, None], windows] = True
    perturbed_global = []
    for start in range(0, batch * probes, runner.batch_size):
        stop = min(start + runner.batch_size, batch * probes)
        sequences = tokens[image_of[start:stop].to(tokens.device)].clone()
        sequences[blocked[start:stop].to(tokens.device)] = pad
        perturbed_global.append(runner.first_token_logits(sequences))
    global_ = all_divergences(intact_global[image_of], torch.cat(perturbed_global), k=runner.top_logits)
    return {
        f"{level}_{kind}": values[kind].reshape(batch, probes)
        for level, values in (("ctx", ctx), ("global", global_))
        for kind in values
    }


def probe_images(runner: ProbeRunner, images, items) -> list[ImageProbeResult]:
    """Stages 1 and 2 for a batch of decoded PIL `images` (with their `ImageItem`s); one result per image."""
    tokens, order = runner.encode(runner.pixel_values(images))
    indices = runner.probe_indices(order)
    single = single_token_probe(runner, tokens, indices)
    divergences = leave_one_out(runner, tokens, indices)
    ranks = torch.tensor(runner.probe_ranks)
    results = []
    for b, item in enumerate(items):
        results.append(
            ImageProbeResult(
                image_id=item.image_id,
                index=item.index,
                patch_indices=indices[b].clone(),
                ranks=ranks.clone(),
                tokens=single["tokens"][b].detach().cpu().clone(),
                p_max=single["p_max"][b].clone(),
                top_ids=single["top_ids"][b].clone(),
                top_probs=single["top_probs"][b].clone(),
                **{f"div_{name}": values[b].clone() for name, values in divergences.items()},
                content_sha256=item.content_sha256 or "",
            )
        )
    return results


RESULT_FIELDS = tuple(f.name for f in fields(ImageProbeResult))
