"""Studies: nested fractions, the issue's example file end to end, equal compute, errors before any work,
plan / --cell, failed cells, and kill -9 + resume giving the same results.parquet byte for byte.

The workspace is tiny and offline: 64 shape images (subset `c`), an AutoencoderKL with downscale 8
(64 px -> 8x8 latents) as `ae`, and a random tiny CLIP as `clip`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from opencanvas.cli import app
from opencanvas.study.fractions import fraction_keys, in_fraction
from opencanvas.study.results import bootstrap_mean
from opencanvas.study.spec import StudyError, check_workspace, parse_study
from opencanvas.workspace import Workspace
from tests.factories import make_captions, make_image_subset

REPO = Path(__file__).resolve().parents[1]

# The example, verbatim.
MINI = """\
[study]
name = "mini-scaling"
subset = "c"
captioner = "metadata"
resolution = 64
autoencoder = "ae"
text_encoder = "clip"

[axes]
fraction = [0.25, 0.5, 1.0]

[train]
preset = "tiny"
images = 512
batch = 8

[eval]
prompts = "heldout"
n = 8
guidance = [1.0, 4.0]
"""


def small_study(name: str, fractions: list[float], images: int = 128, checkpoint_every: int | None = None) -> str:
    """A cheaper study for the tests that run several times: few images, few sampler steps, CLIP score only."""
    every = f"checkpoint_every = {checkpoint_every}\n" if checkpoint_every else ""
    return f"""\
[study]
name = "{name}"
subset = "c"
resolution = 64
autoencoder = "ae"
text_encoder = "clip"

[axes]
fraction = {fractions}

