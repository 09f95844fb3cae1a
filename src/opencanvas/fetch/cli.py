"""`opencanvas fetch --subset NAME` fetches; `opencanvas fetch stats --subset NAME` reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opencanvas.cli_common import WorkspaceOption, console, fail, open_workspace, print_settings, require

SubsetOption = Annotated[str | None, typer.Option("--subset", "-s", help="Subset name (subsets/<NAME>.parquet).")]


def register(app: typer.Typer) -> None:
    """Add `fetch` (a group: running it fetches; `fetch stats` reports) to the root app."""
    group = typer.Typer(
        rich_markup_mode=None,  # plain help: rich truncates option names at 80 columns
        help="Fetch a subset's images into WebDataset shards under images/<subset>/ (resumable: "
        "re-run the same command after an interruption). `opencanvas fetch stats --subset NAME` reports.",
        invoke_without_command=True, no_args_is_help=False)
    group.callback()(run_fetch)
    group.command("stats", help="Counts by status and reason, bytes, and a resolution histogram "
                  "(images/<subset>/stats/).")(run_stats)
    app.add_typer(group, name="fetch")


def run_fetch(
    ctx: typer.Context,
    subset: SubsetOption = None,
    workspace: WorkspaceOption = Path("."),
    shard_size: Annotated[int, typer.Option(help="Images per shard (the unit of work and of resume).")] = 1000,
    workers: Annotated[int, typer.Option(help="Shards fetched in parallel (processes on this machine).")] = 1,
    threads: Annotated[int, typer.Option(help="Concurrent downloads/decodes inside one shard.")] = 16,
    max_side: Annotated[int, typer.Option(help="Resize so the long side is at most this (never upscale); "
                                          "0 keeps the native resolution.")] = 1024,
    min_side: Annotated[int, typer.Option(help="Skip images whose short side is below this.")] = 256,
    max_pixels: Annotated[int, typer.Option(
        help="Downscale images with more pixels than this while decoding (JPEG: at a reduced DCT scale; "
        "others: whole, one at a time).")] = 64_000_000,
    max_decode_pixels: Annotated[int, typer.Option(help="Refuse images with more pixels than this before decoding "
                                                   "(decompression-bomb cap).")] = 180_000_000,
    near_dup_distance: Annotated[int, typer.Option(help="Perceptual-hash Hamming distance (of 64 bits) for "
                                                   "near duplicates; -1: exact duplicates only.")] = 2,
    placeholder_copies: Annotated[int, typer.Option(help="The same bytes behind this many items or more are a "
                                                    "placeholder ('image not available'): all skipped; 0: off.")] = 10,
    contact: Annotated[str | None, typer.Option(
        help="Contact URL in the User-Agent, so site owners can reach you (default: [fetch] contact in "
        "opencanvas.toml, else the project page).", envvar="OPENCANVAS_CONTACT")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per connect/read before a retry.")] = 20.0,
    retries: Annotated[int, typer.Option(help="Retries after timeouts, 429 and 5xx (exponential backoff).")] = 3,
    backoff: Annotated[float, typer.Option(help="First retry wait in seconds (doubles, with jitter).")] = 1.0,
    max_backoff: Annotated[float, typer.Option(help="Longest wait (also the longest Retry-After honoured).")] = 60.0,
    max_redirects: Annotated[int, typer.Option(help="Redirects followed per URL.")] = 5,
    max_bytes: Annotated[int, typer.Option(help="Largest response or file accepted, in bytes.")] = 50 * 1024 * 1024,
    domain_concurrency: Annotated[int, typer.Option(help="Simultaneous requests per domain (per worker).")] = 4,
    domain_rps: Annotated[float, typer.Option(help="Requests per second per domain (per worker); 0: no limit.")] = 10.0,
    ignore_robots: Annotated[bool, typer.Option(
        "--ignore-robots", help="Do not honour robots.txt (X-Robots-Tag opt-outs are still honoured). "
        "For your own mirrors only.")] = False,
    allow_private_addresses: Annotated[bool, typer.Option(
        "--allow-private-addresses", help="Allow URLs resolving to private/loopback/link-local addresses "
        "(tests and local mirrors only).")] = False,
    rank: Annotated[int, typer.Option(help="This process's rank (SLURM-style: each rank takes its share).")] = 0,
    world: Annotated[int, typer.Option(help="Number of ranks.")] = 1,
    engine: Annotated[str, typer.Option(help="'local' (process pool) or 'ray' (Ray cluster).")] = "local",
    verify: Annotated[str, typer.Option(
        help="How finished shards are checked against their index before being skipped: 'sha256' (reads every "
        "tar) or 'size' (finds truncation only; for catalogs of many terabytes).")] = "sha256",
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Plan the shards (images/<subset>/plan.parquet) and print shards, rows and rows per "
        "host; no HTTP.")] = False,
) -> None:
    """Fetch the subset's images (runs when no subcommand is given)."""
    if ctx.invoked_subcommand is not None:
        return
    if subset is None:
        console.print(ctx.get_help())
        raise fail("--subset is required, e.g. `opencanvas fetch --subset commercial`")
    if engine not in ("local", "ray"):
        raise fail(f"--engine must be 'local' or 'ray', got {engine!r}")
    from opencanvas.fetch.http import DEFAULT_CONTACT, HttpConfig
    from opencanvas.fetch.stage import FetchOptions, fetch

    ws = open_workspace(workspace)
    require(ws, "subset", subset)
    if dry_run:
        from opencanvas.fetch.stage import dry_run as plan_only

        try:
            report = plan_only(ws, subset, shard_size=shard_size, rank=rank, world=world)
        except (FileNotFoundError, ValueError) as e:
            raise fail(str(e)) from None
        print_settings(f"fetch --dry-run: {subset}", report)
        return
    contact = contact or ws.settings().get("fetch", {}).get("contact") or DEFAULT_CONTACT
    http = HttpConfig(contact=contact, timeout=timeout, retries=retries, backoff=backoff, max_backoff=max_backoff,
                      max_redirects=max_redirects, max_bytes=max_bytes, domain_concurrency=domain_concurrency,
                      domain_rps=domain_rps, respect_robots=not ignore_robots,
                      allow_private_addresses=allow_private_addresses)
    options = FetchOptions(max_side=max_side, min_side=min_side, max_pixels=max_pixels,
                           max_decode_pixels=max_decode_pixels,
                           near_dup_distance=near_dup_distance, placeholder_copies=placeholder_copies,
                           threads=threads, verify=verify, http=http)
    print_settings("fetch", {"workspace": str(ws.root), "subset": subset, "shard_size": shard_size,
                             "workers": workers, "rank/world": f"{rank}/{world}", "engine": engine,
                             **{k: v for k, v in vars(options).items() if k != "http"}, **vars(http)})
    try:
        stats = fetch(ws, subset, shard_size=shard_size, workers=workers, options=options, rank=rank, world=world,
                      engine=engine)  # type: ignore[arg-type]
    except (FileNotFoundError, ValueError) as e:
        raise fail(str(e)) from None
    for note in stats.notes:
        console.print(f"[yellow]{note}[/]")
    print_settings("fetched", {k: v for k, v in stats.to_dict().items() if k not in ("reasons", "notes")})
    if stats.reasons:
        print_settings("reasons" + ("" if stats.complete else " (this run)"), stats.reasons)
    if not stats.complete:
        console.print("[yellow]not every shard is finished yet (other ranks?): re-run to finish and "
                      "deduplicate across shards[/]")


def run_stats(subset: SubsetOption = None, workspace: WorkspaceOption = Path("."),
              verify: Annotated[str, typer.Option(help="Tar check: 'sha256' (reads every tar) or 'size'.")] = "sha256",
              ) -> None:
    """Report on a fetched subset."""
    if subset is None:
        raise fail("--subset is required, e.g. `opencanvas fetch stats --subset commercial`")
    from opencanvas.fetch.stats import fetch_stats

    try:
        ws = open_workspace(workspace)
        require(ws, "fetched", subset)
        report = fetch_stats(ws, subset, verify=verify)
    except FileNotFoundError as e:
        raise fail(str(e)) from None
    print_settings(f"fetch stats: {subset}", report)
