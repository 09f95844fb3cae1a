"""`opencanvas distill`: a tiny teacher run -> a guidance-conditioned few-step student run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from opencanvas.cli import app
from opencanvas.diffusion.distilled import DistilledStepsWarning, GuidedStudent, distilled_sigmas
from opencanvas.distill.settings import DistillSettings
from opencanvas.distill.stage import _student, distill, student_config
from opencanvas.distill.task import ddim_step, two_step_target
from opencanvas.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from opencanvas.workspace import Workspace

SMALL = dict(base_steps=8, target_steps=2, images_per_round=16, batch=8)


def _teacher(root: Path, caption_dropout: float = 0.1) -> Workspace:
    from opencanvas.encode.synthetic import write_random_latents
    from opencanvas.sample.tiny import tiny_text_model, tiny_tokenizer, tiny_vae
    from opencanvas.train import loop

    ws = Workspace.open(root)
    write_random_latents(ws, "lat", 16, resolution=16, downscale=2, text_len=8, text_dim=32, shard_size=8)
    tiny_vae(1).save_pretrained(ws.autoencoder_dir("synthetic"))
    tiny_text_model(2).save_pretrained(ws.clip_dir("synthetic"))
    tiny_tokenizer().save_pretrained(ws.clip_dir("synthetic"))
    loop.train(ws, "lat", "tiny", "teacher", images=16, batch=8, caption_dropout=caption_dropout)
    return ws


@pytest.fixture(scope="module")
def teacher_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return _teacher(tmp_path_factory.mktemp("distill") / "ws")


def test_student_starts_as_the_teacher_and_takes_guidance(teacher_ws: Workspace) -> None:
    """The guidance projection starts at zero: the student is the teacher's conditional model at any w."""
    from opencanvas.train.pipeline import load_denoiser

    ckpt = load_checkpoint(latest_checkpoint(teacher_ws.run_dir("teacher")), parts=("ema",))
    settings = DistillSettings(teacher="teacher", student="s", **SMALL)
    student = GuidedStudent(_student(student_config(ckpt.config, settings, 2, "guided"), ckpt.ema,
                                     torch.device("cpu")))
    teacher = load_denoiser(ckpt.config, ckpt.ema)
    gen = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 8, 32, generator=gen)
    sigma = torch.tensor([1.0, 5.0])
    with torch.no_grad():
        expected = teacher(x, sigma, text)
        for w in (1.0, 7.5):
            assert torch.allclose(student(x, sigma, text, None, guidance=torch.full((2,), w)), expected, atol=1e-5)
        torch.nn.init.normal_(student.inner.unet.time_embedding.cond_proj.weight)
        a = student(x, sigma, text, None, guidance=torch.full((2,), 1.0))
        b = student(x, sigma, text, None, guidance=torch.full((2,), 7.5))
    assert not torch.allclose(a, b), "the guidance embedding does not reach the UNet"


def test_two_step_target_lands_on_the_teachers_two_steps() -> None:
    """One DDIM step with the Salimans & Ho target goes where two teacher steps went."""
    gen = torch.Generator().manual_seed(1)
    x, x2 = torch.randn(3, 4, 2, 2, generator=gen), torch.randn(3, 4, 2, 2, generator=gen)
    s0, s2 = torch.tensor([8.0, 2.0, 0.5]).view(-1, 1, 1, 1), torch.tensor([3.0, 0.0, 0.1]).view(-1, 1, 1, 1)
    assert torch.allclose(ddim_step(x, two_step_target(x, x2, s0, s2), s0, s2), x2, atol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--guidance-range", "0,8"], "guidance-range"),
    (["--guidance-range", "1,31"], "guidance-range"),
    (["--target-steps", "3"], "not reachable by halving"),
    (["--target-steps", "64"], "not reachable by halving"),
])
def test_bad_settings_fail_before_any_work(teacher_ws: Workspace, args: list[str], message: str) -> None:
    r = CliRunner().invoke(app, ["distill", "--run", "teacher", "--name", "bad", *args, "-w", str(teacher_ws.root)])
    assert r.exit_code == 2 and message in r.output, r.output
    assert not teacher_ws.run_dir("bad").exists() or not any(teacher_ws.run_dir("bad").iterdir())


def test_teacher_without_caption_dropout_is_refused(tmp_path: Path) -> None:
    ws = _teacher(tmp_path / "ws", caption_dropout=0.0)
    r = CliRunner().invoke(app, ["distill", "--run", "teacher", "--name", "s", "-w", str(ws.root)])
    assert r.exit_code == 2 and "without caption dropout" in r.output, r.output
    assert not (ws.run_dir("s") / "phases").exists()


