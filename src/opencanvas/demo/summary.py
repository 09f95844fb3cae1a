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
    for what, key in (("held-out captions", "rows"), ("the 8 grid prompts", "grid_rows")):
        scored = [r for r in results.get("eval", {}).get(key, []) if r.get("prompt_retrieval_top1") is not None]
        if scored:
            chance = results["eval"].get("grid_chance" if key == "grid_rows" else "chance") or {}
            cells = ", ".join(f"g={r['guidance']:g} {r['prompt_retrieval_top1']:.0%}" for r in scored)
            console.print(f"Prompt retrieval top-1 on {what} ({results['eval'].get('clip')}): {cells}; "
                          f"chance {chance.get('top1', 0):.0%}")
    for what, rel in (("sample grid", results.get("sample", {}).get("grid")),
                      ("cards", results.get("card", {}).get("cards"))):
        if rel:
            console.print(f"{what}: {ws.root / rel}")
