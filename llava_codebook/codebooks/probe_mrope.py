"""Probes of a Qwen-VL model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): the same stages as `probe.py`, on merged tokens.

What is probed: each image resized (bicubic, aspect ratio not kept) to a square of `probe_grid` x `probe_grid` merged
tokens (16 x 16 by default: 448 px for the 14 px patches of Qwen2 / 2.5-VL, 512 px for Qwen3-VL's 16 px), encoded by
the stock `get_image_features`; a square view so that ranks and 3 x 3 context windows mean the same on every image,
as LLaVA's base crop. The Qwen ViT has no [CLS] token: tokens are ranked by raster index.

How they are placed: the language model gives visual tokens 3-D (M-RoPE) positions from their place in the image.
Every probe sequence is the probe prompt with the image's placeholder replaced by a subset of the image's tokens (one,
a 3 x 3 block, or all), so each token gets the position the stock `get_rope_index` gives it in the full prompt
(the prompt with every token of the image), and the text after the image keeps its positions too: exactly what a
pruned prompt keeping those tokens gets (`qwen_vl_layout.py`). A token that leave-one-out replaced by the pad
embedding keeps its slot's position. Qwen3-VL's deepstack features of each fed token are added as the stock model adds
them (none for a replaced token, which is no longer an image token).
"""

import torch
from PIL import Image

from .probe import EncodedCrops, ProbeLayout, ProbeRunner


