"""Every strategy against a deliberately naive version of its published rule, and the pruned model against the oracle.

The naive versions share nothing with the package but the stock model: signals come from an eager float64 copy of
the vision tower (`output_attentions`), the packed layout from the processor's own geometry (pure numpy), and the
rules are loops over Python lists.
"""

import copy
import math
from collections import defaultdict
from fractions import Fraction

import pytest
import torch
from conftest import textured
from test_modeling import GREEDY, batch, oracle_generate, stock_twin
from transformers.modeling_outputs import BaseModelOutputWithPooling

from llava_codebook.pruning_config import PRUNING_STRATEGIES, THRESHOLD_STRATEGIES
from llava_codebook.strategies import STRATEGIES, split_budget

PEERS = [name for name in PRUNING_STRATEGIES if name not in ("codebook", "none")]
PURE_SELECTION = [name for name in PEERS if not STRATEGIES[name].merges]


@pytest.fixture
def noisy():
    """Images without flat regions (no two tokens alike, so no ties), of three different AnyRes grids."""
    return [textured(90, 150, seed=1, flat_share=0.0), textured(130, 70, seed=2, flat_share=0.0)] + [
        textured(100, 100, seed=3, flat_share=0.0)
    ]


def budget(settings):
    return dict(pruning_mode="budget", **settings)


# ------------------------------------------------------------------------------------------------ naive references
class Naive:
    """What a reader of the papers would compute by hand, per image, in float64."""

    def __init__(self, model, processor, inputs):
        self.config = model.config
        tower = copy.deepcopy(model.model.vision_tower).double()
        tower.set_attn_implementation("eager")
        self.layers = tower.encoder.layers
        self.projector = copy.deepcopy(model.model.multi_modal_projector).double()
        sizes = inputs["image_sizes"].tolist()
        self.geometries = processor.token_geometry(sizes)
        with torch.no_grad():
            stock = stock_twin(model)
            packed = stock.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"], return_dict=True)
        self.features = [f.double() for f in packed.pooler_output]
        self.images = []
        for i, geometry in enumerate(self.geometries):
            crops = inputs["pixel_values"][i, : geometry.layout.num_crops].double()
            with torch.no_grad():
                out = tower(crops, output_attentions=True, output_hidden_states=True)
            side = geometry.layout.tokens_per_side
            where = []  # per packed token: (crop, position in the tower sequence), None for a newline
            for t in range(len(geometry)):
                if geometry.view[t] < 0:
                    where.append(None)
                    continue
                row, col = int(geometry.row[t]), int(geometry.col[t])
                if geometry.view[t] == 1:  # tile rows / cols count on the unpadded grid
                    row = (row + geometry.layout.unpad[0]) % side
                    col = (col + geometry.layout.unpad[1]) % side
                where.append((int(geometry.crop[t]), 1 + row * side + col))
            self.images.append(dict(out=out, where=where, geometry=geometry))

    def tokens(self, i):
        return [t for t, w in enumerate(self.images[i]["where"]) if w is not None]

    def newlines(self, i):
        return [t for t, w in enumerate(self.images[i]["where"]) if w is None]

    def crops(self, i):
        by_crop = defaultdict(list)
        for t in self.tokens(i):
            by_crop[self.images[i]["where"][t][0]].append(t)
        return [by_crop[c] for c in sorted(by_crop)]

    def cls_row(self, i, layer, reduce):
        attention = self.images[i]["out"].attentions[layer]
        row = {}
        for t in self.tokens(i):
            crop, position = self.images[i]["where"][t]
            heads = [float(attention[crop, h, 0, position]) for h in range(attention.shape[1])]
            row[t] = sum(heads) / (len(heads) if reduce == "mean" else 1)
        return row

    def keys(self, i, layer):
        index = layer % len(self.layers)
        module = self.layers[index]
        hidden = self.images[i]["out"].hidden_states[index]  # the input of that layer
        with torch.no_grad():
            keys = module.self_attn.k_proj(module.layer_norm1(hidden))
        heads = module.self_attn.num_heads
        keys = keys.view(*keys.shape[:2], heads, -1)
        return {t: keys[crop, position].mean(dim=0) for t, (crop, position) in self._real(i)}

    def projector_inputs(self, i):
        hidden = self.images[i]["out"].hidden_states[self.config.vision_feature_layer]
        return {t: hidden[crop, position] for t, (crop, position) in self._real(i)}

    def _real(self, i):
        return [(t, w) for t, w in enumerate(self.images[i]["where"]) if w is not None]


