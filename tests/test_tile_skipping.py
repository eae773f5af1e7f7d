"""Codebook-guided tile skipping (`tile_skipping=True`) on every family with AnyRes tiles, against the stock classes.

Each family is loaded from a checkpoint shaped like its llava-hf Hub repo, in float32, with its stock processor. The
codebook is every packed token of flat white images of the test images' sizes (encoded by the stock model), and the
test images are noise on their left part and flat white on the right: the tiles over the white part are redundant
in the base view and get skipped, the others are encoded. The oracle is the stock class on the full prompt with the
placeholders of skipped and dropped tokens masked out.
"""

from fractions import Fraction

import numpy as np
import pytest
import torch
from hub_fixtures import build_stock_checkpoints, build_stock_processor, stock_class
from PIL import Image

from llava_codebook import RedundancyCodebook, load_pruned_model
from llava_codebook.tile_skipping import anyres_tiles, tiles_to_skip

TILED = ["mistral-7b", "llava-onevision-qwen2-7b-ov", "llava-next-video-7b"]
GREEDY = dict(max_new_tokens=5, do_sample=False)
# Per family, a threshold at which the white half's base-view tokens are redundant and the noisy half's are not.
SKIP = {
    "mistral-7b": dict(codebook_threshold=0.9, tile_skip_share=0.9),
    "llava-onevision-qwen2-7b-ov": dict(codebook_threshold=0.9, tile_skip_share=0.9),
    "llava-next-video-7b": dict(codebook_threshold=0.9, tile_skip_share=0.9),
}
# Image sizes (height, width): a wide and a tall image, and for OneVision one large enough (a 4 x 3 tile grid) for
# the stock packer to shrink its grid bilinearly (anyres_max_9), so packed tokens mix neighbouring tiles.
SIZES = {
    "mistral-7b": [(90, 150), (130, 70)],
    "llava-onevision-qwen2-7b-ov": [(90, 150), (280, 210)],
    "llava-next-video-7b": [(90, 150), (130, 70)],
}


