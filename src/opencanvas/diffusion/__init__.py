"""The diffusion core: the denoiser (schedule, parameterisation, loss), pure samplers and guidance.

It imports no stage, so training (validation grids), sampling, evaluation and later
distillation share one copy (what k-diffusion's `sampling.py` and `external.py` are to its scripts).

Import from the modules (`denoiser.Denoiser`, `samplers.get_sampler`, `guidance`); `names` holds the
sampler and spacing names without torch, for the CLI's choices. Nothing is re-exported here, so that
`opencanvas --help` never pays for torch.
"""