def naive_budget(n, keep_tokens, minimum=1):
    return min(max(keep_tokens, minimum), n)


def round_robin(total, caps):
    """One token at a time to each crop that still has room, base view first."""
    shares = [0] * len(caps)
    while total > 0:
        for c in range(len(caps)):
            if total > 0 and shares[c] < caps[c]:
                shares[c] += 1
                total -= 1
    return shares


def proportional(total, caps, weights):
    """Exact quotas as fractions; floors, then the largest fractional parts (earlier on ties); caps then re-split."""
    shares, fixed = [0] * len(caps), set()
    while True:
        open_parts = [c for c in range(len(caps)) if c not in fixed]
        left = total - sum(shares[c] for c in fixed)
        weight = sum(weights[c] for c in open_parts) or None
        quota = {c: Fraction(left * (weights[c] if weight else 1), weight or len(open_parts)) for c in open_parts}
        trial = {c: math.floor(q) for c, q in quota.items()}
        for c in sorted(open_parts, key=lambda c: (-(quota[c] - trial[c]), c))[: left - sum(trial.values())]:
            trial[c] += 1
        over = [c for c in open_parts if trial[c] > caps[c]]
        if not over:
            return [shares[c] if c in fixed else trial[c] for c in range(len(caps))]
        for c in over:
            shares[c] = caps[c]
            fixed.add(c)


def best(tokens, score, k):
    return sorted(tokens, key=lambda t: (-score[t], t))[:k]


def cosine(a, b):
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def naive_mmdp(features, tokens, k):
    distance = {(a, b): 1.0 - cosine(features[a], features[b]) for a in tokens for b in tokens}
    chosen = []
    for _ in range(min(k, len(tokens))):
        if not chosen:
            score = {j: sorted(distance[i, j] for i in tokens)[1] for j in tokens}
        else:
            score = {j: min(distance[s, j] for s in chosen) for j in tokens if j not in chosen}
        chosen.append(max(score, key=lambda j: (score[j], -j)))
    return chosen


def naive_fastervlm(naive, i, keep_tokens, layer=-2):
    attention = naive.cls_row(i, layer, "mean")
    crops = naive.crops(i)
    shares = round_robin(naive_budget(len(naive.tokens(i)), keep_tokens), [len(c) for c in crops])
    return sorted(sum((best(c, attention, s) for c, s in zip(crops, shares)), []) + naive.newlines(i))


