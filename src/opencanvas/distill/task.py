"""One distillation phase as a `TrainTask` of the shared training loop.

Stage 1 (`guided`): the student, with w as an input, learns the teacher's classifier-free guided
x0 at random training timesteps (Meng et al. 2023, Eq. 6, the x-space loss of Stage one).
Stage 2 (`round-K`): progressive distillation (Salimans & Ho 2022, Algorithm 2), one student DDIM
step matching two teacher DDIM steps on the teacher's grid, with w kept as an input (Meng et al.,
Sec. 4.1, Stage two).

Sigma space throughout: x = x0 + sigma * eps is the VP z_t divided by alpha_t, so DDIM's update is
x' = x0 + sigma' * (x - x0) / sigma and Salimans & Ho's target is unchanged by the rescaling.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from opencanvas.diffusion.conditioning import Conditioning
from opencanvas.diffusion.denoiser import Denoiser
from opencanvas.diffusion.distilled import GuidedStudent
from opencanvas.training import distributed as D
from opencanvas.training.checkpoint import TrainState
from opencanvas.training.ema import EMA
from opencanvas.training.loop import TrainTask
from opencanvas.training.seeds import step_generator

if TYPE_CHECKING:
    from torch.nn.parallel import DistributedDataParallel


def truncated_snr_weight(sigma: torch.Tensor) -> torch.Tensor:
    """max(SNR, 1) with SNR = alpha^2 / sigma_VP^2 = 1 / sigma^2: Salimans & Ho 2022, Sec. 4 ("truncated SNR"),
    the weighting Meng et al. keep for both stages. (B,) -> (B,)."""
    return (1.0 / sigma.pow(2)).clamp(min=1.0)


def ddim_step(x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM (Song et al. 2021, Eq. 12 with eta 0) in sigma space; sigma (B, 1, 1, 1)."""
    return x0 + sigma_next * (x - x0) / sigma


def two_step_target(x: torch.Tensor, x2: torch.Tensor, sigma: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """The x0 that takes x at sigma to x2 at sigma2 in one DDIM step (Salimans & Ho 2022, Algorithm 2:
    x~ = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t), here divided by alpha)."""
    ratio = sigma2 / sigma
    return (x2 - ratio * x) / (1.0 - ratio)


class StudentLoss(nn.Module):
    """Weighted x-space error of the student against a target (the module DDP wraps)."""

    def __init__(self, student: GuidedStudent) -> None:
        super().__init__()
        self.student = student

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, guidance: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:
        pred = self.student(x, sigma, cond, guidance=guidance)
        per_sample = (pred - target).pow(2).mean(dim=(1, 2, 3))
        return (truncated_snr_weight(sigma) * per_sample).mean()


class DistillTask(TrainTask):
    """A student UNet learning from a frozen teacher on the teacher's latent stream."""

    def __init__(self, *, env: D.DistEnv, student: Denoiser, teacher: Any, stream: Any, settings: Any,
                 phase_steps: int | None, grid: torch.Tensor | None, use_text_mask: bool) -> None:
        self.env, self.stream, self.settings = env, stream, settings
        self.model = student.unet
        self.student = GuidedStudent(student)
        self.teacher = teacher  # CFGDenoiser (stage 1) or GuidedStudent (rounds): (x, sigma, ...) -> x0
        self.phase_steps, self.grid = phase_steps, grid  # grid: the teacher's sigmas (2 * phase_steps + 1,)
        self.use_text_mask = use_text_mask
        self.step_module = D.wrap_model(StudentLoss(self.student), self.model, env, "ddp")
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=settings.lr, weight_decay=0.0)
        self.ema: EMA | None = EMA(self.model, settings.ema_decay)
        self.extra = {}
        self.state = TrainState()
        self.data_start: dict[str, int] = {}

    def _inputs(self, state: TrainState, micro: int) -> dict[str, Any]:
        from opencanvas.train.data import training_inputs

        device = self.env.device
        # Micro-batch g = micro * world + rank, as in `train`: a step is the same computation on any number of ranks.
        gen = step_generator(device, self.settings.seed, micro * self.env.world + self.env.rank, state.images_seen)
        inputs: dict[str, Any] = dict(training_inputs(
            self.stream.next_batch(), self.stream, gen, device, num_timesteps=1000, caption_dropout=0.0,
            offset_noise=0.0, use_text_mask=self.use_text_mask))
        b = cast(torch.Tensor, inputs["x0"]).shape[0]
        lo, hi = self.settings.guidance_range
        inputs["guidance"] = lo + (hi - lo) * torch.rand(b, generator=gen, device=device)  # w ~ U(range)
        if self.grid is None:
            inputs["sigma"] = self.teacher.inner.sigmas[inputs["timesteps"]]
        else:
            assert self.phase_steps is not None
            inputs["index"] = torch.randint(0, self.phase_steps, (b,), generator=gen, device=device)
        return inputs

    @torch.no_grad()
    def _target(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(x at sigma, the x0 the student must predict there)."""
        x0, noise, cond, g = inputs["x0"], inputs["noise"], inputs["cond"], inputs["guidance"]
        if self.grid is None:  # stage 1: x0_w = x0_uncond + w (x0_cond - x0_uncond), per-sample w
            sigma = inputs["sigma"]
            x = x0 + sigma.view(-1, 1, 1, 1) * noise
            uncond = self.stream.null_conditioning(self.use_text_mask).expand(cond.batch_size)
            both = self.teacher.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), Conditioning.cat([uncond, cond]))
            x0_u, x0_c = both.chunk(2)
            return x, x0_u + g.view(-1, 1, 1, 1) * (x0_c - x0_u)
        i = inputs["index"]
        s0, s1, s2 = self.grid[2 * i], self.grid[2 * i + 1], self.grid[2 * i + 2]  # (B,) each
        v = (-1, 1, 1, 1)
        x = x0 + s0.view(v) * noise
        d0 = self.teacher(x, s0, cond, guidance=g)
        x1 = ddim_step(x, d0, s0.view(v), s1.view(v))
        d1 = self.teacher(x1, s1, cond, guidance=g)
        x2 = ddim_step(x1, d1, s1.view(v), s2.view(v))
        return x, two_step_target(x, x2, s0.view(v), s2.view(v))

    def gradients(self, state: TrainState) -> dict[str, float]:
        accumulation = self.settings.accumulation(self.env.world)
        loss_sum = torch.zeros((), device=self.env.device)
        for micro in range(accumulation):
            inputs = self._inputs(state, micro)
            x, target = self._target(inputs)
            sigma = inputs["sigma"] if self.grid is None else self.grid[2 * inputs["index"]]  # (B,)
            last = micro == accumulation - 1
            # DDP all-reduces the gradients on the last micro-batch of the step only
            sync = (contextlib.nullcontext() if last or not self.env.active
                    else cast("DistributedDataParallel", self.step_module).no_sync())
            with sync:
                loss = self.step_module(x, sigma, inputs["cond"], inputs["guidance"], target)
                (loss / accumulation).backward()
            loss_sum += loss.detach()
        loss_mean = float(D.all_reduce_sum(self.env, loss_sum)) / (accumulation * self.env.world)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        return {"loss": loss_mean, "grad_norm": float(grad_norm)}

    def data_position(self) -> dict[str, int]:
        return self.stream.position()

