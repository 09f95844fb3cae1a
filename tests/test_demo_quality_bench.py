"""benchmarks/demo_quality.py's own parsing and its scoring of finished runs (the benchmark itself is minutes)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from opencanvas.workspace import Workspace

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_quality.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("demo_quality", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variant_options_keep_list_values_whole():
    bench = load_bench()
    name, options = bench.parse_variant("b8:prediction_type=v_prediction,adam_betas=[0.9,0.99],batch=8")
    assert name == "b8"
    assert options == {"prediction_type": "v_prediction", "adam_betas": [0.9, 0.99], "batch": 8}
    with pytest.raises(SystemExit, match="key=value"):
        bench.parse_variant("x:batch")


def test_a_finished_run_is_scored_as_it_is(tmp_path: Path):
    bench = load_bench()
    ws = Workspace.open(tmp_path / "ws")
    with pytest.raises(SystemExit, match="no summary.json"):
        bench.trained_run(ws, "clipart-tiny")
    ws.run_dir("clipart-tiny").mkdir(parents=True, exist_ok=True)
    (ws.run_dir("clipart-tiny") / "summary.json").write_text(json.dumps(
        {"images_seen": 22160, "images_per_s": 81.5, "wall_seconds": 272.0}))
    assert bench.trained_run(ws, "clipart-tiny") == {"images_seen": 22160, "images_per_s": 81.5, "seconds": 272.0,
                                                     "run": "clipart-tiny"}
