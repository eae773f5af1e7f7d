"""`llava-codebook profile`: what pruning buys at inference, measured per strategy, budget and batch size in one run.

The work is a list of prompts (text only, one image or several; `profile_prompts.py`) cut into batches of each
batch size asked for. For every batch and every configuration (a strategy at a budget, and the unpruned `none`), one
`generate` call is timed from the inside:

- vision tower: the vision tower's forward passes (hooks), signal probes of the strategy included, the crops it ran
  on and their FLOPs (`flops.vision_tower_flops`): with tile skipping (`--tile-skipping on` or `both`), fewer;
- selection: the strategy choosing the kept tokens (`select_segments`);
- vision + selection: from the call to the start of the language model's prefill (the two above, the projector,
  prompt compaction and `generate`'s own set-up);
- prefill: the language model's first forward pass, and its width (the longest prompt that reached it: every row
  is padded to it, so the width times the rows is what the language model computes);
- time to first token: from the call to the first new token;
- decode per token: the mean gap between the following tokens (`max_new_tokens` are generated, EOS suppressed);
- generated tokens/s: new tokens of all rows over the whole call (for a batch size: over all its calls);
- peak memory: the CUDA allocator's peak during the call, or on CPU the process's peak resident set size (Linux);
- KV cache: the bytes of the key/value cache right after prefill, i.e. of the prompt that reached the model.

Language-model timings come from hooks on the language model and a streamer, with the device synchronised at each
mark. Repeats are interleaved (repeat -> batch size -> batch -> configuration) after a warm-up of every configuration
at every batch size, so drifts of a shared machine touch every configuration alike; each number is the median over
repeats, averaged over the batches of a batch size. The FLOPs prediction is `llava_codebook.flops.prefill_flops` of
the prefill width, times the rows of the batch (the padding is computed too).
"""

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .flops import prefill_flops, vision_tower_flops
from .pruning_config import TILE_SKIPPING_STRATEGIES
from .integrations.accounting import account_rows
from .profile_prompts import DEFAULT_PROMPT, Prompt, batches, encode_batch, image_prompts, read_prompts

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class Budget:
    """A per-image budget: `keep_tokens` visual tokens, or a `keep_ratio` share (row newlines come on top)."""

    keep_tokens: int | None = None
    keep_ratio: float | None = None

    @property
    def label(self) -> str:
        if self.keep_tokens is not None:
            return f"{self.keep_tokens} tokens"
        return f"{self.keep_ratio:.0%}"


@dataclass(frozen=True)
class Configuration:
    strategy: str
    budget: Budget | None = None  # None: the strategy keeps every token (`none`)
    tile_skipping: bool = False

    @property
    def label(self) -> str:
        label = self.strategy if self.budget is None else f"{self.strategy} @ {self.budget.label}"
        return label + (" + tile skipping" if self.tile_skipping else "")

    def overrides(self) -> dict:
        skipping = {"tile_skipping": True} if self.tile_skipping else {}
        if self.budget is None:
            return {"pruning_strategy": self.strategy, **skipping}
        budget = {"keep_tokens": self.budget.keep_tokens} if self.budget.keep_tokens else {}
        if self.budget.keep_ratio is not None:
            budget = {"keep_ratio": self.budget.keep_ratio}  # the model is loaded with keep_tokens=None
        return {"pruning_strategy": self.strategy, "pruning_mode": "budget", **budget, **skipping}


TILE_SKIPPING_CHOICES = ("off", "on", "both")


