"""benchmarks/gpu_suite.sh --dry-run: the GPU suite's own code, end to end on CPU with tiny sizes.

GPU time is short and rare, so the script that spends it must not fail on a typo: this runs every
section (UNet training naive vs recipe, autoencoder encode, captioning, sampling) and the report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_suite_dry_run_measures_every_section(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--dry-run", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (report,) = tmp_path.glob("gpu-dry-run-*.json")
    sections = json.loads(report.read_text())["sections"]
    assert list(sections) == ["UNet training, 32 px", "Autoencoder encode", "Captioning", "Sampling",
                              "UNet training, 64 px"]
    assert all("error" not in s and s["rows"] for s in sections.values())
    training = sections["UNet training, 32 px"]["rows"] + sections["UNet training, 64 px"]["rows"]
    assert {(r["px"], r["path"]) for r in training} == {(32, "naive"), (32, "recipe"), (64, "naive"), (64, "recipe")}
    assert all(r["images_per_s"] > 0 and r["train_tflop_per_image"] > 0 for r in training)
    assert sections["Sampling"]["rows"][0]["sampler"] == "dpmpp-2m"
    markdown = report.with_suffix(".md").read_text()
    assert "| px | batch | path | images_per_s" in markdown and "## Captioning" in markdown


def test_gpu_suite_refuses_without_diffusers_or_wheels(tmp_path: Path) -> None:
    """A python without diffusers and no carried wheels: one clear line, not a traceback."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\n[ "$1" = "-c" ] && exit 1\nexit 0\n')
    fake.chmod(0o755)
    tree = tmp_path / "tree"
    (tree / "benchmarks").mkdir(parents=True)
    (tree / "benchmarks" / "gpu_suite.sh").write_bytes((REPO / "benchmarks" / "gpu_suite.sh").read_bytes())
    proc = subprocess.run(["bash", str(tree / "benchmarks" / "gpu_suite.sh"), "--dry-run"],
                          env={**os.environ, "PYTHON": str(fake)}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "benchmarks/wheels/ holds no wheels" in proc.stderr
