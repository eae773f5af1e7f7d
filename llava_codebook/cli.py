"""The `llava-codebook` command line. Heavy imports happen inside each command.

Errors: every command reports a failure as one line on stderr (`Error: ...`) and a non-zero exit status: 1 for an
error, 2 for a bad option, 130 for Ctrl-C. `--debug` (or LLAVA_CODEBOOK_DEBUG=1) shows the traceback instead.
"""

import contextlib
import os
import sys
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from .codebooks.commands import register as register_codebook_commands

try:  # typer vendors Click; the errors of its parser derive from this
    from typer import TyperException as OptionError
except ImportError:  # older typer, on Click itself
    from click import ClickException as OptionError

DEBUG_ENV = "LLAVA_CODEBOOK_DEBUG"
# Errors that describe the user's input or environment (a bad value, a missing file, an unreachable repo, a missing
# extra): their message is the whole report. Anything else is a bug, reported with its type and the --debug hint.
USER_ERRORS = (ValueError, OSError, ImportError, RuntimeError)


SIGPIPE_EXIT = 128 + 13  # how a shell reports a process ended by SIGPIPE


def _is_transport_error(err: BaseException) -> bool:
    """A network failure of the HTTP client huggingface_hub uses (httpx, or its vendored successor), not a bug."""
    return any(
        cls.__module__.split(".")[0] in ("httpx", "httpx2", "httpcore") and cls.__name__ == "TransportError"
        for cls in type(err).__mro__
    )


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _report(message: str, code: int) -> None:
    typer.secho(f"Error: {_one_line(message)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code)


def _debugging(ctx) -> bool:
    obj = ctx.obj if isinstance(ctx.obj, dict) else {}
    return bool(obj.get("debug")) or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


class ReportingGroup(TyperGroup):
    """The one place where a command's failure becomes a one-line report (all commands run inside `invoke`)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except OptionError as err:  # a bad or missing option of a command: the parser's message, on one line
            if _debugging(ctx):
                raise
            where = err.ctx.command_path if getattr(err, "ctx", None) is not None else ctx.command_path
            _report(f"{err.format_message()} (see '{where} --help')", err.exit_code)
        except BrokenPipeError:
            # The reader of our output went away (`llava-codebook inspect CB | head -8`): that is no error of the
            # command. Stop quietly, with the status of a process ended by SIGPIPE, and keep the interpreter's final
            # flush from failing on the closed pipe again.
            with contextlib.suppress(OSError, ValueError):  # no file descriptor (output captured in-process)
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(code=SIGPIPE_EXIT) from None
        except KeyboardInterrupt as err:
            if _debugging(ctx):
                raise
            # A command that can resume raises a KeyboardInterrupt subclass whose message says how far it got.
            _report(str(err) or "Interrupted.", 130)
        except Exception as err:
            if _debugging(ctx):
                raise
            if isinstance(err, USER_ERRORS):
                _report(str(err) or type(err).__name__, 1)
            if _is_transport_error(err):
                _report(
                    f"The Hugging Face Hub ({_hub_endpoint()}) could not be reached ({type(err).__name__}: {err}). "
                    "Check the connection, HF_ENDPOINT and proxy settings; HF_HUB_OFFLINE=1 works from the local Hub "
                    "cache.",
                    1,
                )
            _report(f"{type(err).__name__}: {err} (unexpected; rerun with --debug for the traceback)", 1)


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"llava-codebook {__version__}")
        raise typer.Exit()


# rich_markup_mode=None: Click's plain help, which wraps descriptions instead of cutting long option names at 80
# columns. No pretty exceptions: tracebacks (with --debug) are plain and never print local variables (tokens).
app = typer.Typer(
    cls=ReportingGroup,
    help="Redundancy-codebook visual token pruning for LLaVA (1.5, NeXT, OneVision, NeXT-Video) and Qwen-VL models.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


@app.callback()
def _group(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", envvar=DEBUG_ENV, help=f"Show tracebacks of errors (or set {DEBUG_ENV}=1).")
    ] = False,
) -> None:
    """Redundancy-codebook visual token pruning for LLaVA (1.5, NeXT, OneVision, NeXT-Video) and Qwen-VL models."""
    ctx.ensure_object(dict)["debug"] = debug


@app.command()
def convert(
    base: Annotated[
        str,
        typer.Option(help="Stock checkpoint of a supported LLaVA or Qwen-VL family: Hub repo id or local directory."),
    ],
    codebook: Annotated[
        str, typer.Option(help="Codebook: Hub repo id or local directory holding codebook.safetensors.")
    ],
    out: Annotated[str, typer.Option(help="New or empty directory to write the pruning-enabled repo to.")],
    overwrite: Annotated[
        bool, typer.Option(help="Replace the contents of a non-empty --out (never a source directory).")
    ] = False,
    threshold: Annotated[
        Optional[float], typer.Option(help="codebook_threshold in [-1, 1] (higher keeps more).")
    ] = None,
    base_revision: Annotated[Optional[str], typer.Option(help="Branch, tag or commit of --base.")] = None,
    codebook_revision: Annotated[Optional[str], typer.Option(help="Branch, tag or commit of --codebook.")] = None,
    push_to: Annotated[Optional[str], typer.Option(help="Also upload the result to this Hub repo id.")] = None,
    create_pr: Annotated[bool, typer.Option(help="With --push-to: open a pull request instead of committing.")] = False,
    private: Annotated[Optional[bool], typer.Option(help="With --push-to: create the repo as private.")] = None,
) -> None:
    """Make a pruning-enabled trust_remote_code repo from a stock LLaVA or Qwen-VL checkpoint and a codebook."""
    from .codebook import CODEBOOK_FILENAME
    from .convert import convert_checkpoint
    from .hub_access import Reference, check_references

    check_references(
        Reference(base, "--base", revision=base_revision),
        Reference(codebook, "--codebook", CODEBOOK_FILENAME, codebook_revision),
        Reference(push_to, "--push-to", None, needs_hub=True, hub_only=True),
    )
    path = convert_checkpoint(
        base,
        codebook,
        out,
        threshold=threshold,
        base_revision=base_revision,
        codebook_revision=codebook_revision,
        push_to=push_to,
        create_pr=create_pr,
        private=private,
        overwrite=overwrite,
    )
    typer.echo(f"Wrote {path}" + (f" and pushed it to {push_to}" if push_to else ""))


@app.command()
def profile(
    model: Annotated[str, typer.Option(help="Pruning-enabled repo or stock checkpoint: Hub id or local directory.")],
    images: Annotated[
        Optional[list[str]],
        typer.Option(help="Image files or folders, one prompt per image (repeat the option or use commas)."),
    ] = None,
    prompts: Annotated[
        Optional[str],
        typer.Option(help='JSON Lines file, one prompt a line: {"text": ..., "images": [files]} (0, 1 or more).'),
    ] = None,
    batch_size: Annotated[
        str, typer.Option(help="Prompts per generate call; several sizes comma-separated (1,8) in one run.")
    ] = "1",
    strategies: Annotated[
        str, typer.Option(help="Comma-separated strategies from the registry; 'none' is the unpruned baseline.")
    ] = "none,codebook",
    budgets: Annotated[
        str, typer.Option(help="Comma-separated budgets per image: visual tokens (320) or shares (0.25, 25%).")
    ] = "320,160,64",
    tile_skipping: Annotated[
        str,
        typer.Option(help="off, on, or both (each pruned configuration also with tile skipping)."),
    ] = "off",
    tile_skip_share: Annotated[
        Optional[float], typer.Option(help="tile_skip_share for tile skipping (default: the model config's).")
    ] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Interleaved timed repeats per image and configuration.")] = 3,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed calls per configuration first.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(min=2, help="Tokens generated per call (EOS suppressed).")] = 16,
    prompt: Annotated[str, typer.Option(help="The question asked about each image.")] = "Describe this image.",
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1, ... (default: cuda if present).")] = None,
    dtype: Annotated[str, typer.Option(help="auto, float16, bfloat16 or float32.")] = "auto",
    attn_implementation: Annotated[
        Optional[str], typer.Option(help="Attention backend: sdpa, eager, flash_attention_2, ...")
    ] = None,
    threads: Annotated[
        Optional[int], typer.Option(min=1, help="torch CPU threads (default: torch's; fewer on a shared CPU).")
    ] = None,
    note: Annotated[Optional[str], typer.Option(help="Free text added to the hardware line of the report.")] = None,
    out: Annotated[str, typer.Option(help="Report path without suffix: writes OUT.md and OUT.json.")] = "profile",
) -> None:
    """Measure vision tower, selection, prefill (and its width), time to first token, decode, tokens/s, peak memory
    and KV cache per strategy, budget and batch size (one run, interleaved repeats) next to the predicted prefill
    FLOPs; write a Markdown and a JSON table."""
    import shlex

    from .hub_access import Reference, check_references
    from .profile import parse_batch_sizes, parse_budgets, parse_strategies, parse_tile_skipping, run_profile
    from .profile_prompts import image_prompts, read_prompts
    from .profile_report import render_markdown, write_report

    parsed_budgets, parsed_strategies = parse_budgets(budgets), parse_strategies(strategies)
    parsed_batch_sizes = parse_batch_sizes(batch_size)
    parse_tile_skipping(tile_skipping)
    # Missing image or prompt files are named before the model is looked for (which may mean the Hub).
    if images:
        image_prompts(images, prompt)
    if prompts:
        read_prompts(prompts)
    check_references(Reference(model, "--model"))
    options = {
        "--model": model,
        "--images": ",".join(images) if images else None,
        "--prompts": prompts,
        "--batch-size": batch_size,
        "--strategies": strategies,
        "--budgets": budgets,
        "--tile-skipping": tile_skipping if tile_skipping != "off" else None,
        "--tile-skip-share": tile_skip_share,
        "--repeats": repeats,
        "--warmup": warmup,
        "--max-new-tokens": max_new_tokens,
        "--prompt": prompt if images else None,  # asked about `--images` only
        "--device": device,
        "--dtype": dtype,
        "--attn-implementation": attn_implementation,
        "--threads": threads,
    }
    command = "llava-codebook profile " + " ".join(
        f"{name} {shlex.quote(str(value))}" for name, value in options.items() if value is not None
    )
    report = run_profile(
        model,
        images or (),
        prompts_file=prompts,
        batch_sizes=parsed_batch_sizes,
        strategies=parsed_strategies,
        budgets=parsed_budgets,
        tile_skipping=tile_skipping,
        tile_skip_share=tile_skip_share,
        repeats=repeats,
        warmup=warmup,
        max_new_tokens=max_new_tokens,
        prompt=prompt,
        device=device,
        dtype=dtype,
        attn_implementation=attn_implementation,
        note=note,
        command=command,
        threads=threads,
        progress=lambda message: typer.echo(message, err=True),
    )
    markdown, data = write_report(report, out)
    typer.echo(render_markdown(report))
    typer.echo(f"Wrote {markdown} and {data}")


# The builder's commands (build, push, import-seed, inspect) live beside the builder.
register_codebook_commands(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
