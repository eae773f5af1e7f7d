"""`llava-codebook profile`: what pruning buys at inference, measured per strategy and budget in one run.

For every image (one prompt each, batch size 1) and every configuration (a strategy at a budget, and the unpruned
`none`), one `generate` call is timed from the inside:

- vision + selection: from the call to the start of the language model's prefill (vision tower, projector,
  scoring and selection, prompt compaction, `generate`'s own set-up);
- prefill: the language model's first forward pass (the whole prompt that reached it);
- time to first token: from the call to the first new token;
- decode per token: the mean gap between the following tokens (`--max-new-tokens` are generated, EOS suppressed);
- peak memory: the CUDA allocator's peak during the call, or on CPU the process's peak resident set size (Linux);
- KV cache: the bytes of the key/value cache right after prefill, i.e. of the prompt that reached the model.

Language-model timings come from hooks on the language model and a streamer, with the device synchronised at each
mark. Repeats are interleaved (repeat -> image -> configuration) after a warm-up of every configuration, so drifts of
a shared machine touch every configuration alike; each number is the median over repeats, averaged over images. The
FLOPs prediction beside the times is `llava_codebook.flops.prefill_flops` of the prompt length that reached the model.
"""

import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .integrations.accounting import account_rows

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
DEFAULT_PROMPT = "Describe this image."
MiB = 2**20


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

    @property
    def label(self) -> str:
        return self.strategy if self.budget is None else f"{self.strategy} @ {self.budget.label}"

    def overrides(self) -> dict:
        if self.budget is None:
            return {"pruning_strategy": self.strategy}
        budget = {"keep_tokens": self.budget.keep_tokens} if self.budget.keep_tokens else {}
        if self.budget.keep_ratio is not None:
            budget = {"keep_ratio": self.budget.keep_ratio}  # the model is loaded with keep_tokens=None
        return {"pruning_strategy": self.strategy, "pruning_mode": "budget", **budget}


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


def parse_strategies(text: str) -> list[str]:
    from .strategies import STRATEGIES

    names = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    unknown = [name for name in names if name not in STRATEGIES]
    if unknown or not names:
        raise ValueError(f"Unknown strategies {unknown or names}; the registry has {', '.join(STRATEGIES)}.")
    return names


def configurations(strategies: Sequence[str], budgets: Sequence[Budget]) -> list[Configuration]:
    out = []
    for strategy in strategies:
        if strategy == "none":
            out.append(Configuration("none"))
        else:
            out.extend(Configuration(strategy, budget) for budget in budgets)
    return out


def collect_images(specs: Sequence[str]) -> list[Path]:
    """Image files named directly, comma-separated, or found (sorted, not recursively) in named folders."""
    paths = []
    for spec in specs:
        for item in (part.strip() for part in str(spec).split(",")):
            if not item:
                continue
            path = Path(item).expanduser()
            if path.is_dir():
                found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
                if not found:
                    raise ValueError(f"No image files ({', '.join(IMAGE_SUFFIXES)}) in the folder {str(path)!r}.")
                paths.extend(found)
            elif path.is_file():
                paths.append(path)
            else:
                raise ValueError(f"No such image file or folder: {str(path)!r}.")
    if not paths:
        raise ValueError("No images given; pass --images FILE_OR_FOLDER.")
    return paths


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
    """Marks of one `generate` call: language-model forward passes (hooks) and new tokens (a streamer)."""

    def __init__(self, language_model: torch.nn.Module, device: torch.device):
        self.device = device
        self.forwards: list[list[float]] = []
        self.tokens: list[float] = []
        self.prefill_length: int | None = None
        self.kv_cache_bytes: int | None = None
        self._prompt_seen = False
        self._handles = [
            language_model.register_forward_pre_hook(self._before, with_kwargs=True),
            language_model.register_forward_hook(self._after, with_kwargs=True),
        ]

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _before(self, module, args, kwargs):
        self.forwards.append([self._now(), float("nan")])

    def _after(self, module, args, kwargs, output):
        self.forwards[-1][1] = self._now()
        if len(self.forwards) == 1:
            hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
            self.prefill_length = int(hidden.shape[1])
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


def measure_one(model, inputs, configuration: Configuration, max_new_tokens: int, device: torch.device) -> dict:
    """Time one `generate` call of `configuration` on `inputs` (one prompt)."""
    timeline = _Timeline(language_model_of(model), device)
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
    (account,) = account_rows(model, inputs["input_ids"], inputs.get("attention_mask"), output.visual_token_selection)
    if timeline.prefill_length != account.prompt_tokens:
        raise RuntimeError(
            f"The language model received {timeline.prefill_length} prompt tokens but the selection report implies "
            f"{account.prompt_tokens}."
        )
    prefill_start, prefill_end = timeline.forwards[0]
    tokens = timeline.tokens
    return {
        "visual_tokens_kept": account.visual_tokens_kept,
        "visual_tokens_total": account.visual_tokens_total,
        "prompt_tokens": account.prompt_tokens,
        "prompt_tokens_unpruned": account.prompt_tokens_unpruned,
        "prefill_flops": account.prefill_flops,
        "prefill_flops_unpruned": account.prefill_flops_unpruned,
        "vision_selection_s": prefill_start - start,
        "prefill_s": prefill_end - prefill_start,
        "ttft_s": tokens[0] - start,
        "decode_s_per_token": (tokens[-1] - tokens[0]) / (len(tokens) - 1) if len(tokens) > 1 else None,
        "new_tokens": len(tokens),
        "peak_memory_bytes": peak,
        "peak_memory_above_start_bytes": above_start,
        "kv_cache_bytes": timeline.kv_cache_bytes,
    }


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