def test_student_samples_in_one_unet_call_per_step(teacher_ws: Workspace, tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["distill", "--run", "teacher", "--name", "student", "--base-steps", "8",
                                 "--target-steps", "2", "--images-per-round", "16", "--batch", "8",
                                 "-w", str(teacher_ws.root)])
    assert r.exit_code == 0, r.output
    summary = json.loads((teacher_ws.run_dir("student") / "distill.json").read_text())
    assert [p["phase"] for p in summary["phases"]] == ["guided", "round-4", "round-2"]
    assert all(p["images"] == 16 for p in summary["phases"])

    from opencanvas.sample.generate import SampleSettings, sample_latents
    from opencanvas.train.pipeline import load_pipeline

    pipe = load_pipeline(teacher_ws, "student")
    assert pipe.config["distilled"]["teacher"] == "teacher" and pipe.config["distilled"]["steps"] == 2
    batches: list[int] = []
    pipe.denoiser.unet.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    settings = SampleSettings(steps=2, guidance=5.0, width=16, height=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DistilledStepsWarning)
        a = sample_latents(pipe, ["a red circle"], [0], settings)
    assert batches == [1, 1], "a student step is one UNet call on the batch itself (no CFG doubling)"
    b = sample_latents(pipe, ["a red circle"], [0], SampleSettings(steps=2, guidance=2.0, width=16, height=16))
    assert not torch.equal(a, b)
    with pytest.warns(DistilledStepsWarning, match="distilled for 2 steps"):
        distilled_sigmas(pipe.denoiser, 8, 2, 3)
    out = tmp_path / "samples"
    r = CliRunner().invoke(app, ["sample", "--run", "student", "a red circle", "--steps", "2", "--guidance", "5",
                                 "--out", str(out), "-w", str(teacher_ws.root)])
    assert r.exit_code == 0, r.output
    assert (out / "00000-s0.png").exists()


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(teacher_ws: Workspace) -> None:
    args = ["--run", "teacher", "--base-steps", "8", "--target-steps", "2", "--images-per-round", "48",
            "--batch", "8", "--checkpoint-every", "8", "--keep", "2", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "OPENCANVAS_PROGRESS": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "opencanvas", "distill", *args, "--name", "killed",
                             "-w", str(teacher_ws.root)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    phase = teacher_ws.run_dir("killed") / "phases" / "round-4"
    deadline = time.monotonic() + 240
    try:
        while not any(p.name == "ckpt-000000000016.safetensors" for p in list_checkpoints(phase)):
            assert proc.poll() is None, f"distill exited early: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(latest_checkpoint(phase)).state.images_seen < 48, "round-4 finished before the kill"

    settings = dict(teacher="teacher", base_steps=8, target_steps=2, images_per_round=48, batch=8,
                    checkpoint_every=8, keep=2)
    distill(teacher_ws, DistillSettings(student="killed", **settings), device="cpu")
    distill(teacher_ws, DistillSettings(student="full", **settings), device="cpu")
    a = load_checkpoint(latest_checkpoint(teacher_ws.run_dir("killed")))
    b = load_checkpoint(latest_checkpoint(teacher_ws.run_dir("full")))
    assert a.state.images_seen == b.state.images_seen == 48
    for name in b.model:
        assert torch.equal(a.model[name], b.model[name]), name
        assert torch.equal(a.ema[name], b.ema[name]), name


def test_export_loads_in_diffusers_and_samples_in_the_distilled_steps(teacher_ws: Workspace, tmp_path: Path) -> None:
    from diffusers import DiffusionPipeline

    from opencanvas.sample.generate import SampleSettings, initial_noise, sample_latents
    from opencanvas.train.pipeline import load_pipeline
    from opencanvas.train.to_diffusers import export

    if not (teacher_ws.run_dir("student") / "distill.json").exists():
        distill(teacher_ws, DistillSettings(teacher="teacher", student="student", **SMALL), device="cpu")
    folder = export(teacher_ws, "student", tmp_path / "student")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)  # ships pipeline_distilled.py
    assert type(pipe).__name__ == "DistilledGuidancePipeline"
    assert not [w for w in caught if "steps_offset" in str(w.message)], "the scheduler config reads as outdated"
    calls: list[int] = []
    pipe.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    latents = initial_noise((4, 8, 8), [0])
    got = pipe("a red circle", num_inference_steps=2, guidance_scale=5.0, latents=latents.clone(),
               output_type="latent").images
    assert calls == [1, 1]
    # The same student sampled by opencanvas: the same latents (the same DDIM grid and guidance embedding).
    ours = load_pipeline(teacher_ws, "student")
    want = sample_latents(ours, ["a red circle"], [0], SampleSettings(steps=2, guidance=5.0, width=16, height=16))
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_model_card_names_the_teacher_rounds_and_images(teacher_ws: Workspace) -> None:
    from opencanvas.cards.model_facts import run_facts
    from opencanvas.cards.records import Sources
    from opencanvas.cards.writer import _distill_lines, sampling_defaults

    if not (teacher_ws.run_dir("student") / "distill.json").exists():
        distill(teacher_ws, DistillSettings(teacher="teacher", student="student", **SMALL), device="cpu")
    src = Sources()
    text = "\n".join(_distill_lines({"run": "student", "train": run_facts(teacher_ws, "student", src)}))
    assert "`teacher`" in text and "from 8 DDIM steps down to 2" in text and "--steps 2" in text
    assert "| round-4 | 4 | 16 |" in text and "| guided | (guided) | 16 |" in text
    assert "runs/student/distill.json" in src.paths
    assert _distill_lines({"run": "teacher", "train": run_facts(teacher_ws, "teacher", src)}) == []
    config = run_facts(teacher_ws, "student", src)["config"]
    assert "--steps 2 PROMPT" in sampling_defaults("student", config) and "dpmpp" not in sampling_defaults(
        "student", config)