def half_flat(height: int, width: int, seed: int, flat: str = "right") -> Image.Image:
    """Noise, with its right (or bottom) half flat white."""
    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 3), 255, dtype=np.uint8)
    if flat == "right":
        pixels[:, : width // 2] = rng.integers(0, 256, (height, width // 2, 3), dtype=np.uint8)
    else:
        pixels[: height // 2] = rng.integers(0, 256, (height // 2, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def clip(frames: int, seed: int) -> list[Image.Image]:
    return [half_flat(60, 80, seed + i) for i in range(frames)]


def prompt(processor, *kinds: str, text: str = "what is this ?") -> str:
    content = [{"type": kind} for kind in kinds] + [{"type": "text", "text": text}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def cases(name: str, processor) -> dict:
    """Left-padded batches with a text-only row. The first image's right half is flat (a tile column is skipped,
    rows keep their newlines), the second's bottom half (whole tile rows are skipped, with their newlines). OneVision
    images are alone in their prompts, so OneVision tiles them."""
    (h1, w1), (h2, w2) = SIZES[name]
    first, second = half_flat(h1, w1, 0, "right"), half_flat(h2, w2, 1, "bottom")
    if name == "llava-onevision-qwen2-7b-ov":
        return {
            "two_images_and_a_text_only_row": dict(
                text=[prompt(processor, "image"), prompt(processor), prompt(processor, "image", text="where ?")],
                images=[[first], [second]],
            ),
            "an_image_and_a_video": dict(
                text=[prompt(processor, "image", "video"), prompt(processor)], images=[first], videos=[clip(2, 20)]
            ),
        }
    batches = {
        "two_images_in_one_prompt_and_a_text_only_row": dict(
            text=[prompt(processor, "image", "image"), prompt(processor)], images=[first, second]
        ),
    }
    if name == "llava-next-video-7b":
        batches["an_image_and_a_video"] = dict(
            text=[prompt(processor, "image", "video"), prompt(processor)], images=[second], videos=[clip(2, 20)]
        )
    return batches


def encode(processor, case) -> dict:
    processor.tokenizer.padding_side = "left"
    return dict(processor(**case, padding=True, return_tensors="pt"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return build_stock_checkpoints(tmp_path_factory.mktemp("tiled"), families=[*TILED, "llava-1.5-7b"])


@pytest.fixture(scope="module")
def families(checkpoints):
    """family -> (pruning model with the flat-white codebook, stock model, stock processor), float32."""
    out = {}
    for name in TILED:
        model = load_pruned_model(checkpoints[name], dtype=torch.float32).eval()
        stock = stock_class(name).from_pretrained(checkpoints[name], dtype=torch.float32).eval()
        processor = build_stock_processor(name)
        white = [Image.new("RGB", (w, h), (255, 255, 255)) for h, w in SIZES[name]]
        pixels = processor.image_processor(images=white, return_tensors="pt")
        with torch.no_grad():
            packed = stock.model.get_image_features(
                pixels["pixel_values"], pixels["image_sizes"], return_dict=True
            ).pooler_output
        model.load_codebook(RedundancyCodebook(torch.cat(list(packed)).detach().clone()))
        out[name] = (model, stock, processor)
    return out


def placeholder_keep_mask(model, inputs, selection) -> torch.Tensor:
    """The attention mask with the placeholders of every token that did not reach the language model zeroed."""
    mask = inputs["attention_mask"].clone()
    keep = selection.keep_masks()
    for modality in ("image", "video"):
        own = [m for m, kind in zip(keep, selection.modalities) if kind == modality]
        if own:
            mask[inputs["input_ids"] == getattr(model.config, f"{modality}_token_id")] = torch.cat(own).long()
    return mask


def tower_inputs(model):
    """Record the pixel batch of every vision-tower call; returns (list, hook handle)."""
    calls = []
    handle = model.model.vision_tower.register_forward_hook(lambda module, args, output: calls.append(args[0]))
    return calls, handle


def image_segments(selection):
    return [i for i, kind in enumerate(selection.modalities) if kind == "image"]


# ------------------------------------------------------------------ the oracle
@pytest.mark.parametrize("name", TILED)
@pytest.mark.parametrize("setting", ["threshold", "budget"])
@pytest.mark.filterwarnings("ignore:tile_skipping applies to AnyRes image tiles")
def test_skipping_generate_matches_the_stock_class_with_skipped_and_dropped_placeholders_masked(
    families, name, setting
):
    model, stock, processor = families[name]
    mode = {} if setting == "threshold" else dict(pruning_mode="budget", keep_ratio=0.3)
    for case_name, case in cases(name, processor).items():
        inputs = encode(processor, case)
        assert not inputs["attention_mask"][:, 0].all(), "the batch is left-padded"
        out = model.generate(**inputs, tile_skipping=True, **SKIP[name], **mode, **GREEDY, return_dict_in_generate=True)
        selection = out.visual_token_selection
        skipped = [selection.skipped_tiles[i] for i in image_segments(selection)]
        assert any(t.numel() for t in skipped), f"{case_name}: some tile must be skipped"
        assert (selection.num_kept < selection.num_total).all()
        mask = placeholder_keep_mask(model, inputs, selection)
        expected = stock.generate(**{**inputs, "attention_mask": mask}, **GREEDY)
        assert torch.equal(out.sequences, expected), case_name


@pytest.mark.filterwarnings("ignore:tile_skipping applies to AnyRes image tiles")
def test_skipping_beam_search_matches_the_oracle(families):
    model, stock, processor = families["llava-next-video-7b"]
    inputs = encode(processor, cases("llava-next-video-7b", processor)["an_image_and_a_video"])
    beams = dict(num_beams=3, num_return_sequences=2, **GREEDY)
    out = model.generate(
        **inputs, tile_skipping=True, **SKIP["llava-next-video-7b"], **beams, return_dict_in_generate=True
    )
    selection = out.visual_token_selection
    assert selection.skipped_tiles[0].numel() and out.sequences.shape[0] == 4
    mask = placeholder_keep_mask(model, inputs, selection)
    assert torch.equal(out.sequences, stock.generate(**{**inputs, "attention_mask": mask}, **beams))


@pytest.mark.parametrize("name", TILED)
def test_packed_features_are_the_stock_ones_wherever_no_skipped_tile_contributes(families, name):
    """Independent of the code under test: the tokens a skipped tile contributes to are those whose stock features
    change when that tile's pixels change. Every other image token is handed over with its stock features."""
    model, stock, processor = families[name]
    inputs = encode(processor, next(iter(cases(name, processor).values())))
    call = dict(inputs)
    with torch.no_grad():
        visual = model.model.encode_skipping_tiles(
            "image", call, model.pruning_settings(tile_skipping=True, **SKIP[name])
        )
        stock_packed = stock.model.get_image_features(
            inputs["pixel_values"], inputs["image_sizes"], return_dict=True, **_batch_num_images(inputs)
        ).pooler_output
        perturbed = inputs["pixel_values"].clone()
        for image, tiles in enumerate(visual.skipped_tiles):
            if tiles is not None and tiles.numel():
                perturbed[image, tiles] = torch.randn_like(perturbed[image, tiles])
        perturbed_packed = stock.model.get_image_features(
            perturbed, inputs["image_sizes"], return_dict=True, **_batch_num_images(inputs)
        ).pooler_output
    assert any(m.any() for m in visual.skipped)
    assert any((m & n).any() for m, n in zip(visual.skipped, visual.newline)), "a whole tile row is skipped"
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    for ours, theirs, moved, skipped, newline in zip(
        visual.packed, stock_packed, perturbed_packed, visual.skipped, visual.newline
    ):
        depends = (theirs != moved).any(dim=-1)
        assert torch.equal(skipped & ~newline, depends)
        torch.testing.assert_close(ours[~skipped], theirs[~skipped], atol=1e-5, rtol=1e-5)
        # A newline goes with its row exactly when skipping took every token of the row (the tokens since the
        # previous newline, the first row starting after the base view).
        previous = side * side - 1
        for position in newline.nonzero().squeeze(-1).tolist():
            row = range(previous + 1, position)
            assert bool(skipped[position]) == (len(row) > 0 and all(bool(depends[m]) for m in row))
            previous = position


def _batch_num_images(inputs) -> dict:
    return {"batch_num_images": inputs["batch_num_images"]} if "batch_num_images" in inputs else {}


# ------------------------------------------------------------------ what the vision tower runs on
@pytest.mark.parametrize("name", TILED)
def test_the_vision_tower_runs_on_exactly_the_crops_not_skipped_in_one_pass_after_the_base_views(families, name):
    model, _, processor = families[name]
    inputs = encode(processor, next(iter(cases(name, processor).values())))
    calls, handle = tower_inputs(model)
    try:
        out = model.generate(**inputs, tile_skipping=True, **SKIP[name], **GREEDY, return_dict_in_generate=True)
    finally:
        handle.remove()
    skipped = out.visual_token_selection.skipped_tiles
    pixels = inputs["pixel_values"]
    crops = [1 + n for n in _tiles_per_image(model, inputs)]
    bases = torch.stack([pixels[i, 0] for i in range(len(crops))])
    encoded_tiles = [
        pixels[i, t] for i, n in enumerate(crops) for t in range(1, n) if t not in set(skipped[i].tolist())
    ]
    assert sum(t.numel() for t in skipped) > 0
    assert len(calls) == 2, "one pass over the base views, one over every image's remaining tiles"
    assert torch.equal(calls[0], bases)
    assert torch.equal(calls[1], torch.stack(encoded_tiles))


def _tiles_per_image(model, inputs) -> list[int]:
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    return [
        image_size_to_num_patches(size, model.config.image_grid_pinpoints, model.config.vision_config.image_size) - 1
        for size in inputs["image_sizes"]
    ]


def test_when_every_tile_is_skipped_the_tower_runs_once_and_the_minimum_per_image_holds(families):
    """tile_skip_share=0 skips every tile (the base view alone, as the released LLaVA-NeXT evaluation); a threshold
    that marks every token redundant then leaves `min_visual_tokens` base-view tokens per image and no newline (every
    grid row is gone)."""
    model, stock, processor = families["mistral-7b"]
    inputs = encode(processor, next(iter(cases("mistral-7b", processor).values())))
    calls, handle = tower_inputs(model)
    try:
        out = model.generate(
            **inputs,
            tile_skipping=True,
            tile_skip_share=0.0,
            codebook_threshold=-1.0,
            min_visual_tokens=3,
            **GREEDY,
            return_dict_in_generate=True,
        )
    finally:
        handle.remove()
    selection = out.visual_token_selection
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    assert [c.shape[0] for c in calls] == [2]
    assert [t.tolist() for t in selection.skipped_tiles] == [
        list(range(1, n + 1)) for n in _tiles_per_image(model, inputs)
    ]
    for kept in selection.kept_indices:
        assert kept.numel() == 3 and int(kept.max()) < side * side
    mask = placeholder_keep_mask(model, inputs, selection)
    assert torch.equal(out.sequences, stock.generate(**{**inputs, "attention_mask": mask}, **GREEDY))


def test_a_budget_is_a_share_of_the_whole_image_and_moves_onto_the_tokens_left(families):
    model, _, processor = families["mistral-7b"]
    inputs = encode(processor, next(iter(cases("mistral-7b", processor).values())))
    for ratio in (0.2, 0.5, 0.9):
        out = model(**inputs, tile_skipping=True, **SKIP["mistral-7b"], pruning_mode="budget", keep_ratio=ratio)
        selection = out.visual_token_selection
        for kept, newline, tiles, scores in zip(
            selection.kept_indices, selection.newline_mask, selection.skipped_tiles, selection.scores
        ):
            assert tiles.numel() > 0
            # Skipped tokens are never scored (NaN); every token skipping left is.
            left = int((~newline & ~scores.isnan()).sum())
            visual = int((~newline[kept]).sum())
            assert visual == min(round(ratio * int((~newline).sum())), left)
            assert not scores[kept].isnan().any()


# ------------------------------------------------------------------ off means off
@pytest.mark.parametrize("name", TILED)
def test_with_skipping_off_nothing_changes_bit_for_bit(families, name):
    model, stock, processor = families[name]
    inputs = encode(processor, next(iter(cases(name, processor).values())))
    logits = dict(output_logits=True, return_dict_in_generate=True, **GREEDY)
    calls, handle = tower_inputs(model)
    try:
        default = model.generate(**inputs, codebook_threshold=0.9, **logits)
        explicit = model.generate(**inputs, codebook_threshold=0.9, tile_skipping=False, tile_skip_share=0.0, **logits)
        keep_all = model.generate(**inputs, pruning_mode="budget", keep_ratio=1.0, tile_skipping=False, **logits)
    finally:
        handle.remove()
    all_crops = sum(1 + n for n in _tiles_per_image(model, inputs))
    assert [c.shape[0] for c in calls] == [all_crops] * 3, "one tower pass over every crop, as stock"
    assert default.visual_token_selection.skipped_tiles is None
    assert torch.equal(default.sequences, explicit.sequences)
    assert all(torch.equal(a, b) for a, b in zip(default.logits, explicit.logits))
    expected = stock.generate(**inputs, **logits)
    assert torch.equal(keep_all.sequences, expected.sequences)
    assert all(torch.equal(a, b) for a, b in zip(keep_all.logits, expected.logits))


# ------------------------------------------------------------------ the geometry and the rule
def _real_processor(architecture: str):
    """The family's stock image processor at real geometry, with pixel values left as they are (no rescale, no
    normalisation) and nearest-neighbour resizing, so content and padding read exactly. "square_only" is LLaVA-NeXT
    with one 3 x 3 pinpoint, where a wide image leaves whole tiles of padding."""
    import transformers
    from hub_fixtures import LLAVA_V16_PINPOINTS, ONEVISION_PINPOINTS

    if architecture == "square_only":
        pinpoints = [[1008, 1008]]
        processor = transformers.LlavaNextImageProcessorPil(
            size={"shortest_edge": 336},
            crop_size={"height": 336, "width": 336},
            image_grid_pinpoints=pinpoints,
            do_rescale=False,
            do_normalize=False,
            resample=Image.NEAREST,
        )
        return processor, 336, pinpoints
    common = dict(do_rescale=False, do_normalize=False, resample=Image.NEAREST, do_pad=True)
    if architecture == "llava_onevision":
        pinpoints = [list(p) for p in ONEVISION_PINPOINTS]
        processor = transformers.LlavaOnevisionImageProcessorPil(
            size={"height": 384, "width": 384}, image_grid_pinpoints=pinpoints, **common
        )
        return processor, 384, pinpoints
    pinpoints = [list(p) for p in LLAVA_V16_PINPOINTS]
    processor = transformers.LlavaNextImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, image_grid_pinpoints=pinpoints, **common
    )
    return processor, 336, pinpoints


@pytest.mark.parametrize("architecture", ["llava_next", "llava_onevision", "square_only"])
@pytest.mark.parametrize("size", [(480, 640), (640, 480), (336, 336), (500, 501), (300, 1000), (1000, 300), (90, 2000)])
def test_tile_regions_follow_the_stock_image_processor_geometry(architecture, size):
    """The reference runs the stock image processor on a white image: the base view must be white throughout (the
    whole image, resized), and the white part of the tile canvas is where the image lies once padded; a base-view
    token is in a tile's region when its share of the image and the tile's overlap with positive area (exact
    fractions, a naive loop)."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    processor, crop, pinpoints = _real_processor(architecture)
    height, width = size
    crops = processor(images=Image.new("RGB", (width, height), (255, 255, 255)), return_tensors="np")
    crops = crops["pixel_values"][0][:, 0]  # [crops, H, W], one channel
    assert (crops[0] == 255).all(), "the base view is the whole image"
    rows, cols = (int(v) for v in get_anyres_image_grid_shape((height, width), pinpoints, crop))
    tiles = crops[1 : 1 + rows * cols]
    canvas = tiles.reshape(rows, cols, crop, crop).transpose(0, 2, 1, 3).reshape(rows * crop, cols * crop) == 255
    ys, xs = canvas.any(axis=1).nonzero()[0], canvas.any(axis=0).nonzero()[0]
    top, bottom, left, right = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    assert canvas[top:bottom, left:right].all() and canvas.sum() == (bottom - top) * (right - left)

    side = 24 if crop == 336 else 27
    expected = torch.zeros(rows * cols, side * side, dtype=torch.bool)
    for tile in range(rows * cols):
        r, c = divmod(tile, cols)
        y0, y1 = max(r * crop, top), min((r + 1) * crop, bottom)
        x0, x1 = max(c * crop, left), min((c + 1) * crop, right)
        if y0 >= y1 or x0 >= x1:
            continue  # padding only: an empty region
        span_y = (Fraction(y0 - top, bottom - top), Fraction(y1 - top, bottom - top))
        span_x = (Fraction(x0 - left, right - left), Fraction(x1 - left, right - left))
        for i in range(side):
            for j in range(side):
                cell_y, cell_x = (Fraction(i, side), Fraction(i + 1, side)), (Fraction(j, side), Fraction(j + 1, side))
                overlap_y = min(span_y[1], cell_y[1]) > max(span_y[0], cell_y[0])
                overlap_x = min(span_x[1], cell_x[1]) > max(span_x[0], cell_x[0])
                expected[tile, i * side + j] = overlap_y and overlap_x
    if architecture == "square_only" and size == (90, 2000):
        assert not expected[:3].any() and not expected[6:].any(), "the top and bottom tile rows are padding only"
    layout = anyres_tiles((height, width), pinpoints, crop)
    assert layout.grid == (rows, cols)
    assert torch.equal(layout.regions(side), expected)


def test_the_skip_rule_is_the_share_of_redundant_base_tokens_in_a_tiles_region():
    generator = torch.Generator().manual_seed(0)
    regions = torch.rand(6, 100, generator=generator) < 0.3
    regions[4] = False  # a tile of padding only
    regions[5] = False
    regions[5, :10] = True  # exactly ten tokens
    redundant = torch.rand(100, generator=generator) < 0.5
    redundant[:10] = torch.tensor([True] * 3 + [False] * 7)  # three of tile 5's ten: a share of exactly 0.3
    for share in (0.0, 0.3, 0.31, 0.5, 0.9, 1.0):
        expected = []
        for region in regions.tolist():
            members = [k for k, inside in enumerate(region) if inside]
            hits = sum(bool(redundant[k]) for k in members)
            expected.append(not members or Fraction(hits, len(members)) >= Fraction(str(share)))
        assert tiles_to_skip(redundant, regions, share).tolist() == expected, share


# ------------------------------------------------------------------ where there are no tiles, and bad settings
def test_llava_15_has_no_tiles_and_refuses_tile_skipping_in_its_config_and_per_call(checkpoints):
    from hub_fixtures import build_stock_processor as processor_of

    from llava_codebook import LlavaCodebookConfig

    with pytest.raises(ValueError, match="encodes each image as one view with no tiles: there is nothing to skip"):
        LlavaCodebookConfig(tile_skipping=True)
    with pytest.raises(ValueError, match="nothing to skip"):
        load_pruned_model(checkpoints["llava-1.5-7b"], dtype=torch.float32, tile_skipping=True)
    model = load_pruned_model(checkpoints["llava-1.5-7b"], dtype=torch.float32).eval()
    processor = processor_of("llava-1.5-7b")
    inputs = encode(processor, dict(text=[prompt(processor, "image")], images=[half_flat(90, 150, 0)]))
    model.load_codebook(RedundancyCodebook(torch.randn(4, model.config.text_config.hidden_size)))
    with pytest.raises(ValueError, match="LLaVA-NeXT, LLaVA-OneVision and LLaVA-NeXT-Video"):
        model.generate(**inputs, tile_skipping=True, **GREEDY)
    assert model.generate(**inputs, tile_skipping=False, **GREEDY).shape[0] == 1


@pytest.mark.parametrize("name", ["llava-onevision-qwen2-7b-ov", "llava-next-video-7b"])
def test_videos_have_no_tiles_are_pruned_as_usual_and_the_call_says_so(families, name):
    model, _, processor = families[name]
    inputs = encode(processor, dict(text=[prompt(processor, "video"), prompt(processor)], videos=[clip(3, 5)]))
    plain = model.generate(**inputs, codebook_threshold=0.9, **GREEDY, return_dict_in_generate=True)
    with pytest.warns(UserWarning, match="video inputs have none and are pruned as usual"):
        skipping = model.generate(
            **inputs, codebook_threshold=0.9, tile_skipping=True, **GREEDY, return_dict_in_generate=True
        )
    assert skipping.visual_token_selection.skipped_tiles == [None]
    assert torch.equal(skipping.sequences, plain.sequences)
    for a, b in zip(skipping.visual_token_selection.kept_indices, plain.visual_token_selection.kept_indices):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(tile_skipping=1), "tile_skipping=1 must be True or False"),
        (dict(tile_skipping=True, tile_skip_share=1.5), r"tile_skip_share=1.5 is outside \[0.0, 1.0\]"),
        (dict(tile_skip_share=float("nan")), r"outside \[0.0, 1.0\]: it is the share of a tile's region"),
        (
            dict(tile_skipping=True, pruning_strategy="cls_attention", pruning_mode="budget"),
            "tile_skipping=True cannot run with pruning_strategy='cls_attention'",
        ),
    ],
)
def test_bad_tile_skipping_settings_are_refused_in_the_config_and_per_call(overrides, message):
    from llava_codebook import LlavaNextCodebookConfig
    from llava_codebook.tiny import build_tiny_model

    with pytest.raises(Exception, match=f"{message}|expected"):
        LlavaNextCodebookConfig(**overrides)
    with pytest.raises(ValueError, match=message):
        build_tiny_model().pruning_settings(**overrides)


def test_tile_skipping_is_stored_in_the_config_and_round_trips(tmp_path):
    from llava_codebook import LlavaNextCodebookConfig

    config = LlavaNextCodebookConfig()
    assert (config.tile_skipping, config.tile_skip_share) == (False, 0.9)
    LlavaNextCodebookConfig(tile_skipping=True, tile_skip_share=1).save_pretrained(tmp_path)
    loaded = LlavaNextCodebookConfig.from_pretrained(tmp_path)
    assert (loaded.tile_skipping, loaded.tile_skip_share) == (True, 1.0)
    assert isinstance(loaded.tile_skip_share, float)


def test_tile_skipping_combines_with_exactly_the_strategies_that_read_features_alone():
    from llava_codebook.pruning_config import TILE_SKIPPING_STRATEGIES
    from llava_codebook.pruning_settings import PruningSettings
    from llava_codebook.strategies import STRATEGIES

    settings = PruningSettings()
    assert set(TILE_SKIPPING_STRATEGIES) == {n for n, s in STRATEGIES.items() if not s.signal_request(settings)}


@pytest.mark.parametrize("strategy", ["codebook_diverse", "divprune", "random", "uniform"])
def test_every_strategy_that_reads_features_alone_runs_with_skipping_against_the_oracle(families, strategy):
    model, stock, processor = families["mistral-7b"]
    inputs = encode(processor, next(iter(cases("mistral-7b", processor).values())))
    out = model.generate(
        **inputs,
        tile_skipping=True,
        **SKIP["mistral-7b"],
        pruning_strategy=strategy,
        pruning_mode="budget",
        keep_ratio=0.3,
        **GREEDY,
        return_dict_in_generate=True,
    )
    selection = out.visual_token_selection
    assert all(t.numel() for t in selection.skipped_tiles)
    mask = placeholder_keep_mask(model, inputs, selection)
    for kept, lost in zip(selection.kept_indices, _skipped_masks(model, inputs)):
        assert not lost[kept].any()
    assert torch.equal(out.sequences, stock.generate(**{**inputs, "attention_mask": mask}, **GREEDY))


def _skipped_masks(model, inputs):
    call = dict(inputs)
    with torch.no_grad():
        visual = model.model.encode_skipping_tiles(
            "image", call, model.pruning_settings(tile_skipping=True, **SKIP["mistral-7b"])
        )
    return visual.skipped


@pytest.mark.parametrize("tower", ["clip", "siglip"])
def test_vision_tower_flops_equal_what_torch_counts_on_a_real_tower_pass(tower):
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    from llava_codebook.flops import vision_tower_flops

    if tower == "clip":
        config = CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
        )
        model = CLIPVisionModel(config)
    else:
        config = SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=70,
            patch_size=14,
            vision_use_head=False,
        )
        model = SiglipVisionModel(config)
    config._attn_implementation = "eager"  # attention as matrix products, which the counter sees
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.randn(3, 3, config.image_size, config.image_size))
    assert vision_tower_flops(config, crops=3) == counter.get_total_flops()


@pytest.mark.parametrize("name", TILED)
def test_skipping_read_from_a_full_encoding_is_what_the_model_skips(families, name):
    """An app that caches full encodings (every crop) gets, from `skip_encoded_tiles`, the tiles and tokens the model
    itself skips, and selecting with them keeps what the model keeps."""
    model, _, processor = families[name]
    inputs = encode(processor, next(iter(cases(name, processor).values())))
    settings = model.pruning_settings(tile_skipping=True, **SKIP[name])
    with torch.no_grad():
        skipping = model.model.encode_skipping_tiles("image", dict(inputs), settings)
        full = model.model.encode_for_pruning("image", dict(inputs))
    layout = _batch_num_images(inputs)
    masks, tiles = model.model.skip_encoded_tiles(full.segments(), inputs["image_sizes"], settings, **layout)
    assert [t.tolist() for t in tiles] == [t.tolist() for t in skipping.skipped_tiles]
    assert all(torch.equal(a, b) for a, b in zip(masks, skipping.skipped))
    ours = model.model.select_segments(full.segments(), settings, masks, tiles)
    theirs = model(**inputs, tile_skipping=True, **SKIP[name]).visual_token_selection
    assert all(torch.equal(a, b) for a, b in zip(ours.kept_indices, theirs.kept_indices))
