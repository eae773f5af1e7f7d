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
