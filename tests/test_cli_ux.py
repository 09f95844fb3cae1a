"""What a new user hits on the command line (issue 19 items 5 and 8, issue 22 items 1 and 6)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from opencanvas import __version__
from opencanvas.cli import app
from opencanvas.workspace import Workspace
from tests.factories import make_image_subset

runner = CliRunner()


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


BAD_NAME_COMMANDS = [
    ["train", "--latents", "lat", "--run", "../../x", "--images", "16"],
    ["train", "--latents", "../lat", "--run", "r", "--images", "16"],
    ["autoencoder", "train", "--subset", "shapes", "--name", "/elsewhere/ae", "--steps", "1"],
    ["clip", "train", "--subset", "shapes", "--captioner", "metadata", "--name", "..", "--steps", "1"],
    ["fetch", "--subset", "../../x"],
    ["caption", "--subset", "shapes", "--captioner", "metadata", "--name", ".."],
    ["caption", "--subset", "shapes", "--captioner", "metadata", "--name", "."],
    ["encode", "--subset", "shapes", "--autoencoder", "a", "--text-encoder", "t", "--captioners", "metadata",
     "--name", "../x"],
    ["catalog", "subset", "--policy", "commercial", "--name", "../x"],
    ["export", "--run", "../r", "--out", "exported"],
    ["card", "--run", ".."],
]


@pytest.mark.parametrize("args", BAD_NAME_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_names_that_would_leave_the_workspace_fail_with_one_message(tmp_path: Path, args: list[str]) -> None:
    ws = Workspace.open(tmp_path / "ws")
    make_image_subset(ws, n=8, shard_size=8)
    before = _files(tmp_path)
    result = runner.invoke(app, [*args, "-w", str(ws.root)])
    assert result.exit_code == 2, result.output
    assert "is not allowed: use 1-128 letters, digits" in result.output
    assert isinstance(result.exception, SystemExit)   # fail(), not an uncaught InvalidName
    assert _files(tmp_path) == before   # nothing written, inside or outside the workspace


def test_version_prints_without_a_command() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"opencanvas {__version__}"


@pytest.mark.parametrize("verb", [["train"], ["sample"], ["fetch"], ["autoencoder", "train"], ["caption"]])
def test_help_at_80_columns_shows_every_option_name_whole(verb: list[str]) -> None:
    out = runner.invoke(app, [*verb, "--help"], env={"COLUMNS": "80", "TERM": "xterm-256color"}).output
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    command = get_command(app)
    for name in verb:
        command = command.commands[name]
    for param in command.params:
        for opt in [*param.opts, *param.secondary_opts]:
            if opt.startswith("--"):
                assert opt in out, f"{opt} missing from `{' '.join(verb)} --help` at 80 columns"


def test_demo_fresh_refuses_a_workspace_with_the_users_files(tmp_path: Path) -> None:
    root = tmp_path / "here"
    (root / "src").mkdir(parents=True)
    (root / "my_notes.txt").write_text("mine")
    (root / "runs" / "old").mkdir(parents=True)
    result = runner.invoke(app, ["demo", "--fresh", "--max-images", "50", "--categories", "food", "-w", str(root)])
    assert result.exit_code == 2
    assert "OpenCanvas did not write (my_notes.txt, src/)" in result.output
    assert (root / "my_notes.txt").read_text() == "mine"
    assert (root / "src").is_dir() and (root / "runs" / "old").is_dir()


def test_sample_progress_counts_denoising_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from opencanvas.sample.generate import SampleSettings, plan, sample_to_dir
    from opencanvas.sample.loading import load_folder_pipeline
    from opencanvas.sample.tiny import write_tiny_folder

    monkeypatch.delenv("OPENCANVAS_PROGRESS", raising=False)
    monkeypatch.setenv("OPENCANVAS_PROGRESS_EVERY", "0.000001")   # a line at every update
    pipe = load_folder_pipeline(write_tiny_folder(tmp_path / "tiny"))
    settings = SampleSettings(steps=3, guidance=2.0, sampler="euler", width=16, height=16)
    sample_to_dir(pipe, plan(["a red circle", "a blue square", "a cat"], 1, 0), settings, tmp_path / "out",
                  "tiny", {}, batch_size=2)
    lines = capsys.readouterr().out.splitlines()
    steps = [int(m.group(1)) for m in (re.search(r": (\d+)/6 step", line) for line in lines) if m]
    assert sorted(set(steps)) == [1, 2, 3, 4, 5, 6] and steps == sorted(steps), lines   # 2 batches x 3 steps
    assert lines[-1].startswith("sample 3/3 images: 6/6 step (100%)"), lines


def test_seeds_restart_for_every_prompt(tmp_path: Path) -> None:
    import numpy as np

    from opencanvas.sample.generate import generate, plan
    from opencanvas.sample.loading import load_folder_pipeline
    from opencanvas.sample.tiny import write_tiny_folder

    assert [s.seed for s in plan(["a", "b"], 2, 7)] == [7, 8, 7, 8]
    assert [s.index for s in plan(["a", "b"], 2, 7)] == [0, 1, 2, 3]
    pipe = load_folder_pipeline(write_tiny_folder(tmp_path / "tiny"))
    both = generate(pipe, ["a red circle", "a blue square"], n=2, steps=2, seed=7, sampler="euler")
    alone = generate(pipe, ["a blue square"], n=2, steps=2, seed=7, sampler="euler")
    for a, b in zip(both[2:], alone, strict=True):
        assert np.abs(np.asarray(a, int) - np.asarray(b, int)).max() <= 1   # a prompt's images ignore the others
    help_text = runner.invoke(app, ["sample", "--help"], env={"COLUMNS": "200"}).output
    assert re.search(r"seeds\s+restart\s+per\s+prompt", help_text), help_text


def test_a_new_workspace_directory_is_announced(tmp_path: Path) -> None:
    new = tmp_path / "mistyped"
    result = runner.invoke(app, ["fetch", "stats", "--subset", "x", "-w", str(new)])
    assert f"created a new, empty workspace at {new}" in result.output
    result = runner.invoke(app, ["fetch", "stats", "--subset", "x", "-w", str(new)])
    assert "created a new" not in result.output


def test_not_found_lists_what_exists_and_never_advises_fetching_a_missing_subset(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    make_image_subset(ws, "cc", n=8, shard_size=8)
    (ws.root / "subsets" / "unfetched.parquet").write_bytes(b"")
    result = runner.invoke(app, ["fetch", "--subset", "commercial", "-w", str(ws.root)])
    assert result.exit_code == 2
    assert "no subset 'commercial'" in result.output and "subsets here: cc, unfetched" in result.output
    result = runner.invoke(app, ["caption", "--subset", "CC", "--captioner", "metadata", "-w", str(ws.root)])
    assert "no subset 'CC'" in result.output and "did you mean 'cc'?" in result.output
    assert "opencanvas fetch" not in result.output
    result = runner.invoke(app, ["caption", "--subset", "unfetched", "--captioner", "metadata", "-w", str(ws.root)])
    assert "run `opencanvas fetch --subset unfetched`" in result.output
    for args, listing in ((["train", "--latents", "lat", "--run", "r", "--images", "8"], "latent sets here: none"),
                          (["card", "--run", "r"], "runs here: none"),
                          (["clip", "train", "--subset", "cc", "--captioner", "blip", "--name", "c"],
                           "caption tables here: none")):
        result = runner.invoke(app, [*args, "-w", str(ws.root)])
        assert result.exit_code == 2 and listing in result.output, result.output


def test_settings_tables_show_resolved_values_and_round_floats(tmp_path: Path) -> None:
    from opencanvas.cli_common import rounded

    assert rounded({"seconds": 17.94586798299997, "rows": [0.123456789, 3], "lr": 1e-06}) == {
        "seconds": 17.95, "rows": [0.1235, 3], "lr": 1e-06}
    ws = Workspace.open(tmp_path / "ws")
    make_image_subset(ws, "cc", n=48, shard_size=48)
    result = runner.invoke(app, ["autoencoder", "train", "--subset", "cc", "--name", "ae", "--steps", "1",
                                 "-w", str(ws.root)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    settings = result.output.split("autoencoder train", 1)[1]
    assert "null" not in settings
    for key, value in (("batch_size", "8"), ("learning_rate", "0.004"), ("resolution", "64"), ("train_crop", "32")):
        assert re.search(rf"│ {key}\s+│ {value}\s+│", settings), (key, settings)


def test_caption_samples_table_has_as_many_cells_in_every_row(tmp_path: Path) -> None:
    from tests.factories import make_captions

    ws = Workspace.open(tmp_path / "ws")
    make_image_subset(ws, n=8, shard_size=8)
    make_captions(ws, "shapes", "metadata")   # metadata only: the table had a header cell with no column
    result = runner.invoke(app, ["caption", "stats", "--subset", "shapes", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    table = [line for line in (ws.root / "captions" / "stats" / "shapes" / "samples.md").read_text().splitlines()
             if line.startswith("|")]
    widths = {len(re.findall(r"(?<!\\)\|", line)) for line in table}
    assert len(table) == 2 + 8 and widths == {3}, table


def test_exported_pipeline_defaults_to_the_samplers_default() -> None:
    from diffusers import DPMSolverMultistepScheduler

    from opencanvas.sample.generate import SampleSettings
    from opencanvas.train.to_diffusers import scheduler_for

    sample_default = next(p.default for p in get_command(app).commands["sample"].params if p.name == "sampler")
    assert sample_default == SampleSettings().sampler == "dpmpp-2m"
    for config in ({}, {"prediction_type": "v_prediction", "zero_terminal_snr": True}):
        sched = scheduler_for(config)
        assert isinstance(sched, DPMSolverMultistepScheduler)   # DPM-Solver++(2M), as `sample` uses
        assert (sched.config.algorithm_type, sched.config.solver_order) == ("dpmsolver++", 2)
        assert sched.config.final_sigmas_type == "zero" and not sched.config.use_karras_sigmas
    assert sched.config.prediction_type == "v_prediction" and sched.config.rescale_betas_zero_snr
    assert sched.config.timestep_spacing == "trailing"


def test_readme_tour_fetches_at_the_training_resolution() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    min_side = {int(v) for v in re.findall(r"opencanvas fetch .*--min-side (\d+)", readme)}
    trained = {int(v) for v in re.findall(r"opencanvas (?:autoencoder train|encode) .*--resolution (\d+)", readme)}
    assert min_side and min_side == trained, (min_side, trained)   # a larger --min-side drops images for nothing


def test_help_says_what_a_relative_out_is_relative_to() -> None:
    for verb in ("export", "sample"):
        text = " ".join(runner.invoke(app, [verb, "--help"]).output.split())
        assert "relative path is taken from the current directory, not from" in text, verb


def test_error_messages_keep_square_brackets(tmp_path: Path) -> None:
    """fail() prints plain text: a subset named like Rich markup is shown, not swallowed as a style tag."""
    result = runner.invoke(app, ["--workspace", str(tmp_path), "fetch", "--subset", "[red]x"])
    assert result.exit_code == 2
    assert "[red]x" in result.output
