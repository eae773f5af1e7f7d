"""Signals from inside the vision tower, captured during the one pass that encodes the images.

Some strategies rank tokens by what the vision tower computed, not by the features the language model receives:
the [CLS]-to-patch attention of a layer (FasterVLM, VisionZip, HiRED), that layer's keys (VisionZip's merge
similarity) or the projector's input (VisionZip merges there, then projects). A strategy states what it needs as a
`SignalRequest`; while the family encodes the images, `capture_tower_signals` holds forward hooks on the projection
modules of the requested layers and on the projector, and removes them when the pass is over.

The attention row is computed from the layer's own query and key projections of its input hidden states, as
`softmax(q_cls . k^T / sqrt(d_head))` per head, in float32: the tower keeps its attention backend (sdpa, flash), which
never materialises attention weights, and only the [CLS] row is ever formed (`[crops, heads, tokens]`).

`pack_tower_signals` then lays the per-crop values out in the packed order of each segment with the family's own
`pack_crop_values`, so a signal lines up index for index with the segment's tokens (NaN at row newlines).

Works for the LLaVA families' CLIP and SigLIP towers (attention modules with `q_proj`, `k_proj`, `num_heads`,
`head_dim`); [CLS] attention needs a tower with a [CLS] token at position 0 (CLIP; SigLIP has none).
"""

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class SignalRequest:
    """What a strategy needs from the vision tower for one call (layers counted like Python indices: -2 = penultimate).

    cls_attention_layers: layers whose [CLS]-to-token attention row (mean over heads) is wanted.
    key_layers: layers whose keys (mean over heads, `[tokens, head_dim]`) are wanted.
    projector_inputs: whether the projector's per-crop input features are wanted (merging strategies).
    """

    cls_attention_layers: tuple[int, ...] = ()
    key_layers: tuple[int, ...] = ()
    projector_inputs: bool = False

    def __bool__(self) -> bool:
        return bool(self.cls_attention_layers or self.key_layers or self.projector_inputs)

    def __or__(self, other: "SignalRequest") -> "SignalRequest":
        """Everything either request needs (layers in first-seen order, each once): one tower pass then serves
        every strategy behind either request."""
        return SignalRequest(
            cls_attention_layers=tuple(dict.fromkeys(self.cls_attention_layers + other.cls_attention_layers)),
            key_layers=tuple(dict.fromkeys(self.key_layers + other.key_layers)),
            projector_inputs=self.projector_inputs or other.projector_inputs,
        )


@dataclass
class CapturedSignals:
    """Per-crop signals of one tower pass, in the tower's crop order (every image's crops, one after the other).

    cls_attention: requested layer -> `[crops, sequence]` float32 [CLS] row (column 0 is [CLS] itself).
    keys: requested layer -> `[crops, sequence, head_dim]` float32.
    projector_inputs: `[crops, tokens_per_crop, hidden]` what the projector received.
    """

    cls_attention: dict[int, torch.Tensor] = field(default_factory=dict)
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    projector_inputs: torch.Tensor | None = None


class _LayerProbe:
    """Forward hooks on one attention module's `q_proj` and `k_proj`; computes what was asked from their outputs."""

    def __init__(self, attention: nn.Module, want_cls: bool, want_keys: bool):
        self.attention, self.want_cls, self.want_keys = attention, want_cls, want_keys
        self.heads = attention.num_heads
        self.head_dim = attention.head_dim
        self.scale = getattr(attention, "scale", self.head_dim**-0.5)
        self.query: torch.Tensor | None = None
        self.rows: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = []

    def on_query(self, module, args, output):
        # Only the [CLS] query is ever used: `[batch, heads, head_dim]`.
        self.query = output[:, 0].detach().float().view(output.shape[0], self.heads, self.head_dim)

    def on_key(self, module, args, output):
        keys = output.detach().float().view(*output.shape[:2], self.heads, self.head_dim)  # [batch, seq, heads, dim]
        if self.want_cls:
            if self.query is None:
                raise RuntimeError("The attention module computed its keys before its queries; cannot probe it.")
            logits = torch.einsum("bhd,bshd->bhs", self.query, keys) * self.scale
            self.rows.append(logits.softmax(dim=-1).mean(dim=1))
            self.query = None
        if self.want_keys:
            self.keys.append(keys.mean(dim=2))


def _normalise_layer(layer: int, count: int, what: str) -> int:
    if not -count <= layer < count:
        raise ValueError(f"{what}={layer} is not a layer of the vision tower, which has {count} (use 0..{count - 1}).")
    return layer % count


# The captures held by the current thread / asyncio task (`capture_tower_signals`).
_CAPTURING: contextvars.ContextVar[frozenset] = contextvars.ContextVar("llava_codebook_capturing", default=frozenset())


