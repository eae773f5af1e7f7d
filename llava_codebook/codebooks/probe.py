"""Stages 1 and 2 of a build: the single-token probe and the leave-one-out divergences.

Both feed the language model *visual tokens alone* inside a fixed text prompt: the prompt's single image
placeholder is replaced by 1 (single-token probe; more with `rank_ties="group"`), 9 (3x3 context) or all (global)
post-projector tokens, the sequence goes through the language model and `lm_head`, and the first-token logits are
read at the last position (the second token's, after an "A" step; see `BuildPreset.skip_first_token`). Many such
sequences of one length go through each forward pass (`batch_size` of them); this is the expensive part.

Works with any LLaVA `...ForConditionalGeneration` exposing `.model.language_model`, `.model.vision_tower`,
`.model.multi_modal_projector` and `.lm_head`: LLaVA-1.5 (`LlavaForConditionalGeneration`), LLaVA-NeXT and
LLaVA-OneVision (SigLIP, no [CLS] token: ranked by raster index). The Qwen-VL families, whose language model places
visual tokens by where they lie in the image (M-RoPE), have their runner in `probe_mrope.py`; every probe sequence
carries a `ProbeLayout` for it.

Which view is probed: the first crop of the processor's `pixel_values`. For AnyRes processors (LLaVA-NeXT,
OneVision) that is the base view, the whole image resized (aspect ratio not kept) to the tower's resolution, 336 px
for the released NeXT models: the view the release's `process_anyres_image` puts first and its NeXT evaluation
keeps (`image_tensor[:, :1]`), so the probes see what the release's did (the resampling kernels differ: PIL bicubic
there, the checkpoint's image processor here). Probing the base view only is the release's choice; a tile is a
zoomed-in part of the image, whose tokens the base-view codebook is then applied to at inference. For LLaVA-1.5 the
single crop is the resized, centre-cropped image, as the release's probing script preprocessed it.
"""

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch

from .divergence import all_divergences
from .presets import (
    CHECKPOINT_TEMPLATE,
    CONVERSATIONS,
    RANK_DTYPES,
    RANK_TIES,
    RELEASE_PROBE_RANKS,
    RELEASE_PROMPT,
)