def test_comparison_report_has_teacher_and_each_student(teacher_ws: Workspace, tmp_path: Path) -> None:
    from opencanvas.distill.report import compare
    from opencanvas.sample.tiny import write_tiny_clip
    from tests.factories import make_image_subset

    if not (teacher_ws.run_dir("student") / "distill.json").exists():
        distill(teacher_ws, DistillSettings(teacher="teacher", student="student", **SMALL), device="cpu")
    make_image_subset(teacher_ws, "shapes", n=8, size=16, shard_size=8)
    report = compare(teacher_ws, "student", ["a red circle", "a blue square"], "shapes", (3.0,), n=2,
                     clip=str(write_tiny_clip(tmp_path / "clip")))
    assert [(r["model"], r["steps"], r["unet_calls"]) for r in report["rows"]] == [
        ("teacher", 25, 50), ("student-4", 4, 4), ("student-2", 2, 2)]
    assert all(r["seconds_per_image"] > 0 and "clip_score" in r and report["fd_metric"] in r for r in report["rows"])
    assert all(r["latent_seconds_per_image"] > 0 for r in report["rows"])
    assert all(r["fd_ratio"] > 0 and "clip_delta_ci95" in r and r["latent_speedup_b32"] > 0
               for r in report["rows"][1:])
    root = teacher_ws.run_dir("student") / "distill_report"
    assert (root / "tradeoff.png").stat().st_size > 0
    text = (root / "report.md").read_text()
    assert "| student-2 | 2 | 2 | 3 |" in text and "Goal at 4 steps, w=3" in text
    everything = compare(teacher_ws, "student", ["a red circle", "a blue square"], "shapes", (3.0,), n=2,
                         clip=str(write_tiny_clip(tmp_path / "clip")), all_phases=True)
    assert [r["model"] for r in everything["rows"]] == ["teacher", "guided-8", "student-4", "student-2"]


def test_sample_cli_warns_off_the_distilled_count_and_eval_runs(teacher_ws: Workspace, tmp_path: Path) -> None:
    from opencanvas.sample.tiny import write_tiny_clip
    from tests.factories import make_image_subset

    if not (teacher_ws.run_dir("student") / "distill.json").exists():
        distill(teacher_ws, DistillSettings(teacher="teacher", student="student", **SMALL), device="cpu")
    with pytest.warns(DistilledStepsWarning, match="distilled for 2 steps, sampling at 3"):
        r = CliRunner().invoke(app, ["sample", "--run", "student", "a red circle", "--steps", "3", "--out",
                                     str(tmp_path / "s3"), "-w", str(teacher_ws.root)])
    assert r.exit_code == 0, r.output
    with warnings.catch_warnings():  # without --steps: the student's own count, so no warning
        warnings.simplefilter("error", DistilledStepsWarning)
        r = CliRunner().invoke(app, ["sample", "--run", "student", "a red circle", "--out", str(tmp_path / "s"),
                                     "-w", str(teacher_ws.root)])
    assert r.exit_code == 0, r.output
    if "shapes" not in teacher_ws.names("subset"):
        make_image_subset(teacher_ws, "shapes", n=8, size=16, shard_size=8)
    (tmp_path / "p.txt").write_text("a red circle\na blue square\n")
    r = CliRunner().invoke(app, ["eval", "--run", "student", "--prompts", str(tmp_path / "p.txt"), "--reference",
                                 "shapes", "--metrics", "clip,fid", "--guidance", "3", "-n", "2", "--steps", "2",
                                 "--clip", str(write_tiny_clip(tmp_path / "clip")), "-w", str(teacher_ws.root)])
    assert r.exit_code == 0, r.output
    report = json.loads(next((teacher_ws.run_dir("student") / "eval").glob("*/report.json")).read_text())
    assert [row["guidance"] for row in report["rows"]] == [0.0, 3.0]
    assert report["settings"]["sampler"] == "ddim"   # what a student runs, not the dpmpp-2m default


