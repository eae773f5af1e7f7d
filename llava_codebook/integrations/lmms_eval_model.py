"""lmms-eval model `llava_codebook`: any checkpoint `load_pruned_model` loads, with any pruning setting, batched.

    lmms-eval --model llava_codebook \\
        --model_args pretrained=llava-hf/llama3-llava-next-8b-hf,pruning_strategy=codebook,keep_tokens=320,\\
codebook_repo=org/codebook,dtype=bfloat16,attn_implementation=sdpa \\
        --tasks pope --batch_size 8 --log_samples --output_path results/

`--model_args` (all optional but `pretrained`):

- `pretrained`: a pruning-enabled repo (made by `llava-codebook convert`) or a stock llava-hf checkpoint (Hub id or
  local directory); `revision`.
- any pruning setting the model's config has (`pruning_strategy`, `pruning_mode`, `keep_tokens`, `keep_ratio`,
  `codebook_threshold`, `min_visual_tokens`, ..., and the codebook reference `codebook_repo`,
  `codebook_filename`, `codebook_revision`); they override the checkpoint's config. Giving `keep_tokens` or
  `keep_ratio` without `pruning_mode` selects budget mode. `pruning_strategy=none` is the unpruned baseline.
- `dtype` (`auto`, `bfloat16`, `float16`, `float32`), `device` (default `cuda` when available, else `cpu`),
  `device_map` (e.g. `auto` to spread one model over several GPUs), `attn_implementation` (`sdpa`, `eager`,
  `flash_attention_2`, ...).
- `batch_size` (also `--batch_size`): prompts per `generate` / forward call, left-padded; `max_frames_num` (frames
  sampled from a video file, default 32); `chat_template` (replaces the processor's); `use_cache`.

Every request's cost is written into lmms-eval's per-sample log (`--log_samples`), in the sample's `token_counts`:
`input_tokens` (the prompt length that reached the language model), `output_tokens`, `visual_tokens_kept`,
`visual_tokens_total`, `prefill_tflops` and `prefill_tflops_unpruned` (`llava_codebook.flops.prefill_flops` of the
pruned and the full prompt), `tiles_skipped` and `vision_tflops_saved` (the AnyRes tiles `tile_skipping` left
unencoded, and their vision-tower FLOPs). Their means over the run's requests appear in the results' `throughput` section (printed
as the "Throughput Summary" under the scores): `avg_visual_tokens_kept`, `avg_visual_tokens_total`,
`avg_visual_keep_ratio`, `avg_tiles_skipped`, `avg_vision_tflops_saved` (these three over requests with visual input),
`avg_prefill_tflops`, `avg_prefill_tflops_unpruned`.

`loglikelihood` returns, per request, the continuation's mean negative log-likelihood per token (a loss, as
lmms-eval's own models return and its multiple-choice scoring expects: it picks the choice with the lowest value)
and whether greedy decoding would produce the continuation.
"""

import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from loguru import logger
from PIL import Image

from ..loading import load_pruned_model
from ..processors import load_processor
from ..pruning_core import TOKEN_ALIGNED_INPUTS
from ..pruning_loading import CODEBOOK_REFERENCE_FIELDS
from ..pruning_settings import PRUNING_FIELDS
from .accounting import RowAccount, account_rows

PRUNING_ARGS = PRUNING_FIELDS + CODEBOOK_REFERENCE_FIELDS
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".flv", ".mpeg", ".mpg", ".gif")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# The keys added to each sample's `token_counts` and averaged into the run's `throughput` summary.
SUMMARY_KEYS = (
    "visual_tokens_kept",
    "visual_tokens_total",
    "visual_keep_ratio",
    "prefill_tflops",
    "prefill_tflops_unpruned",
    "tiles_skipped",
    "vision_tflops_saved",
)


@dataclass
class Video:
    """A video read from a file: its sampled frames and the `VideoMetadata` the reader gave (frame rate, indices)."""

    frames: object
    metadata: object = None