@dataclass
class ImageProbeResult:
    """Everything the build keeps about one image's probes (`P` probes, `R >= P` token rows, hidden size `D`).

    Per probe `j`: `ranks[j]` is its 1-based rank by [CLS] similarity (by index for towers without [CLS]);
    `patch_indices[j]` the raster index of its token in the crop's grid (the leave-one-out target); `top_ids` /
    `top_probs` the first-token distribution of the single-token probe on its top-50 logits (renormalised), whose
    largest value is `p_max`; `div_*` the leave-one-out divergences (both kinds are stored).

    Per token row `r`: `tokens[r]` a post-projector token fed in a single-token probe, `token_probes[r]` the probe it
    belongs to and `token_patch_indices[r]` its raster index. With `rank_ties="split"` there is one row per probe;
    with `"group"` a probe feeds every patch tied at its rank, each a row (a tied group probed at several ranks
    appears once per rank, as in the release). `content_sha256` is the hash of the image the probes were made from
    (see `ImageItem.digest`), so a stored result is reused for that image only.
    """

    image_id: str
    index: int
    patch_indices: torch.Tensor
    ranks: torch.Tensor
    tokens: torch.Tensor
    token_probes: torch.Tensor
    token_patch_indices: torch.Tensor
    p_max: torch.Tensor
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    div_ctx_release: torch.Tensor
    div_ctx_jsd: torch.Tensor
    div_global_release: torch.Tensor
    div_global_jsd: torch.Tensor
    content_sha256: str = ""

    TENSORS = (
        "patch_indices", "ranks", "tokens", "token_probes", "token_patch_indices", "p_max", "top_ids", "top_probs",
        "div_ctx_release", "div_ctx_jsd", "div_global_release", "div_global_jsd",
    )  # fmt: skip

    def divergences(self, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(context-level, global-level) divergences of the chosen kind."""
        return getattr(self, f"div_ctx_{kind}"), getattr(self, f"div_global_{kind}")

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).detach().cpu().contiguous() for name in self.TENSORS}


class EncodedCrops(NamedTuple):
    """`tokens` `[B, N, D]` post-projector tokens of the crop grid; `order` `[B, N]` raster indices in probe order
    (most [CLS]-similar first; raster order when ranking by index); `similarity` `[B, N]` the [CLS] similarity the
    order sorts (rounded to the ranking precision), None when ranking by index."""

    tokens: torch.Tensor
    order: torch.Tensor
    similarity: torch.Tensor | None


class ProbeLayout(NamedTuple):
    """Where the visual tokens of `M` probe sequences `[M, L, D]` come from: `indices` `[M, L]` their raster indices in
    the probed grid, `replaced` `[M, L]` which of them leave-one-out replaced by the pad embedding, `images` `[M]` the
    image (of the batch being probed) each sequence is made from. A runner whose language model places visual tokens
    by where they lie in the image (M-RoPE) reads it; the others ignore it."""

    indices: torch.Tensor
    replaced: torch.Tensor
    images: torch.Tensor

    def rows(self, rows) -> "ProbeLayout":
        return ProbeLayout(self.indices[rows], self.replaced[rows], self.images[rows])

    @classmethod
    def cat(cls, layouts: Sequence["ProbeLayout"]) -> "ProbeLayout":
        return cls(*(torch.cat(parts) for parts in zip(*layouts)))

    @classmethod
    def whole(cls, indices: torch.Tensor, images: torch.Tensor) -> "ProbeLayout":
        return cls(indices, torch.zeros(indices.shape, dtype=torch.bool), images)


@dataclass(frozen=True)
class ProbePrompt:
    """The probe prompt: `text` (with the image placeholder, without the BOS tokens the builder adds), its
    `token_ids` (exactly one image placeholder) and `bos_token_ids`, the BOS ids they start with."""

    text: str
    token_ids: list[int]
    bos_token_ids: list[int]


def _parts(model):
    """(base model, language model, lm_head) of a LLaVA `...ForConditionalGeneration`."""
    base = getattr(model, "model", None)
    missing = [
        name
        for name, present in (
            (".model.language_model", base is not None and hasattr(base, "language_model")),
            (".model.vision_tower", base is not None and hasattr(base, "vision_tower")),
            (".model.multi_modal_projector", base is not None and hasattr(base, "multi_modal_projector")),
            (".lm_head", hasattr(model, "lm_head")),
        )
        if not present
    ]
    if missing:
        raise ValueError(
            f"Expected a LLaVA `...ForConditionalGeneration` (LlavaForConditionalGeneration for LLaVA-1.5, "
            f"LlavaNextForConditionalGeneration, LlavaOnevisionForConditionalGeneration, or this package's "
            f"LlavaNextCodebookForConditionalGeneration), got {type(model).__name__}, which has no "
            f"{', '.join(missing)}. Load the checkpoint with AutoModelForImageTextToText."
        )
    return base, base.language_model, model.lm_head


def _tokenizer(processor):
    return getattr(processor, "tokenizer", processor)


def probe_prompt(processor, prompt: str, image_token_id: int, conversation: str = CHECKPOINT_TEMPLATE) -> ProbePrompt:
    """The probe prompt through the model's own tokenizer, with exactly one image placeholder (not expanded).

    `conversation` is a key of `presets.CONVERSATIONS` (the release's conversation for a family) or `"checkpoint"`.
    A release conversation is rendered (`ReleaseConversation.render`) and tokenized as the release did: in chunks
    split at the placeholder, each without special tokens, preceded by its `bos_count` BOS ids. With `"checkpoint"`,
    a processor with a chat template gets a one-turn user message (image, then `prompt`) with the generation prompt
    appended, tokenized without adding special tokens; one without a chat template gets `"<image>\\n" + prompt`
    with the tokenizer's special tokens.
    """
    tokenizer = _tokenizer(processor)
    image_token = tokenizer.convert_ids_to_tokens(image_token_id)
    if conversation == CHECKPOINT_TEMPLATE:
        template = getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)
        if template:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            text = f"{image_token}\n{prompt}"
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    elif conversation in CONVERSATIONS:
        spec = CONVERSATIONS[conversation]
        text = spec.render(prompt, image_token)
        if spec.bos_count and tokenizer.bos_token_id is None:
            raise ValueError(
                f"The {conversation!r} conversation starts with {spec.bos_count} BOS token(s), but the tokenizer has "
                "no BOS token. Use the conversation of this model's family (or conversation='checkpoint')."
            )
        ids = [tokenizer.bos_token_id] * spec.bos_count
        for position, chunk in enumerate(text.split(image_token)):
            if position:
                ids.append(image_token_id)
            ids += tokenizer(chunk, add_special_tokens=False)["input_ids"] if chunk else []
    else:
        raise ValueError(
            f"conversation={conversation!r} is unknown; use one of {[CHECKPOINT_TEMPLATE, *CONVERSATIONS]}."
        )
    count = sum(1 for i in ids if i == image_token_id)
    if count != 1:
        raise ValueError(
            f"The probe prompt must hold exactly one image placeholder (id {image_token_id}, {image_token!r}); the "
            f"tokenized prompt holds {count}. Check that the tokenizer knows {image_token!r} as a special token."
        )
    leading = 0
    while leading < len(ids) and tokenizer.bos_token_id is not None and ids[leading] == tokenizer.bos_token_id:
        leading += 1
    return ProbePrompt(text=text, token_ids=ids, bos_token_ids=ids[:leading])


def prompt_ids(processor, prompt: str, image_token_id: int, conversation: str = CHECKPOINT_TEMPLATE) -> list[int]:
    """Token ids of the probe prompt (see `probe_prompt`)."""
    return probe_prompt(processor, prompt, image_token_id, conversation).token_ids


def context_window(patch_index: int, side: int) -> torch.Tensor:
    """Raster indices of the 3x3 block around `patch_index` on a `side x side` grid, shifted inward at the borders
    so that it always holds 9 tokens (the target is then off-centre)."""
    row, col = divmod(patch_index, side)
    top, left = min(max(row - 1, 0), side - 3), min(max(col - 1, 0), side - 3)
    return torch.tensor([(top + r) * side + left + c for r in range(3) for c in range(3)])


def _round_fp16(values: torch.Tensor) -> torch.Tensor:
    return values.to(torch.float32).to(torch.float16).to(values.dtype)


def fp16_cls_similarity(hidden: torch.Tensor) -> torch.Tensor:
    """`[B, N]` cosine of each patch to [CLS] (`hidden` `[B, 1 + N, C]`) as the release computed it in fp16.

    Its vision tower ran in fp16: features, their L2 norms, the normalised vectors and the dot products are each
    fp16 tensors (norms and dot products accumulated in higher precision, then rounded). Emulated here in float64
    with a rounding to fp16 after each of those steps; returned as float32 holding fp16 values, so that equal
    values (ties) are exactly equal.
    """
    features = _round_fp16(hidden.double())
    norms = _round_fp16(features.norm(dim=-1, keepdim=True)).clamp_min(1e-12)
    unit = _round_fp16(features / norms)
    return _round_fp16((unit[:, 1:] * unit[:, :1]).sum(dim=-1)).float()


class ProbeRunner:
    """Runs the probes of a LLaVA model: encodes base crops and feeds visual tokens to the language model.

    Args:
        model: a LLaVA `...ForConditionalGeneration` in eval mode (any device / dtype).
        processor: its processor (image processor + tokenizer, chat template if the model has one).
        prompt: the probe question (default: the release's).
        conversation: how the question is wrapped (see `probe_prompt`): a release conversation (`"llava_v1"`,
            `"llava_llama_3"`, `"qwen_1_5"`) or `"checkpoint"` (default here; presets name the release's).
        probe_ranks: 1-based ranks to probe; ranks beyond the crop's token count are left out.
        batch_size: sequences per language-model forward pass.
        pad_embedding: `[D]` embedding that replaces tokens in leave-one-out; default: the input-embedding row of
            `pad_token_id`, itself defaulting to the model's pad token.
        rank_by: `"auto"` ([CLS] similarity when the tower has a [CLS] token, else index), `"cls"` or `"index"`.
        skip_first_token / rank_dtype / rank_ties / index_rank_start: the release's recipe options, documented on
            `BuildPreset`.
    """

    def __init__(
        self,
        model,
        processor,
        *,
        prompt: str = RELEASE_PROMPT,
        conversation: str = CHECKPOINT_TEMPLATE,
        probe_ranks: Sequence[int] = RELEASE_PROBE_RANKS,
        batch_size: int = 96,
        pad_embedding: torch.Tensor | None = None,
        pad_token_id: int | None = None,
        rank_by: str = "auto",
        top_logits: int = 10,
        pmax_top_logits: int = 50,
        skip_first_token: str = "",
        rank_dtype: str = "float32",
        rank_ties: str = "split",
        index_rank_start: int = 0,
    ):
        if rank_by not in ("auto", "cls", "index"):
            raise ValueError(f"rank_by={rank_by!r} is unknown; use 'auto', 'cls' or 'index'.")
        if rank_dtype not in RANK_DTYPES or rank_ties not in RANK_TIES:
            raise ValueError(
                f"rank_dtype={rank_dtype!r} / rank_ties={rank_ties!r}: use one of {RANK_DTYPES} / {RANK_TIES}."
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if index_rank_start < 0:
            raise ValueError(f"index_rank_start must be >= 0, got {index_rank_start}.")
        self.model, self.processor = model, processor
        config = model.config
        self._set_up_vision(model)
        if self.side < 3:
            raise ValueError(f"The crop is a {self.side}x{self.side} token grid; the 3x3 context probe needs >= 3x3.")
        self.batch_size, self.rank_by = batch_size, rank_by
        self.top_logits, self.pmax_top_logits = top_logits, pmax_top_logits
        self.rank_dtype, self.rank_ties, self.index_rank_start = rank_dtype, rank_ties, index_rank_start
        self.prompt, self.conversation = prompt, conversation
        self.embeddings = model.get_input_embeddings()
        self.device, self.dtype = self.embeddings.weight.device, self.embeddings.weight.dtype
        vocab_size = self.embeddings.weight.shape[0]

        if rank_by == "cls" and not self.has_cls:
            raise ValueError("rank_by='cls' but the vision tower has no [CLS] token; use rank_by='index'.")
        self.ranks_by_index = rank_by == "index" or not self.has_cls

        self.probe_prompt = probe_prompt(processor, prompt, config.image_token_id, conversation)
        ids = self.prompt_token_ids = self.probe_prompt.token_ids
        at = ids.index(config.image_token_id)
        with torch.no_grad():
            embedded = self.embeddings(torch.tensor(ids, device=self.device))
        self.prefix, self.suffix = embedded[:at], embedded[at + 1 :]

        self.skip_first_token = skip_first_token
        self.skip_token_id = (
            _token_id(_tokenizer(processor), skip_first_token, vocab_size) if skip_first_token else None
        )
        if self.skip_token_id is not None:
            with torch.no_grad():
                self.skip_embedding = self.embeddings(torch.tensor([self.skip_token_id], device=self.device))

        num_tokens = self.side * self.side
        ranks = sorted({int(r) for r in probe_ranks})
        if not ranks or ranks[0] < 1:
            raise ValueError(f"probe_ranks must be 1-based positive ranks, got {list(probe_ranks)[:5]}...")
        shift = index_rank_start if self.ranks_by_index else 0
        self.probe_ranks = [r for r in ranks if r - 1 + shift < num_tokens]
        # Position of each probed rank in `order`; by index, rank n is raster index n - 1 + index_rank_start.
        self.probe_positions = torch.tensor([r - 1 + shift for r in self.probe_ranks])
        if pad_embedding is None:
            if pad_token_id is None:
                pad_token_id = _pad_token_id(model, processor)
            if not 0 <= pad_token_id < vocab_size:
                raise ValueError(
                    f"pad_token_id={pad_token_id} is not a row of the input embeddings ({vocab_size} rows); the "
                    "preset's pad token belongs to another model family. Pass pad_token_id=... for this model."
                )
            pad_embedding = self.embeddings.weight[pad_token_id].detach()
        if pad_embedding.shape != (self.embeddings.weight.shape[1],):
            raise ValueError(
                f"pad_embedding must be [{self.embeddings.weight.shape[1]}] (the text hidden size), got "
                f"{tuple(pad_embedding.shape)}."
            )
        self.pad_embedding = pad_embedding.to(self.device, self.dtype)
        self.pad_token_id = pad_token_id

    # ------------------------------------------------------------------ vision side
    def _set_up_vision(self, model) -> None:
        """The model's parts (`base`, `language_model`, `lm_head`), the feature settings, the probed grid's side and
        whether the tower has a [CLS] token."""
        self.base, self.language_model, self.lm_head = _parts(model)
        config = model.config
        self.feature_layer = config.vision_feature_layer
        self.strategy = config.vision_feature_select_strategy
        self.side = config.vision_config.image_size // config.vision_config.patch_size
        # Whether the tower has a [CLS] token is a property of its architecture (CLIP has one, SigLIP has none).
        self.has_cls = any(hasattr(module, "class_embedding") for module in self.base.vision_tower.modules())

    @property
    def projector(self) -> torch.nn.Module:
        """The module whose weights make the probed tokens from the tower's features (part of a work dir's identity)."""
        return self.base.multi_modal_projector

    view = "base crop only (first crop of pixel_values)"  # what is probed, in words (the codebook's provenance)

    def pixel_values(self, images) -> torch.Tensor:
        """`[B, 3, H, W]` base crops (first crop of the processor's `pixel_values`) of PIL images."""
        image_processor = getattr(self.processor, "image_processor", self.processor)
        out = image_processor(images=list(images), return_tensors="pt")
        pixels = out["pixel_values"]
        if pixels.ndim == 5:
            pixels = pixels[:, 0]
        return pixels

    def encode(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Post-projector tokens `[B, N, D]` of the crop grid and the probe order `[B, N]` (see `encode_crops`)."""
        tokens, order, _ = self.encode_crops(pixel_values)
        return tokens, order

    @torch.no_grad()
    def encode_crops(self, pixel_values: torch.Tensor) -> EncodedCrops:
        """Post-projector tokens of the crop grid, the probe order and the similarity it sorts (see
        `EncodedCrops`). Ties keep raster order (stable sort)."""
        tower = self.base.vision_tower
        outputs = tower(pixel_values.to(self.device, tower.dtype), output_hidden_states=True, return_dict=True)
        layers = [self.feature_layer] if isinstance(self.feature_layer, int) else list(self.feature_layer)
        hidden = torch.cat([outputs.hidden_states[layer] for layer in layers], dim=-1)
        num_tokens = self.side * self.side
        if hidden.shape[1] != num_tokens + self.has_cls:
            raise ValueError(
                f"The vision tower gave {hidden.shape[1]} tokens per crop; expected {num_tokens}"
                + (" + 1 [CLS]." if self.has_cls else " (no [CLS]).")
            )
        projected = self.base.multi_modal_projector(hidden if self.strategy == "full" else hidden[:, -num_tokens:])
        tokens = projected[:, -num_tokens:]
        batch = hidden.shape[0]
        if self.ranks_by_index:
            return EncodedCrops(tokens, torch.arange(num_tokens).expand(batch, num_tokens), None)
        if self.rank_dtype == "float16":
            similarity = fp16_cls_similarity(hidden.cpu())
        else:
            similarity = torch.nn.functional.cosine_similarity(hidden[:, :1].float(), hidden[:, 1:].float(), dim=-1)
            similarity = similarity.cpu()
        order = torch.sort(-similarity, dim=-1, stable=True).indices
        return EncodedCrops(tokens, order, similarity)

    def probe_indices(self, order: torch.Tensor) -> torch.Tensor:
        """`[B, P]` raster indices of the probed tokens (ranks `self.probe_ranks`): the leave-one-out targets."""
        return order[:, self.probe_positions]

    def probe_groups(self, encoded: EncodedCrops, indices: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per image, per probe: the raster indices (ascending) fed together in its single-token probe.

        `rank_ties="split"`: the probe's own patch. `"group"`: every patch whose similarity equals that of the
        rank's patch, the release's rule (it selected `similarity == topk(similarity, n).values[-1]`).
        """
        if self.rank_ties == "split" or encoded.similarity is None:
            return [[index.reshape(1) for index in row] for row in indices]
        groups = []
        for similarity, row in zip(encoded.similarity, indices):
            groups.append([(similarity == similarity[index]).nonzero().squeeze(-1) for index in row])
        return groups

    # ------------------------------------------------------------------ language side
    @torch.no_grad()
    def first_token_logits(self, visual: torch.Tensor, layout: ProbeLayout | None = None) -> torch.Tensor:
        """`[M, V]` float32 first-token logits for `M` visual sequences `[M, L, D]` spliced into the prompt (the
        second token's where the greedy first token is `skip_first_token`); `layout` says where their tokens lie."""
        out = []
        for start in range(0, visual.shape[0], self.batch_size):
            rows = slice(start, start + self.batch_size)
            out.append(self._forward(visual[rows], None if layout is None else layout.rows(rows)))
        return torch.cat(out) if out else torch.empty(0, self.lm_head.out_features)

    def _forward(self, visual: torch.Tensor, layout: ProbeLayout | None = None) -> torch.Tensor:
        m = visual.shape[0]
        embeds = torch.cat(
            [
                self.prefix.expand(m, -1, -1),
                visual.to(self.device, self.dtype),
                self.suffix.expand(m, -1, -1),
            ],
            dim=1,
        )
        logits = self._last_logits(embeds, layout)
        if self.skip_token_id is not None:
            # The release generated greedily and, when the first token was "▁A", took the next step's logits.
            again = (logits.argmax(dim=-1) == self.skip_token_id).nonzero().squeeze(-1)
            if again.numel():
                step = self.skip_embedding.expand(again.numel(), 1, -1)
                logits[again] = self._last_logits(
                    torch.cat([embeds[again.to(self.device)], step], dim=1),
                    None if layout is None else layout.rows(again),
                )
        return logits

    def _last_logits(self, embeds: torch.Tensor, layout: ProbeLayout | None = None) -> torch.Tensor:
        hidden = self.language_model(inputs_embeds=embeds, use_cache=False).last_hidden_state[:, -1]
        return self.lm_head(hidden).float().cpu()


def _token_id(tokenizer, token: str, vocab_size: int) -> int:
    """The id of one vocabulary entry (e.g. SentencePiece "▁A"), refusing a token the tokenizer does not hold."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    unknown = token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token)
    if unknown or not 0 <= token_id < vocab_size:
        raise ValueError(
            f"skip_first_token={token!r} is not a token of this tokenizer's vocabulary (the llava-1.5 preset's '▁A' "
            "is a SentencePiece token of LLaMA's vocabulary). Pass skip_first_token='' to turn the 'A' step off."
        )
    return int(token_id)


def _pad_token_id(model, processor) -> int:
    for candidate in (
        getattr(model.config.text_config, "pad_token_id", None),
        getattr(model.config, "pad_token_id", None),
        getattr(_tokenizer(processor), "pad_token_id", None),
    ):
        if candidate is not None:
            return int(candidate)
    raise ValueError(
        "The model has no pad token id (text_config.pad_token_id, config.pad_token_id and the tokenizer's are all "
        "unset); pass pad_token_id=... or pad_embedding=... (the release used each model's pad-token embedding)."
    )


@torch.no_grad()
def single_token_probe(
    runner: ProbeRunner,
    tokens: torch.Tensor,
    probe_indices: torch.Tensor,
    groups: list[list[torch.Tensor]] | None = None,
) -> dict:
    """Stage 1: feed each probe's token(s) alone; return `p_max` `[B, P]`, `top_ids` / `top_probs` `[B, P, 50]`,
    and per image the token rows (`tokens`, `token_probes`, `token_patch_indices`; see `ImageProbeResult`).

    `groups` (from `ProbeRunner.probe_groups`) gives the patches of each probe, fed in raster order; by default
    each probe is its own patch. `p_max` is the largest probability of the softmax over the top-50 first-token
    logits.
    """
    batch, probes = probe_indices.shape
    if groups is None:
        groups = [[index.reshape(1) for index in row] for row in probe_indices]
    sequences = [tokens[b, groups[b][j].to(tokens.device)] for b in range(batch) for j in range(probes)]
    logits = torch.empty(batch * probes, runner.lm_head.out_features)
    by_length: dict[int, list[int]] = {}
    for position, sequence in enumerate(sequences):
        by_length.setdefault(sequence.shape[0], []).append(position)
    flat_groups = [groups[b][j] for b in range(batch) for j in range(probes)]
    for positions in by_length.values():  # sequences of one length share forward passes
        layout = ProbeLayout.whole(
            torch.stack([flat_groups[p].cpu() for p in positions]), torch.tensor(positions) // probes
        )
        logits[positions] = runner.first_token_logits(torch.stack([sequences[p] for p in positions]), layout)
    top = logits.topk(min(runner.pmax_top_logits, logits.shape[-1]), dim=-1)
    probs = torch.softmax(top.values.double(), dim=-1).float()
    rows = {"tokens": [], "token_probes": [], "token_patch_indices": []}
    for b in range(batch):
        members = groups[b]
        rows["tokens"].append(torch.cat([sequences[b * probes + j] for j in range(probes)]).detach().cpu())
        rows["token_probes"].append(torch.cat([torch.full((len(g),), j) for j, g in enumerate(members)]))
        rows["token_patch_indices"].append(torch.cat([g.cpu() for g in members]))
    return {
        "p_max": probs[:, 0].reshape(batch, probes),
        "top_ids": top.indices.reshape(batch, probes, -1),
        "top_probs": probs.reshape(batch, probes, -1),
        **rows,
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
    ctx_layout = ProbeLayout.cat([ProbeLayout.whole(windows, image_of), ProbeLayout(windows, target.cpu(), image_of)])
    ctx_logits = runner.first_token_logits(torch.cat([intact_ctx, perturbed_ctx]), ctx_layout)
    ctx = all_divergences(ctx_logits[: batch * probes], ctx_logits[batch * probes :], k=runner.top_logits)

    every = torch.arange(tokens.shape[1])
    # [B, V]: one intact run per image
    intact_global = runner.first_token_logits(tokens, ProbeLayout.whole(every.expand(batch, -1), torch.arange(batch)))
    blocked = torch.zeros(batch * probes, tokens.shape[1], dtype=torch.bool)
    blocked[torch.arange(batch * probes)[:, None], windows] = True
    perturbed_global = []
    for start in range(0, batch * probes, runner.batch_size):
        stop = min(start + runner.batch_size, batch * probes)
        sequences = tokens[image_of[start:stop].to(tokens.device)].clone()
        sequences[blocked[start:stop].to(tokens.device)] = pad
        layout = ProbeLayout(every.expand(stop - start, -1), blocked[start:stop], image_of[start:stop])
        perturbed_global.append(runner.first_token_logits(sequences, layout))
    global_ = all_divergences(intact_global[image_of], torch.cat(perturbed_global), k=runner.top_logits)
    return {
        f"{level}_{kind}": values[kind].reshape(batch, probes)
        for level, values in (("ctx", ctx), ("global", global_))
        for kind in values
    }


def probe_images(runner: ProbeRunner, images, items) -> list[ImageProbeResult]:
    """Stages 1 and 2 for a batch of decoded PIL `images` (with their `ImageItem`s); one result per image."""
    encoded = runner.encode_crops(runner.pixel_values(images))
    indices = runner.probe_indices(encoded.order)
    single = single_token_probe(runner, encoded.tokens, indices, runner.probe_groups(encoded, indices))
    divergences = leave_one_out(runner, encoded.tokens, indices)
    ranks = torch.tensor(runner.probe_ranks)
    results = []
    for b, item in enumerate(items):
        results.append(
            ImageProbeResult(
                image_id=item.image_id,
                index=item.index,
                patch_indices=indices[b].clone(),
                ranks=ranks.clone(),
                tokens=single["tokens"][b].clone(),
                token_probes=single["token_probes"][b].clone(),
                token_patch_indices=single["token_patch_indices"][b].clone(),
                p_max=single["p_max"][b].clone(),
                top_ids=single["top_ids"][b].clone(),
                top_probs=single["top_probs"][b].clone(),
                **{f"div_{name}": values[b].clone() for name, values in divergences.items()},
                content_sha256=item.content_sha256 or "",
            )
        )
    return results


RESULT_FIELDS = tuple(f.name for f in fields(ImageProbeResult))
