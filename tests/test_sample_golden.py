"""Golden numbers: a full guided sampling loop of a tiny fixed model, per sampler.

The model is the tiny UNet + CLIP text encoder of `opencanvas.sample.tiny`, built
under fixed torch seeds. The stored numbers in tests/golden/sample_loops.json
were made by this module; regenerate them only on purpose, after checking why
numerics changed:

    .venv/bin/python tests/test_sample_golden.py --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from opencanvas.diffusion.denoiser import Denoiser, NoiseSchedule
from opencanvas.diffusion.samplers import SAMPLERS
from opencanvas.sample.generate import SampleSettings, sample_latents
from opencanvas.sample.loading import FolderAutoencoder, FolderPipeline, FolderTextEncoder
from opencanvas.sample.tiny import tiny_text_model, tiny_tokenizer, tiny_unet, tiny_vae

GOLDEN = Path(__file__).parent / "golden" / "sample_loops.json"
CASES = {  # case name -> settings; every sampler, plus rescale, negative prompt and karras spacing
    **{name: SampleSettings(steps=8, guidance=5.0, sampler=name, width=16, height=16) for name in SAMPLERS},
    "euler-rescale-negative": SampleSettings(steps=8, guidance=7.5, guidance_rescale=0.7, sampler="euler",
                                             negative_prompt="a black square", width=16, height=16),
    "dpmpp-2m-karras": SampleSettings(steps=8, guidance=3.0, sampler="dpmpp-2m", spacing="karras",
                                      width=16, height=16),
}
PROMPTS, SEEDS = ["a red circle", "a blue square"], [0, 1]


def tiny_pipeline() -> FolderPipeline:
    vae = tiny_vae(1)
    channels = vae.config.latent_channels
    return FolderPipeline(
        denoiser=Denoiser(tiny_unet(0), NoiseSchedule(), "epsilon").eval(),
        autoencoder=FolderAutoencoder(vae, torch.zeros(channels, 1, 1), torch.full((channels, 1, 1), 0.5), 2),
        text_encoder=FolderTextEncoder(tiny_tokenizer(), tiny_text_model(2), 16),
        config={"resolution": 16}, weights_hash="tiny", name="tiny")


def summarize(latents: torch.Tensor) -> dict:
    flat = latents.double().flatten()
    return {"shape": list(latents.shape), "head": flat[:8].tolist(), "mean": float(flat.mean()),
            "std": float(flat.std()), "abs_sum": float(flat.abs().sum())}


def compute_golden() -> dict:
    pipeline = tiny_pipeline()
    return {case: summarize(sample_latents(pipeline, PROMPTS, SEEDS, settings)) for case, settings in CASES.items()}


@pytest.fixture(scope="module")
def computed() -> dict:
    return compute_golden()


@pytest.mark.parametrize("case", list(CASES))
def test_sampling_loop_matches_stored_numbers(case: str, computed: dict) -> None:
    stored = json.loads(GOLDEN.read_text())[case]
    got = computed[case]
    assert got["shape"] == stored["shape"]
    assert got["head"] == pytest.approx(stored["head"], rel=1e-4, abs=1e-5)
    for key in ("mean", "std", "abs_sum"):
        assert got[key] == pytest.approx(stored[key], rel=1e-4, abs=1e-5), key


def test_cases_differ_from_each_other(computed: dict) -> None:
    """The golden numbers pin something: every case produced a distinct result.

    DDIM (eta=0) is Euler in sigma space, so those two agree to rounding instead.
    """
    assert computed["ddim"]["abs_sum"] == pytest.approx(computed["euler"]["abs_sum"], rel=1e-5)
    sums = [round(v["abs_sum"], 3) for k, v in computed.items() if k != "ddim"]
    assert len(set(sums)) == len(sums)


if __name__ == "__main__" and "--write" in sys.argv:
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(compute_golden(), indent=2) + "\n")
    print(f"wrote {GOLDEN}")