class MRopeProbeRunner(ProbeRunner):
    """`ProbeRunner` for a Qwen-VL `...ForConditionalGeneration` (`.model.visual`, `.model.language_model`,
    `.lm_head`); `probe_grid` is the side of the probed square in merged tokens. Other arguments as `ProbeRunner`."""

    def __init__(self, model, processor, *, probe_grid: int = 16, **kwargs):
        if probe_grid < 3:
            raise ValueError(f"probe_grid={probe_grid}: the 3x3 context probe needs a grid of at least 3x3 tokens.")
        self.probe_grid = probe_grid
        super().__init__(model, processor, **kwargs)
        ids = self.prompt_token_ids
        at = ids.index(model.config.image_token_id)
        count = self.side * self.side
        full = ids[:at] + [model.config.image_token_id] * count + ids[at + 1 :]
        types = [0] * at + [1] * count + [0] * (len(ids) - at - 1)
        with torch.no_grad():
            positions, _ = self.base.get_rope_index(
                torch.tensor([full]), torch.tensor([types]), image_grid_thw=self._grid(1)
            )
        positions = positions[:, 0].to(self.device)
        self.prefix_positions, self.image_positions = positions[:, :at], positions[:, at : at + count]
        self.suffix_positions = positions[:, at + count :]
        self._deepstack: list[torch.Tensor] | None = None

    def _set_up_vision(self, model) -> None:
        base = getattr(model, "model", None)
        if base is None or not hasattr(base, "visual") or not hasattr(model, "lm_head"):
            raise ValueError(
                f"Expected a Qwen-VL `...ForConditionalGeneration` (with .model.visual and .lm_head), got "
                f"{type(model).__name__}. Load the checkpoint with AutoModelForImageTextToText."
            )
        self.base, self.language_model, self.lm_head = base, base.language_model, model.lm_head
        vision = model.config.vision_config
        self.feature_layer = self.strategy = None  # the merger's output is what the language model receives
        self.merge, self.patch = vision.spatial_merge_size, vision.patch_size
        self.side = self.probe_grid
        self.pixels = self.side * self.merge * self.patch
        self.has_cls = False

    @property
    def projector(self) -> torch.nn.Module:
        return self.base.visual.merger

    @property
    def view(self) -> str:
        return f"the whole image resized to {self.pixels} x {self.pixels} px ({self.side} x {self.side} merged tokens)"

    def _grid(self, images: int) -> torch.Tensor:
        return torch.tensor([[1, self.side * self.merge, self.side * self.merge]] * images)

    # ------------------------------------------------------------------ vision side
    def pixel_values(self, images) -> torch.Tensor:
        """Patches `[B * (side * merge)^2, patch_dim]` of the images' square views (the stock image processor's
        patch layout, all images of one size)."""
        square = [image.convert("RGB").resize((self.pixels, self.pixels), Image.BICUBIC) for image in images]
        image_processor = getattr(self.processor, "image_processor", self.processor)
        area = {"shortest_edge": self.pixels * self.pixels, "longest_edge": self.pixels * self.pixels}
        out = image_processor(images=square, size=area, return_tensors="pt")
        if not torch.equal(out["image_grid_thw"], self._grid(len(square))):
            raise ValueError(
                f"The image processor made grids {out['image_grid_thw'].tolist()} of {self.pixels} px squares; "
                f"expected {self._grid(1).tolist()[0]} each."
            )
        return out["pixel_values"]

    @torch.no_grad()
    def encode_crops(self, pixel_values: torch.Tensor) -> EncodedCrops:
        batch = pixel_values.shape[0] // (self.side * self.merge) ** 2
        out = self.base.get_image_features(
            pixel_values.to(self.device, self.base.visual.dtype), self._grid(batch).to(self.device), return_dict=True
        )
        tokens = torch.stack(list(out.pooler_output))
        deepstack = getattr(out, "deepstack_features", None)
        # Deepstack features of the batch being probed: the probes of its images read them.
        self._deepstack = [torch.stack(list(layer)) for layer in deepstack] if deepstack else None
        count = self.side * self.side
        return EncodedCrops(tokens, torch.arange(count).expand(batch, count), None)

    # ------------------------------------------------------------------ language side
    def _last_logits(self, embeds: torch.Tensor, layout: ProbeLayout | None = None) -> torch.Tensor:
        if layout is None:
            raise ValueError("An M-RoPE probe needs the layout of its visual tokens (where each lies in the image).")
        m, length = embeds.shape[:2]
        indices = layout.indices.to(self.device)
        visual = self.image_positions[:, indices]  # [3, M, L]
        positions = torch.cat(
            [
                self.prefix_positions[:, None].expand(-1, m, -1),
                visual,
                self.suffix_positions[:, None].expand(-1, m, -1),
            ],
            dim=2,
        )
        if (extra := length - positions.shape[2]) > 0:  # the "A" step: decoded tokens continue one past the last
            steps = torch.arange(1, extra + 1, device=self.device)
            positions = torch.cat([positions, positions[..., -1:] + steps], dim=2)
        kwargs = {}
        if self._deepstack is not None:
            fed = ~layout.replaced.to(self.device)
            mask = torch.zeros(m, length, dtype=torch.bool, device=self.device)
            start = self.prefix_positions.shape[1]
            mask[:, start : start + indices.shape[1]] = fed
            images = layout.images.to(self.device)[:, None].expand_as(indices)
            kwargs = {
                "visual_pos_masks": mask,
                "deepstack_visual_embeds": [layer[images[fed], indices[fed]] for layer in self._deepstack],
            }
        hidden = self.language_model(inputs_embeds=embeds, position_ids=positions, use_cache=False, **kwargs)
        return self.lm_head(hidden.last_hidden_state[:, -1]).float().cpu()


def probe_runner(model, processor, **kwargs) -> ProbeRunner:
    """The runner for `model`'s family: `MRopeProbeRunner` for Qwen-VL (a `.model.visual` tower), else `ProbeRunner`
    (`probe_grid` applies to the former only)."""
    if hasattr(getattr(model, "model", None), "visual"):
        return MRopeProbeRunner(model, processor, **kwargs)
    kwargs.pop("probe_grid", None)
    return ProbeRunner(model, processor, **kwargs)


__all__ = ["MRopeProbeRunner", "probe_runner"]
