"""CLI verbs: `verify`, `c2pa make-test-cert`, `takedown`, `trace` (registered by opencanvas.cli)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from opencanvas.cli_common import WorkspaceOption, fail, open_workspace

c2pa_app = typer.Typer(help="C2PA signing credentials for marked images.", no_args_is_help=True)


@c2pa_app.command("make-test-cert")
def make_test_cert_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for c2pa-cert.pem and c2pa-key.pem.",
                                      file_okay=False)] = Path("."),
    name: Annotated[str, typer.Option("--name", help="Signer name in the certificate.")]
    = "OpenCanvas local test signer",
    days: Annotated[int, typer.Option("--days", min=1, help="Days the certificate is valid.")] = 365,
) -> None:
    """Make a local certificate + key for C2PA signing (on no trust list: for testing, not publishing)."""
    from opencanvas.marking.certificates import make_test_cert

    cert, key = make_test_cert(out, name, days)
    typer.echo(f"wrote {cert} and {key}; sign with --c2pa-cert {cert} --c2pa-key {key}, or put them under [c2pa] "
               "cert/key in opencanvas.toml")


def verify_command(
    images: Annotated[list[Path], typer.Argument(help="Images to check (PNG, JPEG, WebP).", exists=True,
                                                 dir_okay=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdicts as JSON.")] = False,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Check each image's C2PA manifest and IPTC mark, and its claimed weights against this workspace's run.

    Exits 1 when any image is not valid.
    """
    from opencanvas.provenance.verify import verify_image

    ws = open_workspace(workspace)
    try:
        verdicts = [verify_image(p, ws) for p in images]
    except OSError as e:
        raise fail(f"cannot read an image: {e}") from None
    if as_json:
        typer.echo(json.dumps([v.to_dict() for v in verdicts], indent=2))
    else:
        for v in verdicts:
            m = v.manifest
            typer.echo(f"{v.path}: {'valid' if v.valid else 'not valid'}")
            if v.reasons:
                typer.echo("  why: " + "; ".join(v.reasons))
            typer.echo(f"  C2PA manifest: {'present' if m.present else 'absent'}"
                       + (f", {'valid' if m.valid else 'not valid'}, signed by {m.signer} ({m.issuer})"
                          f"{'' if m.trusted else ', signer not on a C2PA trust list'}" if m.present else ""))
            g = m.generation
            if g:
                typer.echo(f"  model: {g.get('run')} weights {str(g.get('weights_sha256'))[:16]}…; data: "
                           f"{g.get('license_policy')} catalog {str(g.get('catalog_hash'))[:16]}")
            typer.echo(f"  XMP DigitalSourceType: {v.xmp.get('digital_source_type', 'absent')}")
            if v.workspace is not None:
                typer.echo(f"  workspace: {v.workspace.detail}")
    if not all(v.valid for v in verdicts):
        raise typer.Exit(code=1)


def takedown_command(
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the tombstone table and the record).")]
    = ...,  # type: ignore[assignment]
    key: Annotated[list[str] | None, typer.Option("--key", help="Catalog key to remove (repeatable).")] = None,
    author: Annotated[list[str] | None, typer.Option(
        "--author", help="Remove every image by this creator (name or creator URL; repeatable).")] = None,
    url: Annotated[list[str] | None, typer.Option(
        "--url", help="Remove the image at this landing or download URL (repeatable).")] = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Remove images everywhere (catalog, subsets, shards, captions, latents), tombstone their keys, and write
    takedowns/ID.json naming every autoencoder, CLIP and run that trained on them. Re-run to resume."""
    from opencanvas.provenance.takedown import takedown

    ws = open_workspace(workspace)
    try:
        record = takedown(ws, key or [], author or [], url or [], reason)
    except ValueError as e:
        raise fail(str(e)) from None
    removed = ", ".join(f"{n} {kind}" for kind, n in record["removed"].items() if n) or "nothing left to remove"
    typer.echo(f"takedown {record['id']}: {len(record['keys'])} images; removed {removed}")
    retrain = record["affected"]["retrain"]
    typer.echo(f"retrain: {', '.join(retrain)}" if retrain else "no trained component or run saw these images")
    typer.echo(f"record: {ws.root / 'takedowns' / (record['id'] + '.json')}")


def trace_command(
    run: Annotated[str, typer.Option("--run", help="Training run under runs/.")],
    key: Annotated[str, typer.Option("--key", help="Catalog key of the image.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Did run R train on image K? (From its latent set, held-out split and past takedowns.)"""
    from opencanvas.provenance.takedown import trace

    try:
        answer = trace(open_workspace(workspace), run, key)
    except ValueError as e:
        raise fail(str(e)) from None
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
    else:
        typer.echo(f"{'yes' if answer['trained_on'] else 'no'}: {answer['why']}")


def register(app: typer.Typer) -> None:
    """Add the provenance verbs to the root app."""
    app.add_typer(c2pa_app, name="c2pa")
    app.command("verify")(verify_command)
    app.command("takedown")(takedown_command)
    app.command("trace")(trace_command)
