"""How much the demo's UNet learns per CPU-minute: recipe variants side by side on one prepared workspace.

The workspace is prepared once with the demo's own stages (ingest, subset, fetch, caption,
autoencoder, CLIP, the evaluation-only CLIP, encode) and reused by every variant; only the
UNet training and its evaluation vary. A copy of a finished demo workspace (`cp -a`) is reused
as it is, its done stages skipped: then every recipe is compared on the autoencoder and CLIPs of
an idle machine's demo, and `name:run=clipart-tiny` scores the demo's own UNet next to them.

Each variant trains the demo's `tiny` preset with the given TrainConfig options for the same
budget (batch: the demo's, unless the variant sets one), then is scored by the evaluation-only
CLIP (never the one the model conditions on):

- prompt retrieval top-1/top-5 among the 8 grid prompts and among held-out captions, with chance;
- FD-CLIP and KID-CLIP of held-out prompts' images against the subset, in the eval CLIP's features;
- CLIP score; every guidance scale next to the unconditional row (g=0).

The first variant is the reference: the summary gives each variant's FD at its best guidance
and its grid top-1 as ratios to it. A budget in images (`--images`) is the fair one on a shared
CPU (the same optimizer steps whatever the load); `--minutes` measures a rate instead.

    python benchmarks/demo_quality.py -w /tmp/bench --images 12000 \\
        --variant base --variant vpred:prediction_type=v_prediction,zero_terminal_snr=true \\
        --variant no-minsnr:min_snr_gamma=0
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

from opencanvas.demo.pipeline import run_demo
from opencanvas.demo.settings import EVAL_CLIP, LATENTS, PROMPTS, SUBSET, DemoSettings
from opencanvas.sample.evaluate import evaluate
from opencanvas.storage import atomic_write_json
from opencanvas.train.loop import train
from opencanvas.workspace import Workspace, is_name

KEYS = ("guidance", "baseline", "clip_score", "prompt_retrieval_top1", "prompt_retrieval_top5", "FD-CLIP", "KID-CLIP")


def parse_value(text: str) -> Any:
    """`true`, `3`, `1e-3`, `[0.9, 0.99]` as JSON; anything else as a string (`v_prediction`)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """`name` or `name:key=value,key=value` -> (name, TrainConfig options)."""
    name, _, rest = spec.partition(":")
    if not is_name(name):
        raise SystemExit(f"variant name {name!r} must be a plain name (letters, digits, - and _)")
    options = {}
    for item in filter(None, re.split(r",(?![^\[]*\])", rest)):   # commas inside [..] belong to a list value
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"variant {name}: option {item!r} must be key=value")
        options[key.strip()] = parse_value(value.strip())
    return name, options


def trained_run(ws: Workspace, run: str) -> dict[str, Any]:
    """A finished run scored as it is (`name:run=clipart-tiny`: the demo's own UNet), never trained further."""
    path = ws.run_dir(run) / "summary.json"
    if not path.exists():
        raise SystemExit(f"run {run!r} has no summary.json in {ws.root}: train it first, or name a finished run")
    summary = json.loads(path.read_text())
    return {"images_seen": summary.get("images_seen"), "images_per_s": summary.get("images_per_s"),
            "seconds": summary.get("wall_seconds"), "run": run}


def train_variant(ws: Workspace, run: str, options: dict[str, Any], images: int | None,
                  minutes: float | None, batch: int) -> dict[str, Any]:
    options = dict(options)
    preset = str(options.pop("preset", "tiny"))
    if "images" in options or "minutes" in options:   # a variant that changes the budget itself
        images, minutes = options.pop("images", None), options.pop("minutes", None)
    budget = {"images": images} if images is not None else {"minutes": minutes}
    t0 = time.perf_counter()
    summary = train(ws, LATENTS, preset, run, batch=int(options.pop("batch", batch)), **budget, **options)
    return {"images_seen": summary.get("images_seen"), "images_per_s": summary.get("images_per_s"),
            "seconds": round(time.perf_counter() - t0, 1)}


def score_variant(ws: Workspace, run: str, args: argparse.Namespace) -> dict[str, Any]:
    common = dict(guidance_scales=args.guidance, steps=args.steps, clip=EVAL_CLIP, batch_size=16, seed=args.eval_seed)
    grid = evaluate(ws, run, list(PROMPTS), SUBSET, metrics=("clip", "retrieval"), n=args.grid_n, **common)
    held = evaluate(ws, run, "heldout", SUBSET, metrics=("fid", "kid", "clip", "retrieval"), n=args.heldout_n,
                    **common)
    return {"grid": {"chance": grid["prompt_retrieval_chance"],
                     "rows": [{k: r.get(k) for k in KEYS if k in r} for r in grid["rows"]]},
            "heldout": {"chance": held["prompt_retrieval_chance"],
                        "rows": [{k: r.get(k) for k in KEYS if k in r} for r in held["rows"]]}}


