"""CLI verbs of this stage (registered by opencanvas.cli): catalog ingest | subset | stats | sources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from opencanvas.cli_common import WorkspaceOption, console, fail, open_workspace, print_settings
from opencanvas.licenses import policy_choices

catalog_app = typer.Typer(help="The license-aware catalog (CommonCatalog builder): ingest sources, cut "
                               "license-policy subsets, report stats.", no_args_is_help=True,
                          rich_markup_mode=None)


@catalog_app.command("ingest")
def ingest_cmd(
    source: Annotated[str, typer.Argument(help="Source adapter: openclipart, yfcc100m, commoncatalog, openverse, "
                                              "wikimedia or folder (`opencanvas catalog sources` describes them).")],
    paths: Annotated[list[Path], typer.Argument(help="Input files or folders of that source.")],
    workers: Annotated[int, typer.Option(help="Processes reading input files in parallel.", min=1)] = 1,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Read SOURCE's files into catalog/<source>/ (rejects into catalog/quarantine/); resumable."""
    from opencanvas.catalog.ingest import ingest
    from opencanvas.catalog.sources import ADAPTERS, InputFormatError

    if source not in ADAPTERS:
        raise fail(f"unknown source {source!r}; choose one of: {', '.join(ADAPTERS)}")
    ws = open_workspace(workspace)
    print_settings("catalog ingest", {"workspace": str(ws.root), "source": source,
                                      "paths": [str(p) for p in paths], "workers": workers})
    try:
        stats = ingest(ws, source, paths, workers=workers)
    except InputFormatError as e:
        raise fail(str(e)) from None
    console.print(
        f"{source}: {stats.inputs} input(s), {stats.resumed} already done; read {stats.read:,}, "
        f"ingested {stats.ingested:,}, quarantined {stats.quarantined:,} "
        f"in {stats.seconds:.1f}s ({stats.rows_per_s:,.0f} records/s)")
    if stats.reasons:
        console.print("quarantine reasons: " + ", ".join(f"{k}={v:,}" for k, v in stats.reasons.items()))


@catalog_app.command("subset")
def subset_cmd(
    policy: Annotated[str, typer.Option(help=f"License policy: {policy_choices()}.")],
    name: Annotated[str, typer.Option(help="Subset name: writes subsets/NAME.parquet.")],
    fraction: Annotated[float, typer.Option(help="Keep this random fraction (0, 1] of the policy's images, "
                                                 "by a hash of (key, seed): with one seed, smaller fractions "
                                                 "lie inside larger ones.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the fraction's random order.")] = 0,
    max_rows: Annotated[int | None, typer.Option(help="Keep at most this many images (first in the seed's "
                                                      "random order).", min=1)] = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Select the catalog keys a license policy admits (ND and unknown licenses never enter)."""
    from opencanvas.catalog.subset import check_fraction, make_subset
    from opencanvas.storage import parquet_metadata

    try:
        check_fraction(fraction)
    except ValueError as e:
        raise fail(str(e)) from None
    ws = open_workspace(workspace)
    print_settings("catalog subset", {"workspace": str(ws.root), "policy": policy, "name": name,
                                      "fraction": fraction, "seed": seed, "max_rows": max_rows})
    try:
        path = make_subset(ws, policy, name, fraction=fraction, seed=seed, max_rows=max_rows)
    except ValueError as e:
        raise fail(str(e)) from None
    import pyarrow.parquet as pq

    meta = parquet_metadata(path)
    part = "" if fraction == 1 and max_rows is None else f" (fraction {fraction}, seed {seed})"
    console.print(f"{ws.relative(path)}: {pq.read_metadata(path).num_rows:,} images{part}, policy {meta['policy']}, "
                  f"catalog {meta['catalog_hash'][:12]}")


@catalog_app.command("stats")
def stats_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print the stats as JSON instead of tables.")] = False,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Counts by source, license and policy, quarantine reasons, and a license-composition chart."""
    from rich.table import Table

    from opencanvas.catalog.stats import CHART_NAME, catalog_stats, write_license_chart

    ws = open_workspace(workspace)
    stats = catalog_stats(ws)
    chart = write_license_chart(stats, ws.catalog_dir / "stats" / CHART_NAME)
    if as_json:
        typer.echo(json.dumps({**stats, "chart": ws.relative(chart)}, indent=2))
        return
    table = Table("source", "inputs", "read", "ingested", "quarantined", "read = ingested + quarantined",
                  title="catalog by source", title_justify="left")
    for source, s in stats["sources"].items():
        table.add_row(source, str(s["inputs"]), f"{s['read']:,}", f"{s['ingested']:,}", f"{s['quarantined']:,}",
                      "yes" if s["balanced"] else "[red]NO[/]")
    console.print(table)
    for title, counts in (("licenses", stats["licenses"]), ("policies", stats["policies"]),
                          ("license origin", stats["license_origin"]), ("quarantine reasons", stats["quarantine"])):
        t = Table("name", "images", title=title, title_justify="left")
        for k, v in counts.items():
            t.add_row(k, f"{v:,}")
        console.print(t)
    console.print(f"catalog hash {stats['catalog_hash'][:16]}; chart: {ws.relative(chart)}")


@catalog_app.command("sources")
def sources_cmd() -> None:
    """List the source adapters and what each reads."""
    from opencanvas.catalog.sources import ADAPTERS

    for name, adapter in ADAPTERS.items():
        console.print(f"[bold]{name}[/]: {adapter.summary}")


def register(app: typer.Typer) -> None:
    """Add this stage's verbs to the root app."""
    app.add_typer(catalog_app, name="catalog")
