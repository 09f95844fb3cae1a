"""The demo's closing summary: what was made, where, and the key figures."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from opencanvas.progress import console
from opencanvas.workspace import Workspace


def print_summary(ws: Workspace, results: dict[str, dict[str, Any]]) -> None:
    table = Table(title="OpenCanvas demo", title_justify="left")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("key figures")
    for stage, summary in results.items():
        figures = {k: v for k, v in summary.items() if k != "seconds" and not isinstance(v, (dict, list))}
        text = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(figures.items())[:6])
        table.add_row(stage, f"{summary.get('seconds', 0):.0f}", text)
    console.print(table)
    rows = results.get("eval", {}).get("rows", [])
    guided = [r for r in rows if not r.get("baseline") and r.get("clip_score") is not None]
    uncond = [r for r in rows if r.get("baseline") and r.get("clip_score") is not None]
    if guided and uncond:
        best = max(guided, key=lambda r: r["clip_score"])
        console.print(f"CLIP score on held-out prompts: guided (g={best['guidance']:g}) "
                      f"{best['clip_score']:.2f} vs unconditional {uncond[0]['clip_score']:.2f}")
    for what, rel in (("sample grid", results.get("sample", {}).get("grid")),
                      ("cards", results.get("card", {}).get("cards"))):
        if rel:
            console.print(f"{what}: {ws.root / rel}")
