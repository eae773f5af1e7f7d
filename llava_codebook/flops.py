"""Prefill cost model of a decoder-only language model, used to predict what pruning visual tokens saves."""


def prefill_flops(text_config, seq_len: int) -> float:
    """Multiply-accumulate FLOPs (x2) of one prefill pass over `seq_len` tokens, LM head on the last token only.

    Counts the projections (attention q/k/v/o with grouped KV heads, gated MLP) as `2 * seq_len * params` and the
    attention scores and weighted sum as `2 * 2 * seq_len^2 * hidden` per layer (no causal halving, as the dense
    kernels do the full product). Norms, rotary embeddings and softmax are ignored (< 1 %).
    """
    hidden = text_config.hidden_size
    heads = text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or hidden // heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    inter = text_config.intermediate_size
    layers = text_config.num_hidden_layers
    attn_params = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp_params = 3 * hidden * inter
    per_layer = 2 * seq_len * (attn_params + mlp_params) + 4 * seq_len * seq_len * heads * head_dim
    return float(layers * per_layer + 2 * hidden * text_config.vocab_size)


def prefill_flops_ratio(text_config, text_tokens: int, visual_tokens: int, kept_visual_tokens: int) -> float:
    """Predicted prefill cost with `kept_visual_tokens` of `visual_tokens` kept, as a share of the unpruned cost."""
    full = prefill_flops(text_config, text_tokens + visual_tokens)
    return prefill_flops(text_config, text_tokens + kept_visual_tokens) / full


def vision_tower_flops(vision_config, crops: int = 1) -> float:
    """Multiply-accumulate FLOPs (x2) of a ViT vision tower (CLIP, SigLIP) over `crops` crops, every layer counted
    (the stock tower runs them all, even when the features come from an earlier one).

    Per crop of `n` tokens (the patches, plus [CLS] where the tower has one): the patch embedding
    `2 * patches * 3 * patch_size^2 * hidden`, and per layer the projections and MLP `2 * n * (4 * hidden^2 + 2 *
    hidden * intermediate)` plus the attention scores and weighted sum `4 * n^2 * hidden`. Norms, softmax and
    position embeddings are ignored (< 1 %). CLIP ViT-L/14-336 (577 tokens): about 0.38 TFLOPs per crop.
    """
    hidden, inter = vision_config.hidden_size, vision_config.intermediate_size
    patch = vision_config.patch_size
    patches = (vision_config.image_size // patch) ** 2
    tokens = patches + (1 if getattr(vision_config, "model_type", None) == "clip_vision_model" else 0)
    embedding = 2 * patches * 3 * patch * patch * hidden
    per_layer = 2 * tokens * (4 * hidden * hidden + 2 * hidden * inter) + 4 * tokens * tokens * hidden
    return float(crops * (embedding + vision_config.num_hidden_layers * per_layer))
