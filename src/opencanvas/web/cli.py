"""`opencanvas serve`: the web app (gallery, generation, human-evaluation arena) under uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opencanvas.cli_common import WorkspaceOption, console, open_workspace, print_settings


def serve_command(
    host: Annotated[str, typer.Option(help="Address to bind. Anything but 127.0.0.1/localhost requires tokens.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    clip: Annotated[str | None, typer.Option(help="CLIP for nearest-training-image search (a name under "
                                                "clips/ or a folder); default: the run's own catalog CLIP.")] = None,
    device: Annotated[str, typer.Option(help="Device for generation.")] = "cpu",
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Serve the gallery, generation with provenance, and the pairwise human-evaluation arena."""
    import uvicorn

    from opencanvas.web.app import WebConfig, create_app
    from opencanvas.web.security import is_local

    ws = open_workspace(workspace)
    config = WebConfig(ws=ws, host=host, port=port, clip=clip, device=device)
    print_settings("serve", {"workspace": str(ws.root), "url": f"http://{host}:{port}/", "clip": clip or "(run's)",
                             "access": "local (no tokens)" if is_local(host) else "tokens required"})
    if not is_local(host):
        # Shown once; only its hash is kept in memory.
        console.print(f"admin token: {config.secrets.admin_token}\n"
                      f"admin login: http://{host}:{port}/admin?token={config.secrets.admin_token}")
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning", access_log=False)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
