"""The vision-tower probe: [CLS] attention and keys from a layer's own projections, with the tower left as it was."""

import copy

import pytest
import torch
from transformers.models.clip import modeling_clip

from llava_codebook.signals import SignalRequest, capture_tower_signals


@pytest.fixture
def tower_and_crops(tiny_model, tiny_processor, images):
    inputs = tiny_processor(images=[images["wide"]], text=["<image>"], return_tensors="pt")
    return tiny_model.model.vision_tower, inputs["pixel_values"][0]


def _eager_twin(tower):
    twin = copy.deepcopy(tower)
    twin.set_attn_implementation("eager")
    return twin


@pytest.mark.parametrize("layer", [0, 1, -1, -2])
def test_captured_cls_row_equals_the_eager_attention_weights_of_that_layer(tower_and_crops, layer):
    tower, crops = tower_and_crops
    assert tower.config._attn_implementation == "sdpa"
    with torch.no_grad():
        reference = _eager_twin(tower)(crops, output_attentions=True).attentions[layer]  # [crops, heads, seq, seq]
        with capture_tower_signals(tower.encoder.layers, None, SignalRequest(cls_attention_layers=(layer,))) as got:
            tower(crops)
    torch.testing.assert_close(got.cls_attention[layer], reference[:, :, 0, :].mean(dim=1), atol=1e-6, rtol=1e-5)


def test_captured_keys_equal_the_layer_key_projection_of_its_input_averaged_over_heads(tower_and_crops):
    tower, crops = tower_and_crops
    layer = tower.encoder.layers[1]
    with torch.no_grad():
        hidden = tower(crops, output_hidden_states=True).hidden_states[1]  # the input of layer 1
        keys = layer.self_attn.k_proj(layer.layer_norm1(hidden))
        heads = layer.self_attn.num_heads
        expected = keys.view(*keys.shape[:2], heads, -1).mean(dim=2)
        with capture_tower_signals(tower.encoder.layers, None, SignalRequest(key_layers=(-1,))) as got:
            tower(crops)
    torch.testing.assert_close(got.keys[-1], expected)


def test_the_tower_keeps_its_backend_and_its_output_and_the_hooks_are_removed(tower_and_crops, monkeypatch):
    tower, crops = tower_and_crops
    with torch.no_grad():
        plain = tower(crops, output_hidden_states=True)

    def hooks():  # transformers keeps output-capturing hooks of its own on some modules
        return {(name, key) for name, m in tower.named_modules() for key in (*m._forward_hooks, *m._forward_pre_hooks)}

    before = hooks()

    def refuse(*args, **kwargs):
        raise AssertionError("the probe must not switch the tower to eager attention")

    monkeypatch.setattr(modeling_clip, "eager_attention_forward", refuse)
    request = SignalRequest(cls_attention_layers=(0, -1), key_layers=(-2,))
    with torch.no_grad(), capture_tower_signals(tower.encoder.layers, None, request):
        probed = tower(crops, output_hidden_states=True)
    assert torch.equal(plain.last_hidden_state, probed.last_hidden_state)
    for a, b in zip(plain.hidden_states, probed.hidden_states):
        assert torch.equal(a, b)
    assert hooks() == before
    # Hooks go away when the block raises, too.
    with pytest.raises(RuntimeError, match="boom"), capture_tower_signals(tower.encoder.layers, None, request):
        raise RuntimeError("boom")
    assert hooks() == before


def test_an_out_of_range_layer_or_a_tower_without_cls_is_refused_with_the_reason(tower_and_crops):
    tower, _ = tower_and_crops
    layers = tower.encoder.layers
    with pytest.raises(ValueError, match="not a layer of the vision tower, which has 2"):
        capture_tower_signals(layers, None, SignalRequest(cls_attention_layers=(5,))).__enter__()
    with pytest.raises(ValueError, match=r"has no \[CLS\] token \(e.g. SigLIP\).*'divprune'"):
        capture_tower_signals(layers, None, SignalRequest(cls_attention_layers=(0,)), cls_token=False).__enter__()


def test_concurrent_captures_on_one_tower_each_get_their_own_passes(tower_and_crops):
    """A server encodes two requests at once on one model: each capture holds hooks on the same modules while both
    towers run, and must still see only its own thread's pass."""
    import threading

    tower, crops = tower_and_crops
    request = SignalRequest(cls_attention_layers=(-2,), key_layers=(-2,))
    batches = [crops[:2], crops[2:]]
    with torch.no_grad():
        alone = []
        for batch in batches:
            with capture_tower_signals(tower.encoder.layers, None, request) as got:
                tower(batch)
            alone.append(got)
    both_capturing = threading.Barrier(2, timeout=30)
    results, errors = [None, None], []

    def encode(index):
        try:
            with torch.no_grad(), capture_tower_signals(tower.encoder.layers, None, request) as got:
                both_capturing.wait()  # both sets of hooks are on the tower before either pass runs
                tower(batches[index])
                both_capturing.wait()  # and both stay on until both passes are over
            results[index] = got
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=encode, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    for got, reference in zip(results, alone):
        assert torch.equal(got.cls_attention[-2], reference.cls_attention[-2])
        assert torch.equal(got.keys[-2], reference.keys[-2])


def test_signal_requests_combine_into_one_pass_for_every_strategy():
    first = SignalRequest(cls_attention_layers=(-2,))
    second = SignalRequest(cls_attention_layers=(-2, 0), key_layers=(-2,), projector_inputs=True)
    assert first | second == SignalRequest(cls_attention_layers=(-2, 0), key_layers=(-2,), projector_inputs=True)
    assert not (SignalRequest() | SignalRequest())
