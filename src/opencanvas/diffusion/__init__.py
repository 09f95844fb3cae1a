"""The diffusion core: the denoiser (schedule, parameterisation, loss), pure samplers and guidance.

It imports no stage, so training (validation grids), sampling, evaluation and later
distillation share one copy (what k-diffusion's `sampling.py` and `external.py` are to its scripts).
"""

from opencanvas.diffusion.denoiser import Denoiser, NoiseSchedule, PredictionType

__all__ = ["Denoiser", "NoiseSchedule", "PredictionType"]
