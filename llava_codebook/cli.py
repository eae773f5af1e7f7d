"""The `llava-codebook` command line. Heavy imports happen inside each command."""

from typing import Annotated, Optional

import typer

app = typer.Typer(help="Redundancy-codebook visual token pruning for LLaVA-NeXT models.", no_args_is_help=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