def test_changed_settings_on_an_existing_student_are_refused(teacher_ws: Workspace) -> None:
    if not (teacher_ws.run_dir("student") / "distill.json").exists():
        distill(teacher_ws, DistillSettings(teacher="teacher", student="student", **SMALL), device="cpu")
    before = sorted(p.name for p in (teacher_ws.run_dir("student") / "phases").iterdir())
    with pytest.raises(ValueError, match="exists with other settings .*images_per_round"):
        distill(teacher_ws, DistillSettings(teacher="teacher", student="student", **{**SMALL, "images_per_round": 32}),
                device="cpu")
    assert sorted(p.name for p in (teacher_ws.run_dir("student") / "phases").iterdir()) == before


def test_stage_one_moves_the_student_towards_the_teachers_guided_output(teacher_ws: Workspace) -> None:
    """On the teacher's own data, the trained guided student is closer to CFG at w ~ U(1, 8) than its start."""
    from opencanvas.diffusion.guidance import CFGDenoiser
    from opencanvas.train.data import LatentStream, training_inputs
    from opencanvas.train.pipeline import load_denoiser

    settings = DistillSettings(teacher="teacher", student="learner", base_steps=2, target_steps=1,
                               images_per_round=64, batch=8, lr=1e-4)
    distill(teacher_ws, settings, device="cpu")
    t = load_checkpoint(latest_checkpoint(teacher_ws.run_dir("teacher")), parts=("ema",))
    guided = load_checkpoint(latest_checkpoint(teacher_ws.run_dir("learner") / "phases" / "guided"), parts=("ema",))
    config = student_config(t.config, settings, 2, "guided")
    cpu = torch.device("cpu")
    start, trained = (GuidedStudent(_student(config, w, cpu)) for w in (t.ema, guided.ema))
    teacher = CFGDenoiser(load_denoiser(t.config, t.ema), 1.0).inner
    stream = LatentStream.open(teacher_ws, "lat", 16, 16, 7, 0, 1, cpu)
    errors = {"start": 0.0, "trained": 0.0}
    with torch.no_grad():
        for k in range(3):
            gen = torch.Generator().manual_seed(100 + k)
            inp = training_inputs(stream.next_batch(), stream, gen, cpu, num_timesteps=1000, caption_dropout=0.0,
                                  offset_noise=0.0, use_text_mask=False)
            sigma = teacher.sigmas[inp["timesteps"]]
            x = inp["x0"] + sigma.view(-1, 1, 1, 1) * inp["noise"]
            w = 1 + 7 * torch.rand(x.shape[0], generator=gen)
            u, c = teacher(torch.cat([x, x]), torch.cat([sigma, sigma]),
                           torch.cat([stream.null_text.expand_as(inp["cond"].text), inp["cond"].text])).chunk(2)
            want = u + w.view(-1, 1, 1, 1) * (c - u)
            for name, model in (("start", start), ("trained", trained)):
                errors[name] += float((model(x, sigma, inp["cond"], guidance=w) - want).pow(2).mean())
    assert errors["trained"] < 0.9 * errors["start"], errors


def test_paired_intervals_against_the_teacher() -> None:
    """Same images: ratio 1 and difference 0 exactly; a student off the reference: FD ratio above 1 with its
    whole interval, CLIP difference negative."""
    import numpy as np

    from opencanvas.distill.report import goal_lines, paired_against_teacher

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 6))
    feats, clip = rng.normal(size=(64, 6)), rng.uniform(20, 30, 64)
    same = paired_against_teacher((clip, feats), (clip, feats), ref, resamples=50)
    assert same["clip_delta"] == 0 and same["fd_ratio"] == pytest.approx(1.0)
    assert same["fd_ratio_ci95"] == pytest.approx([1.0, 1.0])
    worse = paired_against_teacher((clip, feats), (clip - 3 + rng.normal(0, 0.5, 64), feats + 1.5), ref, resamples=50)
    assert worse["fd_ratio"] > 1.1 and worse["fd_ratio_ci95"][0] > 1.1
    lo, hi = worse["clip_delta_ci95"]
    assert lo < worse["clip_delta"] < hi < -2
    row = {"model": "student-4", "guidance": 5.0, "speedup": 12.0, "latent_speedup": 12.5, "latent_speedup_b32": 13.0}
    assert "missed (FD" in goal_lines({"rows": [{**row, **worse}]})[0]
    assert ": met (FD" in goal_lines({"rows": [{**row, **same}]})[0]
    assert "missed" in goal_lines({"rows": [{**row, **same, "speedup": 6.0}]})[0]  # quality alone is not the goal
    assert "quality met, end-to-end speed not timed" in goal_lines({"rows": [{**row, **same, "speedup": None}]})[0]
