"""Guided distillation: a CFG teacher run -> a few-step, guidance-conditioned student run (Meng et al. 2023).

Import from the modules (`distill.stage.distill`, `distill.settings.DistillSettings`): the package
re-exports nothing, so `opencanvas --help` does not import torch.
"""