@contextlib.contextmanager
def capture_tower_signals(
    layers: nn.ModuleList, projector: nn.Module | None, request: SignalRequest, cls_token: bool = True
) -> Iterator[CapturedSignals]:
    """Hold hooks that record `request`'s signals during the tower passes run inside the `with` block.

    `layers` are the tower's encoder layers (each with a `self_attn`), `projector` the module that maps tower features
    to the language model's space. The yielded `CapturedSignals` is filled when the block exits; the hooks are
    removed even if the block raises. With an empty request nothing is hooked.
    """
    captured = CapturedSignals()
    if not request:
        yield captured
        return
    if request.cls_attention_layers and not cls_token:
        raise ValueError(
            "This strategy ranks tokens by [CLS] attention, but this model's vision tower has no [CLS] token "
            "(e.g. SigLIP). Use a strategy that needs no [CLS] token: 'codebook', 'codebook_diverse', 'divprune', "
            "'random' or 'uniform'."
        )
    count = len(layers)
    wanted: dict[int, dict] = {}
    for layer in request.cls_attention_layers:
        wanted.setdefault(_normalise_layer(layer, count, "layer"), {"cls": [], "keys": []})["cls"].append(layer)
    for layer in request.key_layers:
        wanted.setdefault(_normalise_layer(layer, count, "layer"), {"cls": [], "keys": []})["keys"].append(layer)
    probes, handles, inputs = {}, [], []
    # Hooks live on the shared modules, but record only the passes of the thread (and asyncio task) that holds this
    # capture: a server encoding two requests at once on one model gets each request's own signals.
    capture_id = object()

    def own(callback):
        def hook(*args):
            if capture_id in _CAPTURING.get():
                callback(*args)

        return hook

    token = _CAPTURING.set(_CAPTURING.get() | {capture_id})
    try:
        for index, names in wanted.items():
            attention = layers[index].self_attn
            probe = _LayerProbe(attention, bool(names["cls"]), bool(names["keys"]))
            handles.append(attention.q_proj.register_forward_hook(own(probe.on_query)))
            handles.append(attention.k_proj.register_forward_hook(own(probe.on_key)))
            probes[index] = probe
        if request.projector_inputs:
            if projector is None:
                raise ValueError("This strategy merges tokens before the projector, but the model names no projector.")
            handles.append(
                projector.register_forward_pre_hook(own(lambda module, args: inputs.append(args[0].detach())))
            )
        yield captured
    finally:
        for handle in handles:
            handle.remove()
        _CAPTURING.reset(token)
    for index, names in wanted.items():
        probe = probes[index]
        for layer in names["cls"]:
            captured.cls_attention[layer] = torch.cat(probe.rows) if probe.rows else None
        for layer in names["keys"]:
            captured.keys[layer] = torch.cat(probe.keys) if probe.keys else None
    if request.projector_inputs and inputs:
        captured.projector_inputs = torch.cat(inputs)


def pack_tower_signals(
    captured: CapturedSignals,
    num_crops: list[int],
    pack_crop_values: Callable[[list[torch.Tensor]], list[torch.Tensor]],
    drop_cls: bool,
) -> list[dict]:
    """Per segment, the captured signals in packed order.

    `num_crops[i]` is how many tower crops segment `i` was encoded from (its crops are consecutive in the tower's
    batch); `pack_crop_values` is the family's map from per-crop `[num_crops, tokens_per_crop]` values to packed
    order (NaN at newlines); `drop_cls` says the feature-select strategy removed the [CLS] position before packing.

    Returns per segment a dict: `"cls_attention"`: layer -> `[L]` float32 (NaN at newlines), `"keys"`: layer ->
    `[L, head_dim]` float32, `"projector_inputs"`: `[L, hidden]` (NaN rows at newlines).
    """
    total = sum(num_crops)
    per_crop: dict = {}
    for name, by_layer in (("cls_attention", captured.cls_attention), ("keys", captured.keys)):
        for layer, values in by_layer.items():
            if values is None or values.shape[0] != total:
                raise RuntimeError(
                    f"Captured {name} of layer {layer} for {None if values is None else values.shape[0]} crops, but "
                    f"the images were encoded from {total}: the tower was not run once over every crop."
                )
            per_crop[(name, layer)] = values[:, 1:] if drop_cls else values
    if captured.projector_inputs is not None:
        per_crop[("projector_inputs", None)] = captured.projector_inputs
    if not per_crop:
        return [{} for _ in num_crops]
    tokens_per_crop = {values.shape[1] for values in per_crop.values()}
    if len(tokens_per_crop) != 1:
        raise RuntimeError(f"Captured signals disagree on the tokens per crop: {sorted(tokens_per_crop)}.")
    tokens = tokens_per_crop.pop()
    # One packing of a flat (crop, token) index map tells where every packed token came from; every signal, scalar or
    # vector, is then gathered through it. Float32 holds these small integers exactly.
    index_maps = [torch.arange(n * tokens, dtype=torch.float32).view(n, tokens) for n in num_crops]
    sources = [packed.nan_to_num(-1).long() for packed in pack_crop_values(index_maps)]
    segments = []
    start = 0
    for n, source in zip(num_crops, sources):
        signals: dict = {"cls_attention": {}, "keys": {}}
        real = source >= 0
        for (name, layer), values in per_crop.items():
            flat = values[start : start + n].reshape(n * tokens, *values.shape[2:])
            gathered = flat.new_full((source.shape[0], *flat.shape[1:]), torch.nan)
            gathered[real.to(flat.device)] = flat[source[real].to(flat.device)]
            if name == "projector_inputs":
                signals[name] = gathered
            else:
                signals[name][layer] = gathered
        segments.append(signals)
        start += n
    return segments


__all__ = ["CapturedSignals", "SignalRequest", "capture_tower_signals", "pack_tower_signals"]