[train]
images = {images}
batch = 8
{every}
[eval]
n = 4
steps = 3
guidance = [3.0]
metrics = ["clip"]
bootstrap = 50
"""


@pytest.fixture(scope="module")
def base_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from diffusers import AutoencoderKL

    from opencanvas.sample.tiny import write_tiny_clip

    ws = Workspace.open(tmp_path_factory.mktemp("study") / "ws")
    make_image_subset(ws, "c", n=64, size=64, shard_size=32)
    make_captions(ws, "c", "metadata")
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 8, 8, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8,
                  layers_per_block=1, sample_size=64).save_pretrained(ws.autoencoder_dir("ae"))
    write_tiny_clip(ws.clip_dir("clip"))
    return ws.root


def copy_ws(base: Path, dest: Path) -> Workspace:
    shutil.copytree(base, dest)
    return Workspace.open(dest)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def invoke(*args: str) -> object:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


# ---- fractions -------------------------------------------------------------------------

def test_fractions_are_nested_and_follow_the_documented_formula() -> None:
    keys = [f"synthetic:{i:05d}" for i in range(2000)]
    tenth, third, whole = (set(fraction_keys(keys, 7, f)) for f in (0.1, 0.3, 1.0))
    assert tenth < third < whole == set(keys)
    assert 150 < len(tenth) < 250 and 520 < len(third) < 680
    point = int.from_bytes(hashlib.sha256(b"7:synthetic:00042").digest()[:8], "big") / 2**64
    assert in_fraction("synthetic:00042", 7, 0.3) == (point < 0.3)
    assert set(fraction_keys(keys, 8, 0.1)) != tenth  # another seed, another sample
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        in_fraction("k", 0, 0.0)


def test_latent_loader_reads_a_fraction_through_a_key_filter(tmp_path: Path) -> None:
    from opencanvas.encode import LatentLoader, open_latents
    from opencanvas.encode.synthetic import write_random_latents
    from opencanvas.splits import key_fraction

    ws = Workspace.open(tmp_path / "ws")
    write_random_latents(ws, "lat", 200, resolution=64, text_len=8, text_dim=16)
    latent_set = open_latents(ws, "lat")
    keys = latent_set.keys()
    chosen = frozenset(fraction_keys(keys, 0, 0.3))
    loader = LatentLoader(latent_set, 4, seed=0, holdout=0.1, keys=chosen)
    seen = {k for batch in loader for k in batch["keys"]}
    expected = {k for k in chosen if key_fraction(k) >= 0.1}
    assert seen <= expected and len(seen) >= len(expected) - 3  # only the epoch's tail (< one batch) is dropped
    assert len(expected) < 0.4 * len(keys)


def test_bootstrap_interval_covers_the_mean_and_narrows_with_prompts() -> None:
    rng = np.random.default_rng(0)
    few = rng.normal(20, 5, 8)
    many = rng.normal(20, 5, 256)
    lo, hi = bootstrap_mean([few], prompts=8, samples=500)
    assert lo < few.mean() < hi
    lo2, hi2 = bootstrap_mean([many], prompts=256, samples=500)
    assert hi2 - lo2 < (hi - lo) / 2
    # Seeds far apart widen the interval beyond what one seed's prompts give.
    lo3, hi3 = bootstrap_mean([many, many + 10], prompts=256, samples=500)
    assert hi3 - lo3 > 3 * (hi2 - lo2)
    assert bootstrap_mean([few], prompts=8, samples=500) == (lo, hi)  # seeded: reproducible


def test_report_pools_seeds_and_puts_captioners_side_by_side(tmp_path: Path) -> None:
    from opencanvas.storage import atomic_write_json
    from opencanvas.study.cells import study_cells
    from opencanvas.study.report import _grouped, write_report

    text = small_study("grid", [0.5, 1.0]).replace("[axes]", '[axes]\ncaptioner = ["title", "metadata"]')
    spec = parse_study(text.replace("fraction = [0.5, 1.0]", "fraction = [0.5, 1.0]\nseed = [0, 1]"), "grid.toml")
    cells = study_cells(spec)
    assert len(cells) == 8 and spec.axis_names() == ["captioner", "fraction", "seed"]
    ws = Workspace.open(tmp_path / "ws")
    atomic_write_json(ws.root / "studies" / "grid" / "prompts.json",
                      {"sources": ["heldout"], "captioner": "metadata", "prompts": ["a", "b", "c", "d"]})
    rng = np.random.default_rng(0)
    records = []
    for c in cells:
        # metadata beats title by 5 points; seed 1 sits 3 points above seed 0.
        scores = rng.normal(20 + 5 * (c.captioner == "metadata") + 3 * c.seed, 1.0, 4).tolist()
        records.append({"cell": c.index, "label": c.label(), "values": c.values, "run": f"r{c.index}", "latents": "l",
                        "fraction": c.fraction, "captioner": c.captioner, "preset": c.preset, "seed": c.seed,
                        "status": "ok", "reason": "", "train_images": 128, "train_keys": 20, "eval_id": "e",
                        "fd_metric": "FD-CLIP", "kid_metric": "KID-CLIP", "compute": {"steps": 16},
                        "rows": [{"guidance": 0.0, "baseline": True, "clip_score": 15.0},
                                 {"guidance": 3.0, "baseline": False, "clip_score": float(np.mean(scores)),
                                  "clip_scores": scores, "fd": 1.0, "kid": 0.1, "memorization": 0.0}]})
    records[-1] = {**records[-1], "status": "failed", "reason": "RuntimeError: out of memory", "rows": []}
    report = write_report(ws, spec, cells, records)
    text = report.read_text()
    assert "## Captioners side by side" in text and "| guidance | fraction | seed | title | metadata |" in text
    assert "cell 7 (captioner=metadata, fraction=1, seed=1): RuntimeError: out of memory" in text
    assert {p.name for p in report.parent.glob("*.png")} == {"scaling.png", "captions.png"}
    assert pq.read_table(report.parent / "results.parquet").num_rows == 8
    # One line per captioner over the fractions, each point pooling its two seeds into a wider interval.
    series = _grouped(records, spec, 3.0, 4, {"fraction", "seed"})
    assert sorted(series) == ["captioner=metadata", "captioner=title"]
    (x, mean, (lo, hi)), _ = series["captioner=title"]
    assert x == 0.5 and lo < mean < hi and hi - lo > 2.0


# ---- errors before any work ------------------------------------------------------------

@pytest.mark.parametrize(("edit", "message"), [
    (("[axes]", "[axes]\ncolour = [1]"), "unknown axis [axes] colour: allowed are fraction, captioner"),
    (("[train]", "[train]\nlearning = 1"), "unknown key [train] learning: allowed are"),
    (("n = 8", "n = \"eight\""), "[eval] n = 'eight' must be an integer"),
    (("fraction = [0.25, 0.5, 1.0]", "fraction = [0.25, 1.5]"), "fraction 1.5 is outside (0, 1]"),
    (("fraction = [0.25, 0.5, 1.0]", "fraction = [0.0, 1.0]"), "fraction 0.0 is outside (0, 1]"),
    (("fraction = [0.25, 0.5, 1.0]", "fraction = [\"half\"]"), "[axes] fraction = 'half' must be a number"),
    (("subset = \"c\"", "subset = \"d\""), "[study] subset = 'd' does not exist: allowed are c"),
    (("autoencoder = \"ae\"", "autoencoder = \"vae\""),
     "[study] autoencoder = 'vae' does not exist: allowed are a name under autoencoders/ (ae)"),
    (("text_encoder = \"clip\"", "text_encoder = \"clap\""),
     "[study] text_encoder = 'clap' does not exist: allowed are a name under clips/ (clip)"),
    (("preset = \"tiny\"", "preset = \"huge\""), "preset 'huge' is unknown: allowed are tiny"),
])
def test_bad_study_files_fail_in_one_line_before_any_work(base_ws: Path, tmp_path: Path, edit: tuple[str, str],
                                                          message: str) -> None:
    ws = Workspace.open(base_ws)
    text = MINI.replace(*edit)
    assert text != MINI
    with pytest.raises(StudyError) as err:
        check_workspace(ws, parse_study(text, "bad.toml"))
    assert message in str(err.value) and "\n" not in str(err.value)
    result = invoke("study", "run", str(write(tmp_path / "bad.toml", text)), "-w", str(base_ws))
    assert result.exit_code == 2 and "error:" in result.output
    assert message.split(":")[0] in " ".join(result.output.split())
    assert not (base_ws / "studies").exists() and not (base_ws / "runs").exists()


def test_unknown_study_and_cell_out_of_range(base_ws: Path, tmp_path: Path) -> None:
    result = invoke("study", "run", "no-such-study", "-w", str(base_ws))
    assert result.exit_code == 2 and "built-in study (data-scaling, captions)" in " ".join(result.output.split())
    result = invoke("study", "run", str(write(tmp_path / "mini.toml", MINI)), "--cell", "3", "-w", str(base_ws))
    assert result.exit_code == 2 and "cells 0..2" in result.output
    assert not (base_ws / "runs").exists()


def test_builtin_studies_parse() -> None:
    from opencanvas.study.builtin import BUILTIN_STUDIES
    from opencanvas.study.cells import study_cells

    specs = {name: parse_study(text, name) for name, text in BUILTIN_STUDIES.items()}
    assert len(study_cells(specs["data-scaling"])) == 6
    assert {c.images for c in study_cells(specs["data-scaling"])} == {specs["data-scaling"].images}
    assert [c.captioner for c in study_cells(specs["captions"])] == ["title", "title-tags", "metadata"]


# ---- the example ---------------------------------------------------------------

def test_the_example_file_gives_six_rows_at_equal_compute(base_ws: Path, tmp_path: Path) -> None:
    ws = copy_ws(base_ws, tmp_path / "ws")
    study = write(tmp_path / "mini.toml", MINI)
    result = invoke("study", "run", str(study), "-w", str(ws.root))
    assert result.exit_code == 0, result.output
    root = ws.root / "studies" / "mini-scaling"
    table = pq.read_table(root / "results.parquet")
    assert table.num_rows == 6
    rows = table.to_pylist()
    assert [(r["fraction"], r["guidance"]) for r in rows] == [(f, g) for f in (0.25, 0.5, 1.0) for g in (1.0, 4.0)]
    assert {r["status"] for r in rows} == {"ok"}
    assert all(r[k] is not None for r in rows for k in ("clip_score", "fd", "kid", "memorization", "eval_id"))

    # Equal compute: every cell trained on 512 images, from nested key sets of one shared latent set.
    assert {r["train_images"] for r in rows} == {512}
    (latents,) = {r["latents"] for r in rows}
    assert [p.name for p in (ws.root / "latents").iterdir()] == [latents]
    filters = []
    for run in dict.fromkeys(r["run"] for r in rows):
        config = json.loads((ws.run_dir(run) / "config.json").read_text())
        assert config["images"] == 512 and config["latents"] == latents
        assert json.loads((ws.run_dir(run) / "summary.json").read_text())["images_seen"] == 512
        filters.append(set(pq.read_table(ws.root / config["key_filter"]).column("key").to_pylist()))
    assert filters[0] < filters[1] < filters[2]
    keys = [r["train_keys"] for r in rows[::2]]
    assert keys[0] < keys[1] < keys[2]

    # Every figure traces to its run and eval records.
    for r in rows:
        report = json.loads((ws.run_dir(r["run"]) / "eval" / r["eval_id"] / "report.json").read_text())
        evaluated = next(x for x in report["rows"] if x["guidance"] == r["guidance"])
        assert evaluated["clip_score"] == pytest.approx(r["clip_score"])
        assert r["clip_score_lo"] <= r["clip_score"] <= r["clip_score_hi"]
    text = (root / "REPORT.md").read_text()
    assert "fraction = [0.25, 0.5, 1.0]" in text and "c-metadata-64" in text and "Compute per cell" in text
    assert (root / "scaling.png").read_bytes()[:4] == b"\x89PNG"

    # A second run does nothing; a changed file is refused with the changed key named.
    before = {p: p.stat().st_mtime_ns for p in (root / "cells").iterdir()}
    data = (root / "results.parquet").read_bytes()
    assert invoke("study", "run", str(study), "-w", str(ws.root)).exit_code == 0
    assert {p: p.stat().st_mtime_ns for p in (root / "cells").iterdir()} == before
    assert (root / "results.parquet").read_bytes() == data
    changed = invoke("study", "run", str(write(study, MINI.replace("images = 512", "images = 256"))),
                     "-w", str(ws.root))
    assert changed.exit_code == 2 and "changed: train.images" in " ".join(changed.output.split())


# ---- plan, --cell, failed cells ---------------------------------------------------------

def test_plan_cells_and_a_failed_cell(base_ws: Path, tmp_path: Path) -> None:
    ws = copy_ws(base_ws, tmp_path / "ws")
    study = write(tmp_path / "grid.toml", small_study("grid", [0.05, 0.5, 1.0]))
    plan = invoke("study", "plan", str(study), "-w", str(ws.root))
    lines = plan.output.strip().splitlines()
    assert plan.exit_code == 0 and len(lines) == 5
    assert "--prepare" in lines[0] and [f"--cell {k}" in lines[k + 1] for k in range(3)] == [True] * 3
    assert "fraction=0.05" in lines[1] and "--cell" not in lines[-1]

    assert invoke(*lines[2].split("  #")[0].split()[1:]).exit_code == 0  # cell 1 alone
    root = ws.root / "studies" / "grid"
    assert [p.name for p in (root / "cells").iterdir()] == ["001.json"]
    assert not (root / "results.parquet").exists()
    before = (root / "cells" / "001.json").stat().st_mtime_ns

    result = invoke("study", "run", str(study), "-w", str(ws.root))
    assert result.exit_code == 0, result.output
    assert (root / "cells" / "001.json").stat().st_mtime_ns == before  # not run twice
    rows = pq.read_table(root / "results.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["failed", "ok", "ok"]
    assert "fraction 0.05 keeps" in rows[0]["reason"] and rows[0]["clip_score"] is None
    assert "## Failed cells" in (root / "REPORT.md").read_text()
    assert "cell 0 (fraction=0.05) failed" in " ".join(result.output.split())

    # Equal compute by default; mode = "epochs" gives each fraction its own epochs x keys instead.
    from opencanvas.study.cells import study_cells
    from opencanvas.study.runner import train_arguments

    equal = parse_study(study.read_text(), "grid.toml")
    assert [train_arguments(ws, equal, c)["images"] for c in study_cells(equal)[1:]] == [128, 128]
    epochs = parse_study(study.read_text().replace("images = 128", 'mode = "epochs"\nepochs = 3'), "grid.toml")
    args = [train_arguments(ws, epochs, c) for c in study_cells(epochs)[1:]]
    assert [a["images"] for a in args] == [3 * (a["_train_keys"] // 8) * 8 for a in args]
    assert args[0]["images"] < args[1]["images"]


# ---- kill -9 and resume ----------------------------------------------------------------

def _study_process(ws: Path, study: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "OPENCANVAS_PROGRESS": "0"}
    return subprocess.Popen([sys.executable, "-m", "opencanvas", "study", "run", str(study), "-w", str(ws)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_kill_and_resume_gives_identical_results(base_ws: Path, tmp_path: Path) -> None:
    text = small_study("resume", [0.5, 1.0], images=192, checkpoint_every=32)
    study = write(tmp_path / "resume.toml", text)
    straight = copy_ws(base_ws, tmp_path / "straight")
    killed = copy_ws(base_ws, tmp_path / "killed")

    proc = _study_process(killed.root, study)
    root = killed.root / "studies" / "resume"
    deadline = time.monotonic() + 120
    try:
        # Kill -9 while the second cell trains: the first cell is finished, the second has a checkpoint.
        while time.monotonic() < deadline and proc.poll() is None:
            runs = sorted((killed.root / "runs").glob("resume-01-*/checkpoints/*.safetensors"))
            if (root / "cells" / "000.json").exists() and runs:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the study finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (root / "cells" / "001.json").exists() and not (root / "results.parquet").exists()

    assert invoke("study", "run", str(study), "-w", str(killed.root)).exit_code == 0
    assert invoke("study", "run", str(study), "-w", str(straight.root)).exit_code == 0
    a = (root / "results.parquet").read_bytes()
    b = (straight.root / "studies" / "resume" / "results.parquet").read_bytes()
    assert a == b
    assert pq.read_table(root / "results.parquet").num_rows == 2


@pytest.mark.slow
def test_ray_engine_gives_the_local_results(base_ws: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from opencanvas.study.runner import run_study

    text = small_study("on-ray", [0.5, 1.0], images=64)
    spec = parse_study(text, "on-ray.toml")
    local, on_ray = copy_ws(base_ws, tmp_path / "local"), copy_ws(base_ws, tmp_path / "ray")
    run_study(local, spec)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}})
    try:
        result = run_study(on_ray, spec, engine="ray")
    finally:
        ray.shutdown()
    assert sorted(result["cells"]) == [0, 1] and {r["status"] for r in result["cells"].values()} == {"ok"}
    path = Path("studies") / "on-ray" / "results.parquet"
    assert (on_ray.root / path).read_bytes() == (local.root / path).read_bytes()
