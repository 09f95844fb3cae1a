"""The `--c2pa-*` options that every image-writing verb takes, and turning them on for one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer

from opencanvas.cli_common import console, fail
from opencanvas.marking.marker import (
    NO_C2PA_NOTICE,
    Marker,
    activate,
    deactivate,
    resolve_marker,
    set_process_marker,
)
from opencanvas.workspace import Workspace

C2paCertOption = Annotated[Path | None, typer.Option(
    "--c2pa-cert", help="PEM certificate chain to sign C2PA manifests with (default: [c2pa] cert in "
    "opencanvas.toml).", dir_okay=False)]
C2paKeyOption = Annotated[Path | None, typer.Option(
    "--c2pa-key", help="PEM private key of --c2pa-cert (default: [c2pa] key in opencanvas.toml).", dir_okay=False)]
C2paOmitPromptOption = Annotated[bool, typer.Option(
    "--c2pa-omit-prompt", help="Leave the prompt and seed out of the C2PA manifest.")]


def apply_marking(ws: Workspace, cert: Path | None, key: Path | None, omit_prompt: bool,
                  process_wide: bool = False) -> Marker:
    """Check the signing credentials now (before any image is written) and mark every image this command
    writes (every thread's too with `process_wide`, for a server); the marker is dropped when it ends."""
    try:
        marker = resolve_marker(ws.settings(), ws.root, cert, key, omit_prompt)
    except ValueError as e:
        raise fail(str(e)) from None
    if marker.credentials is None:
        console.print(NO_C2PA_NOTICE, highlight=False)
    ctx = click.get_current_context(silent=True)
    if process_wide:
        set_process_marker(marker)
        if ctx is not None:
            ctx.call_on_close(lambda: set_process_marker(None))
        return marker
    token = activate(marker)
    if ctx is not None:
        ctx.call_on_close(lambda: deactivate(token))
    return marker