def video_metadata(video) -> dict:
    """The metadata a processor gets for `video`: the reader's, or for bare frames every frame at an unknown rate
    (what the stock processors assume)."""
    if isinstance(video, Video) and video.metadata is not None:
        return video.metadata
    frames = video.frames if isinstance(video, Video) else video
    return {"total_num_frames": len(frames), "fps": None, "frames_indices": list(range(len(frames)))}


@dataclass
class VisualTokenCounts(TokenCounts):
    """lmms-eval's per-request `TokenCounts`, plus what pruning did to the request (written into `token_counts`)."""

    visual_tokens_kept: int | None = None
    visual_tokens_total: int | None = None
    prefill_tflops: float | None = None
    prefill_tflops_unpruned: float | None = None
    tiles_skipped: int | None = None
    vision_tflops_saved: float | None = None

    @classmethod
    def from_account(cls, account: RowAccount, output_tokens: int | None = None) -> "VisualTokenCounts":
        return cls(
            input_tokens=account.prompt_tokens,
            output_tokens=output_tokens,
            visual_tokens_kept=account.visual_tokens_kept,
            visual_tokens_total=account.visual_tokens_total,
            prefill_tflops=account.prefill_flops / 1e12,
            prefill_tflops_unpruned=account.prefill_flops_unpruned / 1e12,
            tiles_skipped=account.tiles_skipped,
            vision_tflops_saved=account.vision_flops_saved / 1e12,
        )

    def to_dict(self) -> dict:
        out = super().to_dict()
        for key in (key for key in SUMMARY_KEYS if key != "visual_keep_ratio"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def summary_metrics(self) -> dict:
        """The numbers averaged into the run's summary; visual ones only for a request that had visual input."""
        metrics = {"prefill_tflops": self.prefill_tflops, "prefill_tflops_unpruned": self.prefill_tflops_unpruned}
        if self.visual_tokens_total:
            metrics["visual_tokens_kept"] = self.visual_tokens_kept
            metrics["visual_tokens_total"] = self.visual_tokens_total
            metrics["visual_keep_ratio"] = self.visual_tokens_kept / self.visual_tokens_total
            metrics["tiles_skipped"] = self.tiles_skipped or 0
            metrics["vision_tflops_saved"] = self.vision_tflops_saved or 0.0
        return metrics


def parse_model_args(kwargs: dict) -> dict:
    """Normalise `--model_args` values as lmms-eval parsed them (`"None"` stays a string there)."""
    out = {}
    for name, value in kwargs.items():
        if isinstance(value, str) and value.lower() == "none" and name != "pruning_strategy":
            value = None
        out[name] = value
    return out


def pruning_overrides(kwargs: dict) -> dict:
    """Pop the pruning settings out of `kwargs`; `keep_tokens` / `keep_ratio` without `pruning_mode` mean budget, and
    `keep_ratio` without `keep_tokens` clears the checkpoint's `keep_tokens`."""
    overrides = {name: kwargs.pop(name) for name in PRUNING_ARGS if name in kwargs}
    budget = overrides.get("keep_tokens") is not None or overrides.get("keep_ratio") is not None
    if budget and "pruning_mode" not in overrides:
        overrides["pruning_mode"] = "budget"
    if overrides.get("keep_ratio") is not None and "keep_tokens" not in overrides:
        overrides["keep_tokens"] = None  # else a checkpoint whose config sets keep_tokens would win over the share
    return overrides


def flatten_visuals(visuals) -> list:
    """`doc_to_visual` returns a list (sometimes nested once); `None` entries mean no visual."""
    out = []
    for item in visuals or []:
        if isinstance(item, (list, tuple)):
            out.extend(v for v in item if v is not None)
        elif item is not None:
            out.append(item)
    return out


def batches(indices: Sequence[int], key: Callable, length: Callable, size: int) -> list[list[int]]:
    """Group `indices` by `key` (requests of one group share generation settings), longest first within a group
    (the padded length of a batch is known from its first prompt, and an out-of-memory error comes first), then
    cut each group into batches of at most `size`."""
    groups: dict[str, list[int]] = {}
    for index in indices:
        groups.setdefault(key(index), []).append(index)
    out = []
    for members in groups.values():
        members.sort(key=lambda i: -length(i))
        out.extend(members[start : start + size] for start in range(0, len(members), size))
    return out


def cut_at_stop_strings(text: str, until: Sequence[str]) -> str:
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


@contextlib.contextmanager
def _quiet_metric_lines():
    """lmms-eval's `log_metrics` prints one INFO line per call; requests are logged one by one, so hush it."""
    name = "lmms_eval.models.model_utils.gen_metrics"
    logger.disable(name)
    try:
        yield
    finally:
        logger.enable(name)


class LlavaCodebook(lmms):
    """A pruning-aware LLaVA model for lmms-eval (simple interface: `doc_to_visual` + `doc_to_text` tasks)."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        revision: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        device_map: str | None = None,
        attn_implementation: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        max_frames_num: int = 32,
        chat_template: str | None = None,
        use_cache: bool = True,
        **kwargs,
    ) -> None:
        super().__init__()
        kwargs = parse_model_args(kwargs)
        pruning = pruning_overrides(kwargs)
        if kwargs:
            raise TypeError(
                f"llava_codebook does not know the model_args {sorted(kwargs)}. It takes pretrained, revision, "
                "device, dtype, device_map, attn_implementation, batch_size, max_frames_num, chat_template, "
                f"use_cache and the pruning settings {', '.join(PRUNING_ARGS)}."
            )
        try:
            self.batch_size_per_gpu = int(batch_size)
        except (TypeError, ValueError):
            raise ValueError(f"batch_size={batch_size!r}: llava_codebook needs a number (no 'auto').") from None
        if self.batch_size_per_gpu < 1:
            raise ValueError(f"batch_size={batch_size!r} must be at least 1.")
        if isinstance(dtype, str) and dtype != "auto" and dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is unknown; use auto, {', '.join(DTYPES)}.")
        self.pruning = pruning
        self.pretrained = str(pretrained)
        self.max_frames_num = int(max_frames_num)
        self.use_cache = bool(use_cache)

        self.accelerator = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # accelerate launch / torchrun: one model per process
            from accelerate import Accelerator

            self.accelerator = Accelerator()
            self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
            if not device_map:
                device = str(self.accelerator.device)
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

        load_kwargs = {"dtype": DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype}
        if revision is not None:
            load_kwargs["revision"] = revision
        if device_map:
            load_kwargs["device_map"] = device_map
        if attn_implementation:
            load_kwargs["attn_implementation"] = attn_implementation
        self._model = load_pruned_model(self.pretrained, **pruning, **load_kwargs).eval()
        if not device_map:
            self._model.to(self._device)
        else:
            self._device = self._model.device

        self.processor = load_processor(self.pretrained, revision=revision)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        if chat_template is not None and Path(str(chat_template)).is_file():
            chat_template = Path(chat_template).read_text()
        self.chat_template = chat_template or getattr(self.processor, "chat_template", None)
        self.chat_template = self.chat_template or getattr(self.tokenizer, "chat_template", None)
        if self.chat_template is None:
            logger.warning(
                f"{self.pretrained} has no chat template: prompts are the placeholders, a newline and the question."
            )
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.tokenizer.eos_token_id
        eos = self._model.generation_config.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        self.eos_token_ids |= {self.tokenizer.eos_token_id} - {None}

    # ------------------------------------------------------------------------------------------ lmms interface
    @property
    def model(self):
        return self._model

    @property
    def device(self):
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def eot_token_id(self):
        return self.tokenizer.eos_token_id

    def tok_encode(self, string: str, left_truncate_len=None, add_special_tokens=None) -> list[int]:
        encoding = self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens))
        return encoding[-left_truncate_len:] if left_truncate_len else encoding

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens)

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("llava_codebook does not implement multi-round generation.")

    # ------------------------------------------------------------------------------------------ requests
    def _doc(self, task: str, split: str, doc_id):
        return self.task_dict[task][split][doc_id]

    def _split_visuals(self, visuals: list) -> tuple[list, list]:
        """Images (PIL, or an image file path) and videos (a video file path, or an array of frames)."""
        kinds = []
        for visual in visuals:
            name = str(visual).lower() if isinstance(visual, (str, Path)) else ""
            if isinstance(visual, Image.Image) or name.endswith(IMAGE_SUFFIXES):
                kinds.append("image")
            elif name.endswith(VIDEO_SUFFIXES) or (hasattr(visual, "shape") and len(visual.shape) == 4):
                kinds.append("video")
            else:
                raise ValueError(
                    f"llava_codebook takes images and videos; got a {type(visual).__name__} visual "
                    f"({str(visual)[:80]!r}), e.g. audio, which these models do not take."
                )
        if "video" in kinds and getattr(self.processor, "video_processor", None) is None:
            raise ValueError(
                f"This task gives videos, but {type(self.processor).__name__} ({self.pretrained}) takes images only; "
                "evaluate a family that takes videos (LLaVA-NeXT-Video, LLaVA-OneVision, Qwen-VL) on it."
            )
        images, videos = [], []
        for visual, kind in zip(visuals, kinds):
            if kind == "image":
                images.append((visual if isinstance(visual, Image.Image) else Image.open(visual)).convert("RGB"))
            else:
                videos.append(self._load_video(str(visual)) if isinstance(visual, (str, Path)) else visual)
        return images, videos

    def _load_video(self, path: str) -> "Video":
        from transformers.video_utils import load_video

        frames, metadata = load_video(path, num_frames=self.max_frames_num)
        # The metadata (frame rate, which frames were sampled) is what Qwen-VL's processors time the video by.
        return Video(frames, metadata)

    def _prompt(self, context: str, n_images: int, n_videos: int) -> str:
        image_token = getattr(self.processor, "image_token", "<image>")
        video_token = getattr(self.processor, "video_token", "<video>")
        # A task whose text places its own placeholders (interleaved multi-image tasks) keeps them where they are.
        placed = (n_images and image_token in context) or (n_videos and video_token in context)
        if self.chat_template is None:
            prefix = "" if placed else "".join([f"{image_token}\n"] * n_images + [f"{video_token}\n"] * n_videos)
            return prefix + context
        content = [] if placed else [{"type": "image"}] * n_images + [{"type": "video"}] * n_videos
        messages = [{"role": "user", "content": [*content, {"type": "text", "text": context}]}]
        return self.processor.apply_chat_template(
            messages, chat_template=self.chat_template, add_generation_prompt=True, tokenize=False
        )

    def _encode(self, prompts: list[str], images: list, videos: list):
        kwargs = {"text": prompts, "padding": True, "return_tensors": "pt"}
        if images:
            kwargs["images"] = images
        if videos:
            kwargs["videos"] = [v.frames if isinstance(v, Video) else v for v in videos]
            if any(isinstance(v, Video) and v.metadata is not None for v in videos):
                kwargs["video_metadata"] = [video_metadata(v) for v in videos]
        return self.processor(**kwargs).to(self.device, dtype=self.model.dtype)

    def _gather(self, records: list[VisualTokenCounts]) -> list[VisualTokenCounts]:
        """Every process's records on process 0, which alone writes the run's summary."""
        if self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            parts = [None] * self.world_size
            torch.distributed.all_gather_object(parts, records)
            return [record for part in parts for record in part] if self.rank == 0 else []
        return records

    def _log_summary(self, records: list[VisualTokenCounts], seconds: list[float]) -> None:
        from lmms_eval.models.model_utils.gen_metrics import log_metrics

        entries = self._gather([(r, s) for r, s in zip(records, seconds)])
        if not entries:
            return
        with _quiet_metric_lines():
            for record, elapsed in entries:
                tokens = record.output_tokens or 0
                log_metrics(
                    total_elapsed_time=elapsed,
                    total_gen_tokens=tokens,
                    avg_speed=tokens / elapsed if elapsed > 0 else 0.0,
                    additional_metrics={"num_requests": 1, **record.summary_metrics()},
                )
        means = {}
        for key in SUMMARY_KEYS:
            values = [m[key] for m in (r.summary_metrics() for r, _ in entries) if key in m]
            if values:
                means[key] = sum(values) / len(values)
        logger.info(f"llava_codebook: {len(entries)} requests; means " + json.dumps(means))

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        from tqdm import tqdm

        args = [request.args for request in requests]
        order = batches(
            range(len(requests)),
            key=lambda i: json.dumps(args[i][1], sort_keys=True, default=str),
            length=lambda i: len(args[i][0]),
            size=self.batch_size,
        )
        results: list[GenerationResult | None] = [None] * len(requests)
        seconds = [0.0] * len(requests)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="llava_codebook generate")
        for batch in order:
            contexts, prompts, all_images, all_videos = [], [], [], []
            for index in batch:
                context, _, doc_to_visual, doc_id, task, split = args[index]
                images, videos = self._split_visuals(flatten_visuals(doc_to_visual(self._doc(task, split, doc_id))))
                contexts.append(context)
                prompts.append(self._prompt(context, len(images), len(videos)))
                all_images += images
                all_videos += videos
            gen_kwargs = dict(args[batch[0]][1] or {})
            until = gen_kwargs.pop("until", None)
            until = [until] if isinstance(until, str) else list(until or [])
            generate_kwargs = self._generate_kwargs(gen_kwargs)

            start = time.perf_counter()
            inputs = self._encode(prompts, all_images, all_videos)
            output = self.model.generate(**inputs, **generate_kwargs, return_dict_in_generate=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            elapsed = time.perf_counter() - start

            accounts = account_rows(
                self.model, inputs["input_ids"], inputs.get("attention_mask"), output.visual_token_selection
            )
            new_tokens = output.sequences[:, inputs["input_ids"].shape[1] :]
            texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for row, index in enumerate(batch):
                counts = VisualTokenCounts.from_account(accounts[row], self._output_length(new_tokens[row]))
                results[index] = GenerationResult(text=cut_at_stop_strings(texts[row], until), token_counts=counts)
                seconds[index] = elapsed / len(batch)
            progress.update(len(batch))
        progress.close()
        self._log_summary(self._real(requests, [r.token_counts for r in results]), self._real(requests, seconds))
        return results

    @staticmethod
    def _real(requests: list[Instance], values: list) -> list:
        """Drop the padding requests lmms-eval adds to even out processes (they would count twice)."""
        return [v for r, v in zip(requests, values) if not (r.metadata or {}).get("__padding_only__")]

    def _generate_kwargs(self, gen_kwargs: dict) -> dict:
        temperature = float(gen_kwargs.pop("temperature", 0) or 0)
        do_sample = bool(gen_kwargs.pop("do_sample", False)) or temperature > 0
        top_p = gen_kwargs.pop("top_p", None)
        out = {
            "max_new_tokens": int(gen_kwargs.pop("max_new_tokens", 1024)),
            "num_beams": int(gen_kwargs.pop("num_beams", 1)),
            "do_sample": do_sample,
            "use_cache": self.use_cache,
            "pad_token_id": self.pad_token_id,
        }
        if do_sample:
            out["temperature"] = temperature or 1.0
            if top_p is not None:
                out["top_p"] = float(top_p)
        for name in ("top_k", "repetition_penalty", "length_penalty", "min_new_tokens", "no_repeat_ngram_size"):
            if gen_kwargs.get(name) is not None:
                out[name] = gen_kwargs[name]
        return out

    def _output_length(self, tokens: torch.Tensor) -> int:
        for position, token in enumerate(tokens.tolist()):
            if token in self.eos_token_ids:
                return position + 1
        return int(tokens.shape[0])

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """Per request `(mean negative log-likelihood of the continuation per token, is_greedy)`.

        Returned wrapped in `GenerationResult` so the pair reaches the task intact (lmms-eval 0.7 turns a bare
        `(float, bool)` tuple into its string) and the request's visual-token counts reach its sample log.
        """
        from tqdm import tqdm

        items = []
        for request in requests:
            args = request.args
            if len(args) == 2:  # an unconditional request (acc_mutual_info): no context, no visual
                items.append((args[0], args[1], []))
                continue
            context, target, doc_to_visual, doc_id, task, split = args
            doc = self._doc(task, split, doc_id)
            continuation = target if isinstance(target, str) else target(doc)
            if isinstance(continuation, (list, tuple)):
                continuation = continuation[0]
            items.append((context, str(continuation), flatten_visuals(doc_to_visual(doc))))
        order = batches(
            range(len(items)),
            key=lambda i: "",
            length=lambda i: len(items[i][0]) + len(items[i][1]),
            size=self.batch_size,
        )
        results: list[GenerationResult | None] = [None] * len(items)
        seconds = [0.0] * len(items)
        progress = tqdm(total=len(items), disable=self.rank != 0, desc="llava_codebook loglikelihood")
        for batch in order:
            prompts, continuations, all_images, all_videos = [], [], [], []
            for index in batch:
                context, continuation, visuals = items[index]
                images, videos = self._split_visuals(visuals)
                prompts.append(self._prompt(context, len(images), len(videos)))
                continuations.append(self.tokenizer(continuation, add_special_tokens=False)["input_ids"])
                all_images += images
                all_videos += videos
            start = time.perf_counter()
            inputs = self._append_continuations(self._encode(prompts, all_images, all_videos), continuations)
            width = max(len(c) for c in continuations)
            with torch.inference_mode():
                output = self.model(**inputs, logits_to_keep=width + 1, use_cache=False)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            elapsed = time.perf_counter() - start
            # Prompts are right-aligned before and after pruning (left padding, compaction re-pads on the left), so
            # each row's continuation is its last tokens and the logits predicting them sit just before.
            log_probs = torch.log_softmax(output.logits.float(), dim=-1)
            accounts = account_rows(
                self.model, inputs["input_ids"], inputs["attention_mask"], output.visual_token_selection
            )
            for row, index in enumerate(batch):
                target = torch.tensor(continuations[row], device=log_probs.device)
                n = target.shape[0]
                predicted = log_probs[row, log_probs.shape[1] - 1 - n : log_probs.shape[1] - 1]
                token_log_probs = predicted.gather(-1, target[:, None])[:, 0]
                loss = float(-token_log_probs.mean()) if n else 0.0
                greedy = bool((predicted.argmax(-1) == target).all())
                counts = VisualTokenCounts.from_account(accounts[row], output_tokens=0)
                results[index] = GenerationResult(text=(loss, greedy), token_counts=counts)
                seconds[index] = elapsed / len(batch)
            progress.update(len(batch))
        progress.close()
        self._log_summary(self._real(requests, [r.token_counts for r in results]), self._real(requests, seconds))
        return results

    def _append_continuations(self, inputs, continuations: list[list[int]]):
        """Put each row's continuation tokens after its prompt and re-pad the batch on the left."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
        # An empty prompt (an unconditional request without a chat template) starts from BOS, so the first
        # continuation token is predicted from something.
        start = [t for t in (self.tokenizer.bos_token_id, self.tokenizer.eos_token_id) if t is not None][:1]
        rows = [
            torch.cat([ids[b][mask[b]] if mask[b].any() else ids.new_tensor(start), ids.new_tensor(c)])
            for b, c in enumerate(continuations)
        ]
        width = max(r.shape[0] for r in rows)
        new_ids = torch.full((len(rows), width), self.pad_token_id, dtype=ids.dtype, device=ids.device)
        new_mask = torch.zeros((len(rows), width), dtype=inputs["attention_mask"].dtype, device=ids.device)
        for b, row in enumerate(rows):
            new_ids[b, width - row.shape[0] :] = row
            new_mask[b, width - row.shape[0] :] = 1
        inputs["input_ids"], inputs["attention_mask"] = new_ids, new_mask
        # Per-token inputs (Qwen-VL's mm_token_type_ids) move with their tokens; a continuation token is text (0).
        for name in TOKEN_ALIGNED_INPUTS:
            if inputs.get(name) is None:
                continue
            values = inputs[name]
            aligned = torch.zeros((len(rows), width), dtype=values.dtype, device=values.device)
            for b, row in enumerate(rows):
                own = values[b][mask[b]] if mask[b].any() else values.new_zeros(len(start))
                aligned[b, width - row.shape[0] : width - row.shape[0] + own.shape[0]] = own
            inputs[name] = aligned
        return inputs
