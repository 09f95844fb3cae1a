"""Guided distillation: a CFG teacher run -> a few-step, guidance-conditioned student run (Meng et al. 2023)."""

from opencanvas.distill.settings import DistillSettings
from opencanvas.distill.stage import distill

__all__ = ["DistillSettings", "distill"]
