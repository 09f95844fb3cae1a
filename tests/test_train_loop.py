"""Training loop on CPU with the tiny preset: learning, NaN handling, checkpoints, schedules, recipe.

Latent sets here are random records in the real store format
(opencanvas.encode.synthetic), so no autoencoder or text encoder runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from opencanvas.encode.synthetic import write_random_latents
from opencanvas.train import loop
from opencanvas.train.checkpoint import (
    TrainState,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from opencanvas.train.config import TrainConfig, parse_resolutions
from opencanvas.train.presets import PRESETS, build_unet
from opencanvas.train.recipe import (
    LowPrecisionGroupNorm,
    LowPrecisionLayerNorm,
    apply_recipe,
    resolve_recipe,
    use_low_precision_norms,
)
from opencanvas.training.ema import EMA
from opencanvas.workspace import Workspace

TEXT = dict(text_len=8, text_dim=32)


def random_latents(ws: Workspace, name: str = "lat", n: int = 16, resolution: int = 64) -> None:
    write_random_latents(ws, name, n, resolution=resolution, shard_size=8, **TEXT)


def losses(ws: Workspace, run: str) -> list[float]:
    return [json.loads(line)["loss"] for line in (ws.run_dir(run) / "metrics.jsonl").read_text().splitlines()]


# ---- presets and config -------------------------------------------------------------------------

def test_sd2_base_preset_is_the_865m_sd2_unet():
    from diffusers import UNet2DConditionModel

    cfg = PRESETS["sd2-base"].unet.unet_config(latent_channels=4, text_dim=1024, latent_size=64)
    assert cfg["block_out_channels"] == [320, 640, 1280, 1280]
    assert cfg["attention_head_dim"] == [5, 10, 20, 20] and cfg["use_linear_projection"] is True
    assert cfg["cross_attention_dim"] == 1024
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg)
    params = sum(p.numel() for p in unet.parameters())
    assert 860e6 < params < 870e6, params  # SD2-base: 865,910,724


def test_unknown_options_and_presets_are_errors(ws):
    random_latents(ws, n=8)
    with pytest.raises(ValueError, match="unknown training option.*learning_rate"):
        loop.train(ws, "lat", "tiny", "bad", images=8, batch=8, learning_rate=1e-3)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        loop.train(ws, "lat", "huge", "bad", images=8, batch=8)
    with pytest.raises(ValueError, match="multiple of --micro-batch"):
        loop.train(ws, "lat", "tiny", "bad", images=8, batch=8, micro_batch=3)
    with pytest.raises(ValueError, match="v_prediction"):
        loop.train(ws, "lat", "tiny", "bad", images=8, batch=8, zero_terminal_snr=True)
    with pytest.raises(ValueError, match="unknown training option.*nonsense"):
        TrainConfig.from_dict({"run": "x", "nonsense": 1})
    assert parse_resolutions("256,512@1000") == ((256, 0), (512, 1000))
    with pytest.raises(ValueError, match="increasing"):
        parse_resolutions("256,512@0")


def test_lr_warmup_then_cosine():
    base = dict(run="r", latents="l", preset="tiny", images=1000, batch=10, micro_batch=10, lr=1.0,
                warmup_images=100, ema_decay=0.9, parallel="ddp", unet={}, resolutions=((64, 0),), data={})
    cfg = TrainConfig(**base, lr_schedule="cosine")
    assert loop.lr_at(cfg, 0) == pytest.approx(0.1)  # the first step trains on images 1..10 of 100
    assert loop.lr_at(cfg, 90) == pytest.approx(1.0)
    assert loop.lr_at(cfg, 540) == pytest.approx(0.5, abs=0.02)  # halfway through the cosine
    assert loop.lr_at(cfg, 990) == pytest.approx(0.0, abs=1e-9)
    assert loop.lr_at(TrainConfig(**base), 990) == 1.0


# ---- learning --------------------------------------------------------------------------------

def test_tiny_preset_overfits_a_fixed_batch(ws):
    random_latents(ws, n=8)  # one batch of 8: every step sees the same images
    summary = loop.train(ws, "lat", "tiny", "fit", images=8 * 40, batch=8, caption_dropout=0.0,
                         warmup_images=0, lr=2e-3)
    seen = losses(ws, "fit")
    assert len(seen) == 40 and summary["images_seen"] == 320 and summary["skipped_steps"] == 0
    first, last = sum(seen[:5]) / 5, sum(seen[-10:]) / 10
    assert last < 0.6 * first, (first, last)
    run = ws.run_dir("fit")
    config = json.loads((run / "config.json").read_text())
    assert config["unet"]["cross_attention_dim"] == 32 and config["data"]["subset"] == "synthetic"
    ckpt = load_checkpoint(latest_checkpoint(run))
    assert ckpt.config == config and ckpt.state.images_seen == 320
    summary_file = json.loads((run / "summary.json").read_text())
    assert summary_file["images_seen"] == 320 and summary_file["device"] == "cpu"
    assert summary_file["weights_sha256"] == summary_file["rank_weights_sha256"][0]
    assert summary_file["final_loss"] == seen[-1] and summary_file["metrics"] == "runs/fit/metrics.jsonl"
    assert summary_file["tensorboard"] == "runs/fit/tb"
    assert any((run / "tb").iterdir())


def test_nan_steps_are_skipped_and_repeated_ones_stop_the_run(ws, monkeypatch):
    random_latents(ws, n=16)
    real = loop.training_inputs
    poisoned: set[int] = set()

    def maybe_nan(batch, stream, gen, device, **kw):
        out = real(batch, stream, gen, device, **kw)
        if state["images"] in poisoned:
            out["x0"] = out["x0"] * float("nan")
        return out

    state = {"images": 0}
    real_gradients = loop.UNetTask.gradients

    def counting_gradients(task, train_state):
        state["images"] = train_state.images_seen
        return real_gradients(task, train_state)

    monkeypatch.setattr(loop, "training_inputs", maybe_nan)
    monkeypatch.setattr(loop.UNetTask, "gradients", counting_gradients)
    poisoned.update({16, 32})  # two isolated bad steps: skipped, counted, training goes on
    summary = loop.train(ws, "lat", "tiny", "nan", images=96, batch=8, checkpoint_every=32, max_bad_steps=3)
    assert summary["skipped_steps"] == 2 and summary["images_seen"] == 96
    ckpt = load_checkpoint(latest_checkpoint(ws.run_dir("nan")))
    assert all(torch.isfinite(t).all() for t in ckpt.model.values())
    assert all(torch.isfinite(t).all() for t in ckpt.ema.values())

    poisoned.clear()
    poisoned.update(range(32, 1000, 8))  # from image 32 on, every step is bad
    with pytest.raises(loop.TrainingDiverged, match="3 consecutive steps"):
        loop.train(ws, "lat", "tiny", "diverge", images=200, batch=8, checkpoint_every=16, max_bad_steps=3)
    # The newest checkpoint predates the bad streak's end and holds finite weights.
    newest = load_checkpoint(latest_checkpoint(ws.run_dir("diverge")))
    assert newest.state.images_seen <= 48
    assert all(torch.isfinite(t).all() for t in newest.model.values())


def test_resolution_schedule_switches_latent_sets(ws):
    random_latents(ws, n=16, resolution=32)
    random_latents(ws, n=16, resolution=64)  # rewrites meta.json for 64 only: declare both
    meta_path = ws.latents_dir("lat") / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "resolutions": [32, 64]}))
    loop.train(ws, "lat", "tiny", "multires", images=64, batch=8, resolutions="32,64@32")
    rows = [json.loads(line) for line in (ws.run_dir("multires") / "metrics.jsonl").read_text().splitlines()]
    assert [r["resolution"] for r in rows] == [32] * 4 + [64] * 4


def test_resume_refuses_a_changed_config(ws):
    random_latents(ws, n=8)
    loop.train(ws, "lat", "tiny", "r", images=16, batch=8)
    with pytest.raises(ValueError, match="different configuration.*lr"):
        loop.train(ws, "lat", "tiny", "r", images=32, batch=8, lr=5e-4)
    summary = loop.train(ws, "lat", "tiny", "r", images=32, batch=8)  # more images: a resume
    assert summary["images_seen"] == 32 and summary["session_images"] == 16


# ---- pieces ----------------------------------------------------------------------------------

def test_checkpoint_roundtrip_and_pruning(tmp_path: Path):
    model = {"w": torch.randn(3, 2), "b": torch.zeros(2)}
    ema = {k: v + 1 for k, v in model.items()}
    optim = {"state": {"w": {"step": torch.tensor(3.0), "exp_avg": torch.ones(3, 2)}}, "param_groups": [{"lr": 1}]}
    for images in (8, 16, 24):
        save_checkpoint(tmp_path, {"k": 1}, TrainState(images_seen=images, data={"epoch": 1}), model, ema, optim,
                        keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-000000000016.safetensors",
                                                          "ckpt-000000000024.safetensors"]
    ckpt = load_checkpoint(latest_checkpoint(tmp_path))
    assert ckpt.state.images_seen == 24 and ckpt.state.data == {"epoch": 1} and ckpt.config == {"k": 1}
    assert torch.equal(ckpt.model["w"], model["w"]) and torch.equal(ckpt.ema["b"], ema["b"])
    assert torch.equal(ckpt.optimizer["state"]["w"]["exp_avg"], torch.ones(3, 2))
    with pytest.raises(FloatingPointError, match="not finite"):
        save_checkpoint(tmp_path, {}, TrainState(images_seen=32), {"w": torch.tensor([float("nan")])}, {}, optim)
    assert latest_checkpoint(tmp_path).name == "ckpt-000000000024.safetensors"


def test_ema_follows_the_formula():
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, decay=0.9)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net, step=100)  # decay min(0.9, 101/110) = 0.9
    expected = 0.9 * start["weight"] + 0.1 * net.weight
    assert torch.allclose(ema.shadow["weight"], expected)
    assert ema.decay_at(0) == pytest.approx(0.1)


def test_low_precision_norms_run_in_bf16_and_keep_weights():
    unet = build_unet(PRESETS["tiny"].unet.unet_config(4, 32, 8))
    keys = list(unet.state_dict())
    swapped = use_low_precision_norms(unet)
    assert swapped > 5 and list(unet.state_dict()) == keys
    assert any(isinstance(m, LowPrecisionLayerNorm) for m in unet.modules())
    gn = next(m for m in unet.modules() if isinstance(m, LowPrecisionGroupNorm))
    x = torch.randn(2, gn.num_channels, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = gn(x)
        upcast = torch.nn.functional.group_norm(x, gn.num_groups, gn.weight, gn.bias, gn.eps)
    assert low.dtype == torch.bfloat16 and upcast.dtype == torch.float32  # autocast upcasts plain norms
    assert torch.allclose(low.float(), upcast, atol=0.05)
    assert gn(x).dtype == torch.float32  # outside autocast: the ordinary fp32 norm


def test_recipe_defaults_and_explicit_sdpa():
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    cpu = resolve_recipe(torch.device("cpu"))
    assert (cpu.bf16, cpu.sdpa, cpu.low_precision_norms, cpu.channels_last, cpu.compile) == (
        False, True, False, False, False)
    with pytest.raises(ValueError, match="--low-precision-norms only"):
        resolve_recipe(torch.device("cpu"), low_precision_norms=True)
    unet = build_unet(PRESETS["tiny"].unet.unet_config(4, 32, 8))
    apply_recipe(unet, resolve_recipe(torch.device("cpu"), channels_last=True))
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    apply_recipe(unet, resolve_recipe(torch.device("cpu"), sdpa=False))
    assert all(isinstance(p, AttnProcessor) for p in unet.attn_processors.values())


def test_training_inputs_draw_caption_dropout_and_noise_deterministically(ws):
    from opencanvas.train.data import LatentStream, step_generator, training_inputs

    random_latents(ws, n=8)
    stream = LatentStream.open(ws, "lat", 64, micro_batch=8, seed=0, rank=0, world=1, device=torch.device("cpu"))
    batch = stream.next_batch()
    kw = dict(num_timesteps=1000, offset_noise=0.1, use_text_mask=True)

    def draw(dropout: float, images_seen: int = 0) -> dict:
        gen = step_generator(torch.device("cpu"), 0, 0, images_seen)
        return training_inputs(batch, stream, gen, torch.device("cpu"), caption_dropout=dropout, **kw)

    kept, dropped, again, later = draw(0.0), draw(0.9999), draw(0.0), draw(0.0, images_seen=8)
    assert torch.equal(kept["cond"].text, batch["text"].float()) and torch.equal(kept["cond"].mask, batch["mask"])
    assert torch.equal(dropped["cond"].text, stream.null_text.expand(8, -1, -1))
    assert torch.equal(dropped["cond"].mask, stream.null_mask.expand(8, -1))
    for key in ("x0", "noise", "timesteps"):
        assert torch.equal(kept[key], again[key]) and not torch.equal(kept[key], later[key])
    # x0 is a posterior sample, normalised: close to the mean (std is 0.01-0.1 in this set), not equal.
    assert 0 < float((kept["x0"] - batch["mean"].float()).abs().max()) < 0.5


def test_v_prediction_with_zero_terminal_snr_and_offset_noise(ws):
    from opencanvas.diffusion.denoiser import Denoiser, NoiseSchedule
    from opencanvas.train.to_diffusers import scheduler_for

    random_latents(ws, n=8)
    summary = loop.train(ws, "lat", "tiny", "v", images=24, batch=8, prediction_type="v_prediction",
                         zero_terminal_snr=True, offset_noise=0.05)
    assert summary["skipped_steps"] == 0 and all(v == v for v in losses(ws, "v"))
    config = json.loads((ws.run_dir("v") / "config.json").read_text())
    sched = scheduler_for(config)
    assert sched.config.prediction_type == "v_prediction" and sched.config.rescale_betas_zero_snr
    ours = Denoiser(torch.nn.Linear(1, 1), NoiseSchedule(zero_terminal_snr=True), "v_prediction").alphas_cumprod
    assert torch.allclose(sched.alphas_cumprod[:-1].float(), ours[:-1], atol=1e-6)
    assert float(sched.alphas_cumprod[-1]) < 1e-6 and float(ours[-1]) < 1e-6  # SNR ~0 at the last step