def parse_budgets(text: str) -> list[Budget]:
    """`"320,160,64"` (visual tokens per image) and / or `"25%"` / `"0.25"` (a share of each image's tokens)."""
    budgets = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            if item.endswith("%"):
                budget = Budget(keep_ratio=float(item[:-1]) / 100)
            elif item.isdigit():
                budget = Budget(keep_tokens=int(item))
            else:
                budget = Budget(keep_ratio=float(item))
        except ValueError:
            budget = None
        valid = budget is not None and (
            (budget.keep_tokens is not None and budget.keep_tokens >= 1)
            or (budget.keep_ratio is not None and 0 < budget.keep_ratio <= 1)
        )
        if not valid:
            raise ValueError(
                f"Budget {item!r} is neither a number of visual tokens per image (an integer >= 1, e.g. 320) nor a "
                "share of them in (0, 1] (e.g. 0.25 or 25%)."
            )
        budgets.append(budget)
    if not budgets:
        raise ValueError("No budget given; e.g. --budgets 320,160,64.")
    return list(dict.fromkeys(budgets))


def parse_batch_sizes(text: str) -> list[int]:
    """`"1,8"`: the batch sizes to profile, each an integer >= 1."""
    sizes = [part.strip() for part in str(text).split(",") if part.strip()]
    if not sizes or not all(size.isdigit() and int(size) >= 1 for size in sizes):
        raise ValueError(f"Batch sizes {text!r} must be integers >= 1, comma-separated (e.g. 1,8).")
    return list(dict.fromkeys(int(size) for size in sizes))


def parse_strategies(text: str) -> list[str]:
    from .strategies import STRATEGIES

    names = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    unknown = [name for name in names if name not in STRATEGIES]
    if unknown or not names:
        raise ValueError(f"Unknown strategies {unknown or names}; the registry has {', '.join(STRATEGIES)}.")
    return names


def parse_tile_skipping(text: str) -> str:
    """`off`, `on` or `both`: which configurations skip tiles (`configurations`)."""
    if text not in TILE_SKIPPING_CHOICES:
        raise ValueError(
            f"--tile-skipping {text!r} is unknown: use off, on (every pruned configuration skips tiles) or both (each "
            "pruned configuration without and with tile skipping)."
        )
    return text


def check_counts(repeats: int, warmup: int, max_new_tokens: int) -> None:
    if repeats < 1 or warmup < 0 or max_new_tokens < 2:
        raise ValueError("Need repeats >= 1, warmup >= 0 and max_new_tokens >= 2 (decode time needs two tokens).")


def configurations(strategies: Sequence[str], budgets: Sequence[Budget], tile_skipping: str = "off") -> list:
    """Every strategy at every budget (`none` once). `tile_skipping`: "off", "on" (every pruned configuration skips
    tiles) or "both" (each pruned configuration without, then with tile skipping). A strategy that reads the vision
    tower's signals cannot skip tiles (`TILE_SKIPPING_STRATEGIES`) and runs without (no `+ tile skipping` row)."""
    variants = {"off": (False,), "on": (True,), "both": (False, True)}[parse_tile_skipping(tile_skipping)]
    out = []
    for strategy in strategies:
        if strategy == "none":
            out.append(Configuration("none"))
        else:
            own = variants if strategy in TILE_SKIPPING_STRATEGIES else (False,)
            out.extend(Configuration(strategy, budget, skip) for budget in budgets for skip in own)
    return out


def cache_bytes(cache) -> int:
    """Bytes held by a transformers cache: every tensor of every layer (keys and values, or whatever it stores)."""
    layers = getattr(cache, "layers", None)
    if layers is None and isinstance(cache, (tuple, list)):  # legacy tuple-of-tuples
        layers = cache
    total = 0
    for layer in layers or ():
        tensors = layer if isinstance(layer, (tuple, list)) else vars(layer).values()
        total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    return total


def language_model_of(model) -> torch.nn.Module:
    for get in (lambda m: m.get_decoder(), lambda m: m.model.language_model, lambda m: m.language_model):
        try:
            module = get(model)
        except AttributeError:
            continue
        if isinstance(module, torch.nn.Module) and module is not model:
            return module
    raise ValueError(f"Cannot find the language model inside {type(model).__name__}.")


