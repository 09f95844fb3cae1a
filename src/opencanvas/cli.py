"""The `opencanvas` command line: one verb per stage (see docs/architecture.md).

Each stage package registers its own verbs (`register(app)`), and imports its
heavy dependencies (torch, transformers) inside the command, so `--help` and
catalog work stay fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from opencanvas import __version__
from opencanvas.cli_common import fail
from opencanvas.workspace import InvalidName


class _Verbs(TyperGroup):
    """The root group: a bad name from any verb becomes one error line, not a traceback."""

    def invoke(self, ctx: Any) -> Any:  # typer's own click Context; its type is private
        try:
            return super().invoke(ctx)
        except InvalidName as err:
            raise fail(str(err)) from None


def _print_version(value: bool) -> None:
    # Eager, so `opencanvas --version` answers before click asks for a command.
    if value:
        typer.echo(f"opencanvas {__version__}")
        raise typer.Exit()


app = typer.Typer(
    cls=_Verbs,
    name="opencanvas",
    help="Build text-to-image diffusion models from openly licensed images, with provenance "
    "for every pixel (CommonCanvas recipe). Run `opencanvas demo` for the whole pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: rich's tables truncate option names at 80 columns
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    workspace: Annotated[
        Path | None,
        typer.Option("-w", "--workspace", help="Workspace directory for every verb (default: current directory).",
                     file_okay=False),
    ] = None,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_print_version)] = False,
) -> None:
    if workspace is not None:
        # Verbs read it through their own -w option's envvar, so both spellings work:
        # `opencanvas -w DIR catalog stats` and `opencanvas catalog stats -w DIR`.
        os.environ["OPENCANVAS_WORKSPACE"] = str(workspace)


def _register_stages() -> None:
    from opencanvas.caption import cli as caption_cli
    from opencanvas.caption_quality import cli as caption_quality_cli
    from opencanvas.cards import cli as cards_cli
    from opencanvas.catalog import cli as catalog_cli
    from opencanvas.components import cli as components_cli
    from opencanvas.demo import cli as demo_cli
    from opencanvas.distill import cli as distill_cli
    from opencanvas.encode import cli as encode_cli
    from opencanvas.fetch import cli as fetch_cli
    from opencanvas.humaneval import cli as humaneval_cli
    from opencanvas.provenance import cli as provenance_cli
    from opencanvas.publish import cli as publish_cli
    from opencanvas.sample import cli as sample_cli
    from opencanvas.study import cli as study_cli
    from opencanvas.train import cli as train_cli
    from opencanvas.web import cli as web_cli

    for module in (catalog_cli, fetch_cli, caption_cli, caption_quality_cli, components_cli, encode_cli,
                   train_cli, sample_cli, provenance_cli, distill_cli, study_cli, cards_cli, publish_cli, demo_cli,
                   humaneval_cli, web_cli):
        module.register(app)


_register_stages()


def main() -> None:
    app()
