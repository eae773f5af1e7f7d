"""The PIL video processor of the Qwen-VL families (`llava_codebook.processors`), held against the stock image
processor: a still video (every frame the same image) is what the stock Qwen image processor makes of that image,
which repeats it over the temporal patch; and `load_processor` on a replica gives the stock processor class."""

import pytest
import torch
from noise_images import picture
from qwen_fixtures import (
    QWEN_FAMILIES,
    _write_hub_processor_config,
    build_stock_processor,
    image_processor_kwargs,
    stock_config,
)
from transformers import Qwen2VLImageProcessorPil

from llava_codebook.processors import load_processor, qwen_frame_video_processor


@pytest.mark.parametrize("name", ["qwen2-vl-2b", "qwen3-vl-2b"])
@pytest.mark.parametrize("size", [(90, 130), (200, 61)])
def test_a_still_video_is_what_the_stock_image_processor_makes_of_its_frame(name, size):
    settings = image_processor_kwargs(name)
    video = qwen_frame_video_processor(settings, qwen3=name.startswith("qwen3"))
    frame = picture(*size, seed=size[0])
    out = video(videos=[[frame, frame]], return_tensors="pt")
    stock = Qwen2VLImageProcessorPil(**settings)(images=[frame], return_tensors="pt")
    assert torch.equal(out["video_grid_thw"], stock["image_grid_thw"])
    torch.testing.assert_close(out["pixel_values_videos"], stock["pixel_values"], atol=1e-6, rtol=0)


def test_frames_fill_temporal_patches_in_order_and_an_odd_count_repeats_the_last_frame():
    settings = image_processor_kwargs("qwen2-vl-2b")
    video = qwen_frame_video_processor(settings)
    frames = [picture(56, 56, seed) for seed in range(3)]
    out = video(videos=[frames], return_tensors="pt", return_metadata=True)
    t, h, w = out["video_grid_thw"][0].tolist()
    assert t == 2 and out["pixel_values_videos"].shape == (t * h * w, 3 * 2 * 14 * 14)
    image = Qwen2VLImageProcessorPil(**settings)
    # Patch vectors are (channel, temporal, row, column): temporal slot 0 of patch block k holds frame 2k.
    per_patch = out["pixel_values_videos"].view(t, h * w, 3, 2, 14, 14)
    for k, (first, second) in enumerate([(0, 1), (2, 2)]):
        for slot, index in enumerate((first, second)):
            alone = image(images=[frames[index]], return_tensors="pt")["pixel_values"].view(h * w, 3, 2, 14, 14)
            torch.testing.assert_close(per_patch[k, :, :, slot], alone[:, :, 0], atol=1e-6, rtol=0)
    assert [m.total_num_frames for m in out["video_metadata"]] == [3]


@pytest.mark.parametrize("name", list(QWEN_FAMILIES))
def test_load_processor_gives_the_stock_processor_class_configured_as_the_checkpoint(tmp_path, name):
    # The processor files of the replica, and its config (which names the family); no weights are needed.
    directory = tmp_path / name
    stock_config(name).save_pretrained(directory)
    build_stock_processor(name).save_pretrained(directory)
    _write_hub_processor_config(directory / "processor_config.json", name)
    processor = load_processor(str(directory))
    expected = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}
    assert type(processor).__name__ == expected[QWEN_FAMILIES[name].architecture]
    assert processor.video_processor.size == image_processor_kwargs(name)["size"]
    assert processor.video_processor.patch_size == QWEN_FAMILIES[name].patch_size
    message = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what happens ?"}]}]
    prompt = processor.apply_chat_template(message, add_generation_prompt=True)
    frames = [picture(60, 80, seed) for seed in range(4)]
    inputs = processor(text=[prompt], videos=[frames], return_tensors="pt")
    t, h, w = inputs["video_grid_thw"][0].tolist()
    assert int((inputs["input_ids"] == 151656).sum()) == t * h * w // 4
    assert int((inputs["mm_token_type_ids"] == 2).sum()) == t * h * w // 4