class _MemoryProbe:
    """Peak memory of one call: the CUDA allocator's, or on Linux the process's resident set (VmHWM, reset first)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda" if device.type == "cuda" else ("rss" if Path("/proc/self/clear_refs").exists() else None)

    @staticmethod
    def _status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise OSError(field)

    def start(self) -> None:
        self.before = None
        if self.kind == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        elif self.kind == "rss":
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
                self.before = self._status("VmRSS")
            except OSError:
                self.kind = None

    def stop(self) -> tuple[int | None, int | None]:
        """(peak bytes during the call, of which above what was held when it started)."""
        if self.kind == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.kind == "rss":
            peak = self._status("VmHWM")
        else:
            return None, None
        return peak, peak - self.before


class _Timeline:
    """Marks of one `generate` call: language-model forward passes and vision-tower passes (hooks), the strategy's
    selection (a timing wrapper on the model's `select_segments`, removed after) and new tokens (a streamer)."""

    def __init__(self, model, device: torch.device):
        self.device = device
        self.forwards: list[list[float]] = []
        self.tokens: list[float] = []
        self.prefill_width: int | None = None
        self.kv_cache_bytes: int | None = None
        self.vision_tower_s = 0.0
        self.crops_encoded: int | None = 0
        self.selection_s = 0.0
        self._tower_start = None
        self._prompt_seen = False
        self._base = model._pruning_base()
        language_model = language_model_of(model)
        self._handles = [
            language_model.register_forward_pre_hook(self._before, with_kwargs=True),
            language_model.register_forward_hook(self._after, with_kwargs=True),
            self._base.pruning_vision_tower().register_forward_pre_hook(self._tower_before),
            self._base.pruning_vision_tower().register_forward_hook(self._tower_after),
        ]
        select = self._base.select_segments

        def timed_select(*args, **kwargs):
            start = self._now()
            try:
                return select(*args, **kwargs)
            finally:
                self.selection_s += self._now() - start

        self._base.select_segments = timed_select  # an instance attribute, deleted by `remove`

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _tower_before(self, module, args):
        self._tower_start = self._now()
        # A tower fed whole crops (`[crops, C, H, W]`) is counted in crops; one fed flattened patches is not.
        pixels = args[0] if args else None
        if self.crops_encoded is not None and isinstance(pixels, torch.Tensor) and pixels.dim() == 4:
            self.crops_encoded += pixels.shape[0]
        else:
            self.crops_encoded = None

    def _tower_after(self, module, args, output):
        self.vision_tower_s += self._now() - self._tower_start

    def _before(self, module, args, kwargs):
        self.forwards.append([self._now(), float("nan")])

    def _after(self, module, args, kwargs, output):
        self.forwards[-1][1] = self._now()
        if len(self.forwards) == 1:
            hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
            self.prefill_width = int(hidden.shape[1])
            cache = getattr(output, "past_key_values", None)
            self.kv_cache_bytes = cache_bytes(cache) if cache is not None else None

    # the streamer interface `generate` calls: first the prompt, then each new token
    def put(self, value):
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.tokens.append(self._now())

    def end(self):
        pass

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        del self._base.select_segments


def measure_one(model, inputs, configuration: Configuration, max_new_tokens: int, device: torch.device) -> dict:
    """Time one `generate` call of `configuration` on `inputs` (one batch of prompts)."""
    timeline = _Timeline(model, device)
    memory = _MemoryProbe(device)
    memory.start()
    try:
        start = timeline._now()
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            streamer=timeline,
            return_dict_in_generate=True,
            **configuration.overrides(),
        )
    finally:
        timeline.remove()
    peak, above_start = memory.stop()
    accounts = account_rows(model, inputs["input_ids"], inputs.get("attention_mask"), output.visual_token_selection)
    # Every row is its real tokens only after pruning, re-padded to the longest one: that is the width that suffices.
    sufficient = max(account.prompt_tokens for account in accounts)
    if timeline.prefill_width != sufficient:
        raise RuntimeError(
            f"The language model ran the prompt at width {timeline.prefill_width}, but its longest row after "
            f"pruning has {sufficient} tokens: the batch was not compacted to its real tokens."
        )
    rows, text_config = len(accounts), model.config.text_config
    unpruned_width = max(account.prompt_tokens_unpruned for account in accounts)
    prefill_start, prefill_end = timeline.forwards[0]
    tokens = timeline.tokens
    return {
        "rows": rows,
        "visual_tokens_kept": sum(a.visual_tokens_kept for a in accounts),
        "visual_tokens_total": sum(a.visual_tokens_total for a in accounts),
        "prompt_tokens": sum(a.prompt_tokens for a in accounts),
        "prompt_tokens_unpruned": sum(a.prompt_tokens_unpruned for a in accounts),
        "prefill_width": timeline.prefill_width,
        "prefill_width_unpruned": unpruned_width,
        "prefill_flops": rows * prefill_flops(text_config, timeline.prefill_width),
        "prefill_flops_unpruned": rows * prefill_flops(text_config, unpruned_width),
        "vision_tower_s": timeline.vision_tower_s,
        "crops_encoded": timeline.crops_encoded,
        "vision_tower_flops": _tower_flops(model, timeline.crops_encoded),
        "tiles_skipped": sum(a.tiles_skipped for a in accounts),
        "selection_s": timeline.selection_s,
        "vision_selection_s": prefill_start - start,
        "prefill_s": prefill_end - prefill_start,
        "ttft_s": tokens[0] - start,
        "decode_s_per_token": (tokens[-1] - tokens[0]) / (len(tokens) - 1) if len(tokens) > 1 else None,
        "call_s": tokens[-1] - start,
        "generated_tokens_per_s": rows * len(tokens) / (tokens[-1] - start),
        "new_tokens": len(tokens),
        "peak_memory_bytes": peak,
        "peak_memory_above_start_bytes": above_start,
        "kv_cache_bytes": timeline.kv_cache_bytes,
    }


