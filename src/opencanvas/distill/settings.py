"""What `opencanvas distill` was asked for, checked before any work."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MAX_GUIDANCE = 30.0


@dataclass(frozen=True)
class DistillSettings:
    teacher: str  # the teacher run
    student: str  # the student run written
    guidance_range: tuple[float, float] = (1.0, 8.0)  # w ~ U(range) while training
    base_steps: int = 32  # N: the teacher's DDIM steps that progressive distillation starts from
    target_steps: int = 4
    images_per_round: int = 2048  # training images of stage 1 and of each halving round
    batch: int = 16
    micro_batch: int | None = None  # images per forward pass on a rank (None: batch / ranks, no accumulation)
    lr: float = 5e-4  # 1e-4 left stage 1 (2048 images) 2.6 CLIP points short of the teacher on the demo
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int | None = None
    keep: int = 2

    @property
    def rounds(self) -> list[int]:
        """The student step counts, one per progressive round: N/2, N/4, ..., target."""
        steps, out = self.base_steps, []
        while steps > self.target_steps:
            steps //= 2
            out.append(steps)
        return out

    def micro(self, world: int) -> int:
        """Images per micro-batch on each of `world` ranks."""
        return self.micro_batch if self.micro_batch is not None else self.batch // world

    def accumulation(self, world: int) -> int:
        """Micro-batches per optimizer step on each of `world` ranks."""
        return self.batch // (self.micro(world) * world)

    def check_world(self, world: int) -> None:
        per_step = self.micro(world) * world
        if per_step == 0 or self.batch % per_step:
            raise ValueError(f"--batch {self.batch} must be a multiple of --micro-batch {self.micro(world)} x {world} "
                             f"ranks; pick e.g. --batch {max(world, per_step)} or another --micro-batch")

    def validate(self) -> DistillSettings:
        lo, hi = self.guidance_range
        if not (0.0 < lo <= hi <= MAX_GUIDANCE):
            raise ValueError(f"--guidance-range {lo},{hi} must lie in (0, {MAX_GUIDANCE:g}] with low <= high, "
                             "e.g. --guidance-range 1,8")
        n, k = self.base_steps, self.target_steps
        if k < 1 or n < k or n % k or (n // k) & (n // k - 1):
            raise ValueError(f"--target-steps {k} is not reachable by halving {n} teacher steps: give a power-of-two "
                             f"divisor of {n} (e.g. 4, 2 or 1), or change --base-steps")
        if self.images_per_round < self.batch:
            raise ValueError(f"--images-per-round {self.images_per_round} is less than one batch ({self.batch})")
        return self

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["guidance_range"] = list(self.guidance_range)
        return out


def parse_range(text: str) -> tuple[float, float]:
    """'1,8' -> (1.0, 8.0)."""
    parts = text.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--guidance-range must be two numbers, LOW,HIGH (e.g. 1,8), got {text!r}") from None
    return lo, hi


def check_teacher(config: dict[str, Any], teacher: str) -> None:
    """A teacher must have an unconditional branch to guide with, and must not be a student itself."""
    if float(config.get("caption_dropout", 0.0)) <= 0.0:
        raise ValueError(f"run {teacher!r} was trained without caption dropout, so it has no unconditional branch "
                         "for classifier-free guidance: distil a run trained with --caption-dropout > 0")
    if config.get("distilled"):
        raise ValueError(f"run {teacher!r} is already a distilled student: distil its teacher "
                         f"{config['distilled'].get('teacher')!r} instead")
