"""The `llava-codebook` command line. Heavy imports happen inside each command."""

from typing import Annotated, Optional

import typer

from .codebooks.commands import register as register_codebook_commands

app = typer.Typer(help="Redundancy-codebook visual token pruning for LLaVA-NeXT models.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Redundancy-codebook visual token pruning for LLaVA-NeXT models."""


@app.command()
def convert(
    base: Annotated[str, typer.Option(help="Stock LLaVA-NeXT checkpoint: Hub repo id or local directory.")],
    codebook: Annotated[
        str, typer.Option(help="Codebook: Hub repo id or local directory holding codebook.safetensors.")
    ],
    out: Annotated[str, typer.Option(help="Directory to write the pruning-enabled repo to.")],
    threshold: Annotated[
        Optional[float], typer.Option(help="codebook_threshold in [-1, 1] (higher keeps more).")
    ] = None,
    base_revision: Annotated[Optional[str], typer.Option(help="Branch, tag or commit of --base.")] = None,
    codebook_revision: Annotated[Optional[str], typer.Option(help="Branch, tag or commit of --codebook.")] = None,
    push_to: Annotated[Optional[str], typer.Option(help="Also upload the result to this Hub repo id.")] = None,
    create_pr: Annotated[bool, typer.Option(help="With --push-to: open a pull request instead of committing.")] = False,
    private: Annotated[Optional[bool], typer.Option(help="With --push-to: create the repo as private.")] = None,
) -> None:
    """Make a pruning-enabled trust_remote_code repo from a stock LLaVA-NeXT checkpoint and a codebook."""
    from .convert import convert_checkpoint

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
    )
    typer.echo(f"Wrote {path}" + (f" and pushed it to {push_to}" if push_to else ""))


# The builder's commands (build, push, import-seed, inspect) live beside the builder.
register_codebook_commands(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