def _tower_flops(model, crops: int | None) -> float | None:
    """`vision_tower_flops` of `crops` crops, where the tower is a ViT of square crops (CLIP, SigLIP)."""
    vision = getattr(model.config, "vision_config", None)
    needed = ("hidden_size", "intermediate_size", "num_hidden_layers", "image_size", "patch_size")
    if crops is None or vision is None or not all(isinstance(getattr(vision, n, None), int) for n in needed):
        return None
    return vision_tower_flops(vision, crops)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


TIMED = (
    "vision_tower_s",
    "selection_s",
    "vision_selection_s",
    "prefill_s",
    "ttft_s",
    "call_s",
    "decode_s_per_token",
    "generated_tokens_per_s",
)


def _summarise(runs: list[dict]) -> dict:
    """One batch's repeats: counts from the first (they are deterministic), medians of times, maxima of memory."""
    entry = {key: value for key, value in runs[0].items() if key not in TIMED}
    for key in ("peak_memory_bytes", "peak_memory_above_start_bytes"):
        entry[key] = max((r[key] for r in runs if r[key] is not None), default=None)
    for key in TIMED:
        values = [r[key] for r in runs if r[key] is not None]
        entry[key] = statistics.median(values) if values else None
    return entry


def profile_model(
    model,
    processor,
    prompts: Sequence[Prompt],
    strategies: Sequence[str] = ("none", "codebook"),
    budgets: Sequence[Budget] = (Budget(320), Budget(160), Budget(64)),
    batch_sizes: Sequence[int] = (1,),
    repeats: int = 3,
    warmup: int = 1,
    max_new_tokens: int = 16,
    time_budget_s: float | None = None,
    progress: Callable[[str], None] | None = None,
    tile_skipping: str = "off",
) -> dict:
    """Profile a loaded model (on its device) on `prompts` at every batch size; returns the rows of the report.

    `time_budget_s`: stop repeating once another repeat would not fit in this many seconds (measured from the first
    warm-up call); at least one repeat always runs. The report says how many ran. `tile_skipping`: "off", "on" or
    "both" (`configurations`).
    """
    check_counts(repeats, warmup, max_new_tokens)
    if not prompts:
        raise ValueError("No prompts given; pass --images FILE_OR_FOLDER and / or --prompts FILE.")
    if not any(prompt.images for prompt in prompts):
        raise ValueError("Every prompt is text only: give at least one prompt with an image, or nothing is pruned.")
    device = next(model.parameters()).device
    configs = configurations(strategies, budgets, tile_skipping)
    say = progress or (lambda message: None)
    work = []  # (batch size, index, prompts, inputs)
    for size in batch_sizes:
        for index, batch in enumerate(batches(prompts, size)):
            inputs = encode_batch(processor, batch).to(device, dtype=model.dtype)  # casts floating tensors only
            work.append((size, index, batch, inputs))

    started = time.perf_counter()
    for size in batch_sizes:  # warm-up: every configuration, on the first batch of every batch size
        first = next(inputs for s, _, _, inputs in work if s == size)
        for configuration in configs:
            for _ in range(warmup):
                measure_one(model, first, configuration, max_new_tokens, device)
    samples = {(c, s, i): [] for c in configs for s, i, _, _ in work}
    done = 0
    for repeat in range(repeats):
        repeat_started = time.perf_counter()
        for size, index, _, inputs in work:
            for configuration in configs:
                samples[configuration, size, index].append(
                    measure_one(model, inputs, configuration, max_new_tokens, device)
                )
        done += 1
        now = time.perf_counter()
        say(f"repeat {repeat + 1}/{repeats} done ({now - started:.0f} s)")
        if time_budget_s is not None and now - started + (now - repeat_started) > time_budget_s:
            break

    rows = []
    for size in batch_sizes:
        units = [(index, batch) for s, index, batch, _ in work if s == size]
        for configuration in configs:
            per_batch = []
            for index, batch in units:
                entry = _summarise(samples[configuration, size, index])
                entry["prompts"] = [prompt.kind for prompt in batch]
                per_batch.append(entry)
            row = {
                "batch_size": size,
                "configuration": configuration.label,
                "strategy": configuration.strategy,
                "keep_tokens": configuration.budget.keep_tokens if configuration.budget else None,
                "keep_ratio": configuration.budget.keep_ratio if configuration.budget else None,
            }
            for key in per_batch[0]:
                if key != "prompts":
                    row[key] = _mean([entry[key] for entry in per_batch])
            # Throughput of the batch size's whole work (a mean of per-batch rates would weigh a fast text-only
            # batch like a slow image batch).
            row["generated_tokens_per_s"] = sum(e["rows"] * e["new_tokens"] for e in per_batch) / sum(
                e["call_s"] for e in per_batch
            )
            row["per_batch"] = per_batch
            rows.append(row)
    for size in batch_sizes:
        same_size = [row for row in rows if row["batch_size"] == size]
        baseline = next((row for row in same_size if row["strategy"] == "none"), None)
        for row in same_size:
            row["prefill_flops_share"] = row["prefill_flops"] / row["prefill_flops_unpruned"]
            row["prefill_time_share"] = row["prefill_s"] / baseline["prefill_s"] if baseline else None
            row["ttft_share"] = row["ttft_s"] / baseline["ttft_s"] if baseline else None
            row["vision_tower_share"] = row["vision_tower_s"] / baseline["vision_tower_s"] if baseline else None
            row["selection_share_of_tower"] = (
                row["selection_s"] / row["vision_tower_s"] if row["vision_tower_s"] else None
            )
    return {"rows": rows, "repeats_done": done, "seconds": time.perf_counter() - started}


