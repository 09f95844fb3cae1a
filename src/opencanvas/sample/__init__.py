"""Sampling and evaluation with the diffusion core's samplers and guidance (`opencanvas.diffusion`):
`generate.generate` (prompts -> PIL images) and `evaluate.evaluate` (FID/KID or FD-CLIP/KID-CLIP, CLIP
score, precision/recall, memorization) across guidance scales.

Import from the modules: `opencanvas --help` imports this package for its CLI and must not pay for
torch, so nothing is re-exported here.
"""