def naive_hired(naive, i, keep_tokens, late_layer=-2, early_layer=0, alpha=0.5):
    late, early = naive.cls_row(i, late_layer, "sum"), naive.cls_row(i, early_layer, "sum")
    crops = naive.crops(i)
    base, tiles = crops[0], crops[1:]
    total = naive_budget(len(naive.tokens(i)), keep_tokens)
    base_share = min(math.floor(total * alpha), len(base))
    tile_budget = min(total - base_share, sum(len(t) for t in tiles))
    base_share = total - tile_budget
    geometry = naive.images[i]["geometry"]
    side, (rows, cols) = geometry.layout.tokens_per_side, geometry.layout.tile_grid
    weights = [0] * (rows * cols)
    for t in best(base, early, math.floor(len(base) * (1 - alpha))):
        weights[int(geometry.row[t]) * rows // side * cols + int(geometry.col[t]) * cols // side] += 1
    tile_ids = [naive.images[i]["where"][t[0]][0] - 1 for t in tiles]
    shares = proportional(tile_budget, [len(t) for t in tiles], [weights[c] for c in tile_ids])
    kept = best(base, late, base_share) + sum((best(t, late, s) for t, s in zip(tiles, shares)), [])
    return sorted(kept + naive.newlines(i))


def naive_visionzip(naive, i, keep_tokens, ratio, layer=-2):
    """Kept indices, and the features each contextual target carries (projected in float64)."""
    attention = naive.cls_row(i, layer, "sum")
    keys, inputs = naive.keys(i, layer), naive.projector_inputs(i)
    crops = naive.crops(i)
    shares = round_robin(naive_budget(len(naive.tokens(i)), keep_tokens), [len(c) for c in crops])
    kept, merged = [], {}
    for crop, share in zip(crops, shares):
        dominant_count = min(share, math.floor(Fraction(share) * Fraction(ratio) + Fraction(1, 2)))
        dominant = best(crop, attention, dominant_count)
        kept += dominant
        contextual = share - dominant_count
        if not contextual:
            continue
        rest = [t for t in crop if t not in dominant]
        step = max(1, len(rest) // contextual)
        targets = [rest[j] for j in range(0, len(rest), step)][:contextual]
        absorbed = {t: [] for t in targets}
        for other in rest:
            if other in targets:
                continue
            similarity = [cosine(keys[other], keys[t]) for t in targets]
            absorbed[targets[similarity.index(max(similarity))]].append(other)
        for t in targets:
            extra = sum(inputs[o] for o in absorbed[t]) / len(absorbed[t]) if absorbed[t] else 0
            with torch.no_grad():
                merged[t] = naive.projector(inputs[t] + extra)
        kept += targets
    return sorted(kept + naive.newlines(i)), merged


def naive_codebook_diverse(naive, i, keep_tokens, prototypes, threshold):
    features = naive.features[i]
    tokens = naive.tokens(i)
    score = {t: max(cosine(features[t], p) for p in prototypes.double()) for t in tokens}
    fresh = [t for t in tokens if score[t] < threshold]
    total = naive_budget(len(tokens), keep_tokens)
    if len(fresh) > total:
        kept = naive_mmdp(features, fresh, total)
    else:
        kept = (
            fresh + sorted((t for t in tokens if t not in fresh), key=lambda t: (score[t], t))[: max(1 - len(fresh), 0)]
        )
    return sorted(kept + naive.newlines(i))


# ------------------------------------------------------------------------------------------- strategies vs naive
def _selection(model, inputs, **settings):
    return model(**inputs, **budget(settings)).visual_token_selection


@pytest.mark.parametrize("keep_tokens", [3, 7, 20, 60])
def test_cls_attention_keeps_each_crops_top_tokens_by_cls_attention_as_fastervlm(
    tiny_model, tiny_processor, noisy, keep_tokens
):
    inputs = batch(tiny_processor, ["<image> a", "<image> b", "<image> c"], noisy)
    selection = _selection(tiny_model, inputs, pruning_strategy="cls_attention", keep_tokens=keep_tokens)
    naive = Naive(tiny_model, tiny_processor, inputs)
    for i, kept in enumerate(selection.kept_indices):
        assert kept.tolist() == naive_fastervlm(naive, i, keep_tokens)
        # The reported score is the [CLS] attention itself (mean over heads), NaN at newlines.
        expected = naive.cls_row(i, -2, "mean")
        got = selection.scores[i]
        assert torch.isnan(got).tolist() == [t not in expected for t in range(got.shape[0])]
        for t, value in expected.items():
            assert abs(float(got[t]) - value) < 1e-6


@pytest.mark.parametrize("layers", [dict(), dict(cls_attention_layer=-1, hired_budget_layer=0)])
@pytest.mark.parametrize("keep_tokens", [4, 11, 30])
def test_hired_splits_the_budget_by_early_attention_and_keeps_late_attention_top_tokens(
    tiny_model, tiny_processor, noisy, keep_tokens, layers
):
    inputs = batch(tiny_processor, ["<image> a", "<image> b", "<image> c"], noisy)
    selection = _selection(tiny_model, inputs, pruning_strategy="hired", keep_tokens=keep_tokens, **layers)
    naive = Naive(tiny_model, tiny_processor, inputs)
    late, early = layers.get("cls_attention_layer", -2), layers.get("hired_budget_layer", 0)
    for i, kept in enumerate(selection.kept_indices):
        assert kept.tolist() == naive_hired(naive, i, keep_tokens, late, early)


@pytest.mark.parametrize("keep_tokens, ratio", [(9, 0.5), (24, 0.84375), (24, 0.5), (40, 0.84375)])
def test_visionzip_keeps_dominant_tokens_and_merges_the_rest_into_contextual_ones(
    tiny_model, tiny_processor, noisy, keep_tokens, ratio
):
    inputs = batch(tiny_processor, ["<image> a", "<image> b", "<image> c"], noisy)
    settings = dict(pruning_strategy="visionzip", keep_tokens=keep_tokens, visionzip_dominant_ratio=ratio)
    selection = _selection(tiny_model, inputs, **settings)
    naive = Naive(tiny_model, tiny_processor, inputs)
    merged_any = False
    for i, (kept, features) in enumerate(zip(selection.kept_indices, selection.merged_features)):
        expected, merged = naive_visionzip(naive, i, keep_tokens, ratio)
        assert kept.tolist() == expected
        for row, t in enumerate(kept.tolist()):
            want = merged[t] if t in merged else naive.features[i][t]
            torch.testing.assert_close(features[row].double(), want, atol=1e-5, rtol=1e-4)
        merged_any |= any(not torch.allclose(merged[t], naive.features[i][t]) for t in merged)
    assert merged_any, "the case must merge some tokens"


@pytest.mark.parametrize("keep_tokens", [1, 6, 25])
def test_divprune_keeps_the_greedy_max_min_diverse_tokens(tiny_model, tiny_processor, noisy, keep_tokens):
    inputs = batch(tiny_processor, ["<image> a", "<image> b", "<image> c"], noisy)
    selection = _selection(tiny_model, inputs, pruning_strategy="divprune", keep_tokens=keep_tokens)
    naive = Naive(tiny_model, tiny_processor, inputs)
    for i, kept in enumerate(selection.kept_indices):
        chosen = naive_mmdp(naive.features[i], naive.tokens(i), keep_tokens)
        assert kept.tolist() == sorted(chosen + naive.newlines(i))


@pytest.mark.parametrize("keep_tokens", [4, 40])
def test_codebook_diverse_never_keeps_a_redundant_token_beyond_the_minimum_and_is_diverse_among_the_rest(
    tiny_model, tiny_processor, images, keep_tokens
):
    inputs = batch(tiny_processor, ["<image> a", "<image> b", "<image> c"], list(images.values()))
    # A threshold in the middle of a gap between scores, so float rounding cannot move a token across it.
    scores = torch.cat(tiny_model(**inputs).visual_token_selection.scores)
    ordered = scores[~scores.isnan()].sort().values
    middle = ordered[ordered.numel() // 4 : 3 * ordered.numel() // 4]
    gap = int((middle[1:] - middle[:-1]).argmax())
    threshold = float(middle[gap] + middle[gap + 1]) / 2
    settings = dict(pruning_strategy="codebook_diverse", keep_tokens=keep_tokens, codebook_threshold=threshold)
    selection = _selection(tiny_model, inputs, **settings)
    naive = Naive(tiny_model, tiny_processor, inputs)
    for i, kept in enumerate(selection.kept_indices):
        expected = naive_codebook_diverse(naive, i, keep_tokens, tiny_model.codebook.prototypes, threshold)
        assert kept.tolist() == expected
    content = [int((~n[k]).sum()) for k, n in zip(selection.kept_indices, selection.newline_mask)]
    assert max(content) <= keep_tokens and (keep_tokens == 4) == (max(content) == keep_tokens)


def test_random_and_uniform_are_seeded_sized_and_independent_of_the_batch(tiny_model, tiny_processor, noisy):
    together = batch(tiny_processor, ["<image> a", "<image> b"], noisy[:2])
    alone = batch(tiny_processor, ["<image> b"], noisy[1:2])
    for name in ("random", "uniform"):
        first = _selection(tiny_model, together, pruning_strategy=name, keep_tokens=9, pruning_seed=3)
        again = _selection(tiny_model, together, pruning_strategy=name, keep_tokens=9, pruning_seed=3)
        single = _selection(tiny_model, alone, pruning_strategy=name, keep_tokens=9, pruning_seed=3)
        other = _selection(tiny_model, together, pruning_strategy=name, keep_tokens=9, pruning_seed=4)
        assert [k.tolist() for k in first.kept_indices] == [k.tolist() for k in again.kept_indices]
        assert first.kept_indices[1].tolist() == single.kept_indices[0].tolist()
        assert [k.tolist() for k in first.kept_indices] != [k.tolist() for k in other.kept_indices]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_uniform_is_an_evenly_strided_grid_with_a_seeded_offset(tiny_model, tiny_processor, noisy, seed):
    inputs = batch(tiny_processor, ["<image> a", "<image> b", "<image> c"], noisy)
    selection = _selection(tiny_model, inputs, pruning_strategy="uniform", keep_tokens=7, pruning_seed=seed)
    phase = Fraction(float(torch.rand((), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)))
    for kept, newline in zip(selection.kept_indices, selection.newline_mask):
        tokens = [t for t in range(newline.shape[0]) if not newline[t]]
        n = len(tokens)
        expected = [tokens[math.floor((j + phase) * n / 7)] for j in range(7)]
        assert kept.tolist() == sorted(expected + newline.nonzero().squeeze(-1).tolist())


# ---------------------------------------------------------------------------------------------- shared semantics
@pytest.mark.parametrize("name", PEERS + ["codebook"])
def test_every_strategy_speaks_the_same_budget_vocabulary(tiny_model, tiny_processor, images, name):
    inputs = batch(tiny_processor, ["<image> a <image> b", "c <image>"], list(images.values()))
    extra = dict(codebook_threshold=0.99) if name == "codebook_diverse" else {}
    for settings, expected in (
        (dict(keep_tokens=5), lambda n: 5),
        (dict(keep_ratio=0.3), lambda n: round(0.3 * n)),
        (dict(keep_ratio=0.01, min_visual_tokens=3), lambda n: 3),
        (dict(keep_tokens=10_000), lambda n: n),
    ):
        selection = _selection(tiny_model, inputs, pruning_strategy=name, **settings, **extra)
        assert selection.strategy == name
        for kept, newline in zip(selection.kept_indices, selection.newline_mask):
            assert kept.tolist() == sorted(set(kept.tolist())), "ascending, no repeats"
            assert int(newline[kept].sum()) == int(newline.sum()), "newlines kept by default"
            content = int((~newline[kept]).sum())
            want = expected(int((~newline).sum()))
            assert content == want or (name == "codebook_diverse" and 3 <= content <= want)
    dropped = _selection(
        tiny_model, inputs, pruning_strategy=name, keep_tokens=4, always_keep_newline=False, min_visual_tokens=0
    )
    for kept, newline in zip(dropped.kept_indices, dropped.newline_mask):
        assert (name == "codebook" or not newline[kept].any()) and int((~newline[kept]).sum()) <= 4


def test_threshold_mode_belongs_to_the_codebook_and_a_peer_in_it_is_refused_at_settings_time(
    tiny_model, tiny_processor, images
):
    from llava_codebook import LlavaNextCodebookConfig

    assert set(THRESHOLD_STRATEGIES) == {n for n, s in STRATEGIES.items() if "threshold" in s.modes}
    inputs = batch(tiny_processor, ["<image> a"], [images["wide"]])
    with pytest.raises(ValueError, match=r"'divprune' has no threshold mode.*pruning_mode='budget'"):
        tiny_model.generate(**inputs, pruning_strategy="divprune", **GREEDY)
    with pytest.raises(ValueError, match="'hired' has no threshold mode"):
        LlavaNextCodebookConfig(pruning_strategy="hired")
    with pytest.raises(ValueError, match="'divprune' has no threshold mode"):  # asked for explicitly: refused
        tiny_model.generate(**inputs, pruning_strategy="divprune", pruning_mode="threshold", keep_tokens=4, **GREEDY)
    # A budget given in the call means budget mode, on a config in threshold mode too.
    out = tiny_model.generate(
        **inputs, pruning_strategy="divprune", keep_tokens=4, return_dict_in_generate=True, **GREEDY
    )
    assert out.visual_token_selection.strategy == "divprune"
    assert (out.visual_token_selection.num_kept - out.visual_token_selection.newline_mask[0].sum()).tolist() == [4]
    assert tiny_model.config.pruning_mode == "threshold"
    tiny_model.config.pruning_mode = "budget"
    out = tiny_model.generate(
        **inputs, pruning_strategy="divprune", keep_tokens=4, return_dict_in_generate=True, **GREEDY
    )
    assert out.visual_token_selection.strategy == "divprune"
    assert tiny_model.config.pruning_strategy == "codebook", "a per-call override leaves the config alone"


def test_signal_strategies_need_the_tower_pass_and_a_cls_token(tiny_model, tiny_processor, images, monkeypatch):
    inputs = batch(tiny_processor, ["<image> a"], [images["wide"]])
    with torch.no_grad():
        packed = tiny_model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output
    settings = tiny_model.pruning_settings(pruning_strategy="cls_attention", pruning_mode="budget", keep_tokens=3)
    with pytest.raises(
        ValueError,
        match=r"needs the vision tower's cls attention of layer -2 for each image's tokens.*select_visual_tokens",
    ):
        tiny_model.select_visual_tokens(packed, inputs["image_sizes"], settings)
    settings = tiny_model.pruning_settings(pruning_strategy="divprune", pruning_mode="budget", keep_tokens=3)
    assert tiny_model.select_visual_tokens(packed, inputs["image_sizes"], settings).num_kept.tolist()
    monkeypatch.setattr(tiny_model.model, "vision_tower_has_cls_token", lambda: False)
    for name in ("cls_attention", "visionzip", "hired"):
        with pytest.raises(ValueError, match=r"no \[CLS\] token"):
            tiny_model(**inputs, **budget(dict(pruning_strategy=name, keep_tokens=3)))
    # Rules that read no tower signal run on a tower without [CLS] (SigLIP) as they do on CLIP.
    assert tiny_model(**inputs, **budget(dict(pruning_strategy="divprune", keep_tokens=3))).visual_token_selection
    monkeypatch.undo()
    with pytest.raises(ValueError, match="not a layer of the vision tower"):
        tiny_model(**inputs, **budget(dict(pruning_strategy="hired", keep_tokens=3)), hired_budget_layer=2)


def test_split_budget_is_exact_even_capped_and_proportional():
    assert split_budget(7, [10, 10, 10]) == [3, 2, 2]
    assert split_budget(12, [3, 10, 10]) == [3, 5, 4]
    assert split_budget(100, [3, 4, 5]) == [3, 4, 5]
    assert split_budget(10, [10, 10, 10], [1, 0, 3]) == [3, 0, 7]
    assert split_budget(10, [10, 2, 10], [0, 5, 5]) == [0, 2, 8]
    assert split_budget(5, [4, 4], [0, 0]) == [3, 2]
    for total in range(40):
        for caps, weights in (([5, 9, 2, 7], [3, 1, 0, 2]), ([1, 1, 30], None), ([6, 6, 6, 6, 6], [1, 2, 3, 4, 5])):
            shares = split_budget(total, caps, weights)
            assert sum(shares) == min(total, sum(caps)) and all(0 <= s <= c for s, c in zip(shares, caps))
            assert shares == proportional(min(total, sum(caps)), caps, weights or [1] * len(caps))


# ------------------------------------------------------------------------------------------------- model vs oracle
CASES = {
    "batch_of_two_left_padded_different_grids": (
        ["<image>\nwhat does this image show?", "describe the <image> picture"],
        ["wide", "tall"],
    ),
    "two_images_in_one_prompt_and_a_sample_without_image": (
        ["<image> left <image> right ?", "what is the sky colour ?", "<image> where is the cat ?"],
        ["wide", "square", "tall"],
    ),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", PURE_SELECTION)
def test_pruned_generate_matches_stock_model_with_dropped_placeholders_masked(
    tiny_model, tiny_processor, images, name, case
):
    texts, names = CASES[case]
    inputs = batch(tiny_processor, texts, [images[n] for n in names])
    settings = budget(dict(pruning_strategy=name, keep_tokens=5, pruning_seed=1))
    out = tiny_model.generate(**inputs, **settings, **GREEDY, return_dict_in_generate=True)
    selection = out.visual_token_selection
    assert (selection.num_kept < selection.num_total).all(), "the case must actually prune every image"
    assert selection.merged_features is None
    expected = oracle_generate(stock_twin(tiny_model), inputs, selection, tiny_model, **GREEDY)
    assert torch.equal(out.sequences, expected)


@pytest.mark.parametrize("case", CASES)
def test_visionzip_generate_matches_stock_model_fed_the_merged_features(tiny_model, tiny_processor, images, case):
    """The stock model on the full prompt, dropped placeholders masked, and each kept placeholder filled with the
    feature VisionZip handed over (merged for contextual tokens)."""
    texts, names = CASES[case]
    inputs = batch(tiny_processor, texts, [images[n] for n in names])
    settings = budget(dict(pruning_strategy="visionzip", keep_tokens=12, visionzip_dominant_ratio=0.5))
    out = tiny_model.generate(**inputs, **settings, **GREEDY, return_dict_in_generate=True)
    selection = out.visual_token_selection
    stock = stock_twin(tiny_model)
    with torch.no_grad():
        packed = stock.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output
    filled = []
    for features, kept, merged in zip(packed, selection.kept_indices, selection.merged_features):
        features = features.clone()
        features[kept] = merged
        filled.append(features)
    assert any(not torch.equal(f, p) for f, p in zip(filled, packed)), "the case must merge some tokens"
    mask = inputs["attention_mask"].clone()
    mask[inputs["input_ids"] == tiny_model.config.image_token_id] = torch.cat(selection.keep_masks()).long()
    expected = stock.generate(
        input_ids=inputs["input_ids"],
        attention_mask=mask,
        mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=filled)},
        **GREEDY,
    )
    assert torch.equal(out.sequences, expected)


def test_codebook_diverse_fills_up_to_the_minimum_with_the_least_redundant_tokens(tiny_model, tiny_processor, images):
    inputs = batch(tiny_processor, ["<image> a", "<image> b"], [images["wide"], images["tall"]])
    settings = dict(pruning_strategy="codebook_diverse", keep_tokens=8, codebook_threshold=-1.0, min_visual_tokens=2)
    selection = _selection(tiny_model, inputs, **settings)
    for kept, newline, scores in zip(selection.kept_indices, selection.newline_mask, selection.scores):
        content = [t for t in kept.tolist() if not newline[t]]
        ranked = sorted((t for t in range(newline.shape[0]) if not newline[t]), key=lambda t: (float(scores[t]), t))
        assert content == sorted(ranked[:2])