def headline(result: dict[str, Any]) -> dict[str, float]:
    """The objective's figures: FD at the guided scale with the lowest FD, and the best guided grid top-1."""
    held = [r for r in result["heldout"]["rows"] if not r["baseline"]]
    grid = [r for r in result["grid"]["rows"] if not r["baseline"]]
    best = min(held, key=lambda r: r["FD-CLIP"])
    return {"best_fd_guidance": best["guidance"], "fd": best["FD-CLIP"], "kid": best["KID-CLIP"],
            "grid_top1": max(r["prompt_retrieval_top1"] for r in grid),
            "grid_top5": max(r["prompt_retrieval_top5"] for r in grid),
            "heldout_top1": max(r["prompt_retrieval_top1"] for r in held),
            "clip_score": max(r["clip_score"] for r in held),
            "uncond_grid_top1": result["grid"]["rows"][0]["prompt_retrieval_top1"],
            "uncond_fd": result["heldout"]["rows"][0]["FD-CLIP"]}


def table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: one line per variant, FD and grid top-1 also as ratios to the first variant."""
    heads = {name: headline(r) for name, r in results.items()}
    ref = next(iter(heads.values()))
    lines = ["| variant | images | FD-CLIP (g) | FD ratio | KID-CLIP | grid top-1 | ratio | grid top-5 | "
             "held-out top-1 | CLIP score | uncond grid top-1 / FD |", "|" + "---|" * 11]
    for name, h in heads.items():
        trained = results[name]["train"]
        lines.append(f"| {name} | {trained['images_seen']} | {h['fd']:.4g} (g={h['best_fd_guidance']:g}) | "
                     f"{h['fd'] / ref['fd']:.2f} | {h['kid']:.3g} | {h['grid_top1']:.0%} | "
                     f"{h['grid_top1'] / max(ref['grid_top1'], 1e-9):.2f} | {h['grid_top5']:.0%} | "
                     f"{h['heldout_top1']:.0%} | {h['clip_score']:.2f} | "
                     f"{h['uncond_grid_top1']:.0%} / {h['uncond_fd']:.4g} |")
    grid, held = (next(iter(results.values()))[k]["chance"] for k in ("grid", "heldout"))
    lines += ["", f"chance: grid top-1 {grid['top1']:.1%}, top-5 {grid['top5']:.1%}; held-out top-1 {held['top1']:.1%} "
              f"({held['prompts']} captions)"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-w", "--workspace", type=Path, required=True)
    parser.add_argument("--variant", action="append", required=True, help="name[:key=value,...] (TrainConfig "
                        "options, plus preset, batch, images and minutes; or run=RUN to score a finished run as it "
                        "is); the first is the reference")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--images", type=int, help="UNet training images per variant")
    budget.add_argument("--minutes", type=float, help="UNet training minutes per variant (measured warm-up)")
    parser.add_argument("--batch", type=int, default=DemoSettings().train_batch)
    parser.add_argument("--guidance", type=float, nargs="+", default=[3.0, 5.0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--grid-n", type=int, default=32, help="images per guidance scale on the 8 grid prompts")
    parser.add_argument("--heldout-n", type=int, default=32, help="images per guidance scale on held-out captions")
    parser.add_argument("--eval-seed", type=int, default=0, help="sampling seed: another one re-scores the same "
                        "weights on other noise, which measures the figures' own noise")
    parser.add_argument("--prepare-minutes", type=float, default=DemoSettings().minutes,
                        help="the demo budget whose shares size the autoencoder and CLIPs")
    parser.add_argument("--out", type=Path, help="JSON of every figure (default: benchmarks/results/)")
    args = parser.parse_args()

    ws = Workspace.open(args.workspace)
    run_demo(ws, DemoSettings(minutes=args.prepare_minutes), stop_after="encode")   # done stages are skipped
    variants = [parse_variant(v) for v in args.variant]
    results: dict[str, dict[str, Any]] = {}
    for name, options in variants:
        if "run" in options:
            run = str(options["run"])
            trained = trained_run(ws, run)
        else:
            run = f"quality-{name}"
            trained = train_variant(ws, run, options, args.images, args.minutes, args.batch)
        results[name] = {"options": options, "train": trained, **score_variant(ws, run, args)}
        print(f"{name}: {json.dumps(headline(results[name]))}", flush=True)
    text = table(results)
    print(text)
    out = args.out or Path(__file__).parent / "results" / f"demo_quality-{time.strftime('%Y%m%dT%H%M%S')}.json"
    atomic_write_json(out, {"budget": {"images": args.images, "minutes": args.minutes}, "guidance": args.guidance,
                            "eval_seed": args.eval_seed,
                            "grid_n": args.grid_n, "heldout_n": args.heldout_n, "variants": results,
                            "table": text})
    print(f"figures: {out}")


if __name__ == "__main__":
    main()
