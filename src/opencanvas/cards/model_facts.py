"""Facts about a trained run and its components, read from the run's records."""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any

from safetensors import safe_open

from opencanvas.cards.records import Sources, read_json
from opencanvas.train.checkpoint import latest_checkpoint, load_checkpoint, tensors_hash
from opencanvas.train.to_diffusers import EXPORTS_FILE
from opencanvas.workspace import Workspace, is_name


def count_parameters(files: list[Path], prefix: str = "") -> int:
    """Parameters in safetensors files (headers only; no weights are loaded)."""
    total = 0
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                if name.startswith(prefix):
                    n = 1
                    for d in st.get_slice(name).get_shape():
                        n *= d
                    total += n
    return total


def component_facts(ws: Workspace, spec: str, kind: str, src: Sources) -> dict[str, Any]:
    """Where an autoencoder / text encoder came from, and its size."""
    trained = (ws.autoencoder_dir(spec) if kind == "autoencoder" else ws.clip_dir(spec)) if is_name(spec) else None
    if trained is not None and trained.is_dir():
        record = read_json(trained / "opencanvas.json")
        src.add(ws, trained / "opencanvas.json")
        if (trained / "report.json").exists():   # held-out quality (the autoencoder's bicubic baseline)
            record = {**record, "report": {**record.get("report", {}),
                                           **read_json(src.add(ws, trained / "report.json"))}}
        weights = [Path(p) for p in glob.glob(str(trained / "**" / "*.safetensors"), recursive=True)]
        prefix = {"text_encoder": "text_model.", "image_clip": "vision_model."}.get(kind, "")
        return {"spec": spec, "origin": "trained here", "record": record,
                "parameters": count_parameters(weights, prefix) if weights else None,
                "path": ws.relative(trained)}
    return {"spec": spec, "origin": "pretrained", "record": {}, "parameters": None, "path": spec}


def run_facts(ws: Workspace, run: str, src: Sources) -> dict[str, Any]:
    run_dir = ws.run_dir(run)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"run {run!r} has no config.json ({config_path}): train it with `opencanvas train`")
    config = json.loads(src.add(ws, config_path).read_text())
    summary_path = run_dir / "summary.json"
    summary = json.loads(src.add(ws, summary_path).read_text()) if summary_path.exists() else {}
    ckpt = latest_checkpoint(run_dir)
    unet_params = count_parameters([src.add(ws, ckpt)], "model/") if ckpt else None
    distill_path = run_dir / "distill.json"  # a guidance-distilled student (opencanvas distill)
    distilled = json.loads(src.add(ws, distill_path).read_text()) if distill_path.exists() else {}
    return {"config": config, "summary": summary, "distill": distilled,
            "checkpoint": ws.relative(ckpt) if ckpt else None,
            "unet_parameters": unet_params, "weights_sha256": weights_hashes(ckpt) if ckpt else {}}


def weights_hashes(checkpoint: Path) -> dict[str, str]:
    """sha256 of the EMA weights (what sample, eval and export use) and of the raw weights, when present.

    The same digest as `InferencePipeline.weights_hash` (train.checkpoint.tensors_hash), so the card's
    hash matches the one in eval reports, sample PNGs and an exported folder's opencanvas.json.
    """
    out = {}
    for part in ("ema", "model"):
        ckpt = load_checkpoint(checkpoint, parts=(part,))
        weights = ckpt.ema if part == "ema" else ckpt.model
        if weights:
            out["ema" if part == "ema" else "raw"] = tensors_hash(weights)
    return out


def export_folders(ws: Workspace, run: str) -> list[Path]:
    """Folders `opencanvas export` wrote for this run that still hold it (runs/<run>/exports.json)."""
    record = read_json(ws.run_dir(run) / EXPORTS_FILE)
    out = []
    for entry in record.get("exports", []):
        path = Path(entry["path"])
        path = path if path.is_absolute() else ws.root / path
        if read_json(path / "opencanvas.json").get("run") == run:
            out.append(path)
    return out


def eval_reports(ws: Workspace, run: str, src: Sources) -> list[dict[str, Any]]:
    """Every finished evaluation of the run (runs/<run>/eval/<id>/report.json), oldest first."""
    reports = []
    for path in sorted(ws.run_dir(run).glob("eval/*/report.json"), key=lambda p: p.stat().st_mtime):
        reports.append({"id": path.parent.name, **json.loads(src.add(ws, path).read_text())})
    return reports


def extra_component_facts(ws: Workspace, config: dict[str, Any], src: Sources) -> dict[str, Any]:
    """`text_encoder_2` and `image_clip` facts where the run conditions on them (two encoders, text+image)."""
    data = config.get("data", {})
    out = {}
    encoders = list(data.get("text_encoders") or [])
    if len(encoders) > 1 and config.get("text_encoders") != 1:
        out["text_encoder_2"] = component_facts(ws, str(encoders[1]), "text_encoder", src)
    if config.get("conditioning") == "text+image" and data.get("image_embeddings"):
        out["image_clip"] = component_facts(ws, str(data["image_embeddings"]), "image_clip", src)
    return out