def describe_model(model) -> dict:
    text_config = model.config.text_config
    return {
        "class": type(model).__name__,
        "dtype": str(model.dtype).replace("torch.", ""),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "text_hidden_size": text_config.hidden_size,
        "text_layers": text_config.num_hidden_layers,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def software() -> str:
    return (
        f"torch {torch.__version__}, transformers {__import__('transformers').__version__}, "
        f"Python {platform.python_version()}"
    )


def run_profile(
    model_id: str,
    images: Sequence[str] = (),
    strategies: Sequence[str] = ("none", "codebook"),
    budgets: Sequence[Budget] = (Budget(320), Budget(160), Budget(64)),
    repeats: int = 3,
    warmup: int = 1,
    max_new_tokens: int = 16,
    prompt: str = DEFAULT_PROMPT,
    device: str | None = None,
    dtype: str = "auto",
    attn_implementation: str | None = None,
    note: str | None = None,
    command: str | None = None,
    threads: int | None = None,
    progress=None,
    prompts_file: str | None = None,
    batch_sizes: Sequence[int] = (1,),
    tile_skipping: str = "off",
    tile_skip_share: float | None = None,
) -> dict:
    """Profile `model_id` (a pruning-enabled repo or a stock checkpoint this package loads) and return the report.

    The prompts are one per image of `images` (asking `prompt`), then those of `prompts_file`, in that order.
    `tile_skipping`: "off", "on" or "both" (each pruned configuration without and with tile skipping), at
    `tile_skip_share` (default: the model config's).
    """
    from .loading import load_pruned_model
    from .processors import load_processor

    check_counts(repeats, warmup, max_new_tokens)
    if dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is unknown; use auto, {', '.join(DTYPES)}.")
    prompts = image_prompts(images, prompt) + (read_prompts(prompts_file) if prompts_file else [])
    if not prompts:
        raise ValueError("No prompts given; pass --images FILE_OR_FOLDER and / or --prompts FILE.")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads={threads} must be at least 1.")
        # On a shared CPU, fewer threads than cores avoid the stalls of oversubscribed thread pools.
        torch.set_num_threads(threads)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # keep_tokens=None: a repo whose config sets a token budget must not override a share given here (a per-call
    # `keep_tokens=None` means "the config's value").
    load_kwargs = {"dtype": DTYPES.get(dtype, dtype), "keep_tokens": None}
    if tile_skip_share is not None:
        load_kwargs["tile_skip_share"] = tile_skip_share
    if attn_implementation:
        load_kwargs["attn_implementation"] = attn_implementation
    model = load_pruned_model(model_id, **load_kwargs).to(target).eval()
    processor = load_processor(model_id)
    result = profile_model(
        model,
        processor,
        prompts,
        strategies=strategies,
        budgets=budgets,
        batch_sizes=batch_sizes,
        repeats=repeats,
        warmup=warmup,
        max_new_tokens=max_new_tokens,
        progress=progress,
        tile_skipping=tile_skipping,
    )
    return {
        "command": command,
        "hardware": hardware(target) + (f"; {note}" if note else ""),
        "device": str(target),
        "software": software(),
        "model": {"id": str(model_id), **describe_model(model)},
        "settings": {
            "prompts": [{"text": p.text, "images": [str(i) for i in p.images]} for p in prompts],
            "max_new_tokens": max_new_tokens,
            "repeats": result["repeats_done"],
            "warmup": warmup,
            "batch_sizes": list(batch_sizes),
            "tile_skipping": tile_skipping,
            "tile_skip_share": model.config.tile_skip_share,
            "memory": {"cuda": "CUDA allocator peak", "rss": "process peak resident set size (VmHWM)"}.get(
                _MemoryProbe(target).kind, "not measured on this platform"
            ),
        },
        "rows": result["rows"],
    }


__all__ = [
    "Budget",
    "Configuration",
    "cache_bytes",
    "describe_model",
    "hardware",
    "parse_batch_sizes",
    "parse_budgets",
    "parse_strategies",
    "parse_tile_skipping",
    "profile_model",
    "run_profile",
    "software",
]