def _prompt(processor, question: str) -> str:
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return f"{getattr(processor, 'image_token', '<image>')}\n{question}"


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def run_profile(
    model_id: str,
    images: Sequence[str],
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
) -> dict:
    """Profile `model_id` (a pruning-enabled repo or a stock checkpoint this package loads) and return the report."""
    from PIL import Image

    from .loading import load_pruned_model
    from .processors import load_processor

    if repeats < 1 or warmup < 0 or max_new_tokens < 2:
        raise ValueError("Need repeats >= 1, warmup >= 0 and max_new_tokens >= 2 (decode time needs two tokens).")
    if dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is unknown; use auto, {', '.join(DTYPES)}.")
    paths = collect_images(images)
    configs = configurations(strategies, budgets)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads={threads} must be at least 1.")
        # On a shared CPU, fewer threads than cores avoid the stalls of oversubscribed thread pools.
        torch.set_num_threads(threads)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # keep_tokens=None: a repo whose config sets a token budget must not override a share given here (a per-call
    # `keep_tokens=None` means "the config's value").
    load_kwargs = {"dtype": DTYPES.get(dtype, dtype), "keep_tokens": None}
    if attn_implementation:
        load_kwargs["attn_implementation"] = attn_implementation
    model = load_pruned_model(model_id, **load_kwargs).to(target).eval()
    processor = load_processor(model_id)
    text = _prompt(processor, prompt)
    inputs = []
    for path in paths:
        with Image.open(path) as image:
            encoded = processor(images=[image.convert("RGB")], text=[text], return_tensors="pt")
        inputs.append(encoded.to(target, dtype=model.dtype))
    say = progress or (lambda message: None)

    for configuration in configs:  # warm-up: every configuration once, on the first image
        for _ in range(warmup):
            measure_one(model, inputs[0], configuration, max_new_tokens, target)
    samples = {(c, i): [] for c in configs for i in range(len(paths))}
    started = time.perf_counter()
    for repeat in range(repeats):
        for index in range(len(paths)):
            for configuration in configs:
                samples[configuration, index].append(
                    measure_one(model, inputs[index], configuration, max_new_tokens, target)
                )
        say(f"repeat {repeat + 1}/{repeats} done ({time.perf_counter() - started:.0f} s)")

    timed = ("vision_selection_s", "prefill_s", "ttft_s", "decode_s_per_token")
    rows = []
    for configuration in configs:
        per_image = []
        for index, path in enumerate(paths):
            runs = samples[configuration, index]
            entry = {key: runs[0][key] for key in runs[0] if key not in timed}  # deterministic per image
            for key in ("peak_memory_bytes", "peak_memory_above_start_bytes"):
                entry[key] = max((r[key] for r in runs if r[key] is not None), default=None)
            for key in timed:
                values = [r[key] for r in runs if r[key] is not None]
                entry[key] = statistics.median(values) if values else None
            entry["image"] = str(path)
            per_image.append(entry)
        row = {
            "configuration": configuration.label,
            "strategy": configuration.strategy,
            "keep_tokens": configuration.budget.keep_tokens if configuration.budget else None,
            "keep_ratio": configuration.budget.keep_ratio if configuration.budget else None,
        }
        for key in per_image[0]:
            if key != "image":
                row[key] = _mean([entry[key] for entry in per_image])
        row["per_image"] = per_image
        rows.append(row)
    baseline = next((row for row in rows if row["strategy"] == "none"), None)
    for row in rows:
        row["prefill_flops_share"] = row["prefill_flops"] / row["prefill_flops_unpruned"]
        row["prefill_time_share"] = row["prefill_s"] / baseline["prefill_s"] if baseline else None
        row["ttft_share"] = row["ttft_s"] / baseline["ttft_s"] if baseline else None

    text_config = model.config.text_config
    return {
        "command": command,
        "hardware": hardware(target) + (f"; {note}" if note else ""),
        "device": str(target),
        "software": f"torch {torch.__version__}, transformers {__import__('transformers').__version__}, "
        f"Python {platform.python_version()}",
        "model": {
            "id": str(model_id),
            "class": type(model).__name__,
            "dtype": str(model.dtype).replace("torch.", ""),
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "text_hidden_size": text_config.hidden_size,
            "text_layers": text_config.num_hidden_layers,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "settings": {
            "images": [str(p) for p in paths],
            "prompt": prompt,
            "max_new_tokens": max_new_tokens,
            "repeats": repeats,
            "warmup": warmup,
            "batch_size": 1,
            "memory": {"cuda": "CUDA allocator peak", "rss": "process peak resident set size (VmHWM)"}.get(
                _MemoryProbe(target).kind, "not measured on this platform"
            ),
        },
        "rows": rows,
    }


def _fmt(value, scale: float = 1.0, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value * scale:,.{digits}f}"


def _flops(value: float) -> str:
    """GFLOPs with about three significant digits, from a toy model's 0.0123 to a 7B model's 46,000."""
    giga = value / 1e9
    if giga >= 100:
        return f"{giga:,.0f}"
    return f"{giga:.3g}" if giga < 1 else f"{giga:.2f}"


COLUMNS = (
    "configuration",
    "visual tokens kept / total",
    "prompt tokens",
    "predicted prefill GFLOPs (share)",
    "vision + selection ms",
    "prefill ms (share)",
    "TTFT ms (share)",
    "decode ms/token",
    "peak memory MiB (+ during call)",
    "KV cache MiB",
)


def render_markdown(report: dict) -> str:
    settings, model = report["settings"], report["model"]
    lines = ["# Efficiency profile", ""]
    if report.get("command"):
        lines += [f"Command: `{report['command']}`", ""]
    lines += [
        f"Hardware: {report['hardware']}; {report['software']}.",
        "",
        (
            f"Model: `{model['id']}` ({model['class']}, {model['parameters'] / 1e6:,.1f} M parameters, language model "
            f"{model['text_hidden_size']} x {model['text_layers']} layers), {model['dtype']}, "
            f"attention `{model['attn_implementation']}`."
        ),
        "",
        (
            f"Work: {len(settings['images'])} image(s), one prompt each (batch size 1), prompt {settings['prompt']!r}, "
            f"{settings['max_new_tokens']} new tokens per call; {settings['warmup']} warm-up call(s) per configuration, "
            f"then {settings['repeats']} interleaved repeats; each time is the median over repeats, averaged over images. "
            f"Peak memory: {settings['memory']}."
        ),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]

    def share(value) -> str:
        return "" if value is None else f" ({value:.2f})"

    for row in report["rows"]:
        lines.append(
            "| "
            + " | ".join(
                [
                    row["configuration"],
                    f"{row['visual_tokens_kept']:,.0f} / {row['visual_tokens_total']:,.0f}",
                    f"{row['prompt_tokens']:,.0f}",
                    f"{_flops(row['prefill_flops'])} ({row['prefill_flops_share']:.2f})",
                    _fmt(row["vision_selection_s"], 1e3),
                    _fmt(row["prefill_s"], 1e3) + share(row["prefill_time_share"]),
                    _fmt(row["ttft_s"], 1e3) + share(row["ttft_share"]),
                    _fmt(row["decode_s_per_token"], 1e3, 2),
                    _fmt(row["peak_memory_bytes"], 1 / MiB, 0)
                    + (
                        ""
                        if row["peak_memory_above_start_bytes"] is None
                        else f" (+{row['peak_memory_above_start_bytes'] / MiB:,.0f})"
                    ),
                    _fmt(row["kv_cache_bytes"], 1 / MiB, 2),
                ]
            )
            + " |"
        )
    lines += [
        "",
        (
            "Columns: visual tokens per image (row newlines included) and the prompt length that reached the language "
            "model; the predicted prefill FLOPs of that prompt (`llava_codebook.flops.prefill_flops`: "
            "`2 * n * P + 4 * n^2 * d_attn` per layer, `P` the attention and MLP weights, plus the LM head on the last "
            "token) and their share of the unpruned prompt's; vision + selection = from the call to the start of the "
            "language model's prefill; prefill = the language model's first forward pass; TTFT = time to the first new "
            "token; decode = mean time per following token; shares in parentheses are relative to the `none` row; "
            "peak memory during the call (in parentheses: above what was held when it started); the KV cache after "
            "prefill."
        ),
        "",
    ]
    return "\n".join(lines)


def write_report(report: dict, out: str | Path) -> tuple[Path, Path]:
    """Write `OUT.md` and `OUT.json` (a `.md` / `.json` suffix on `out` is dropped first)."""
    out = Path(out)
    if out.suffix in (".md", ".json"):
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    markdown, data = out.with_name(out.name + ".md"), out.with_name(out.name + ".json")
    markdown.write_text(render_markdown(report))
    data.write_text(json.dumps(report, indent=2) + "\n")
    return markdown, data


__all__ = [
    "Budget",
    "Configuration",
    "cache_bytes",
    "collect_images",
    "parse_budgets",
    "parse_strategies",
    "render_markdown",
    "run_profile",
    "write_report",
]
