"""train stage: the UNet training recipe on precomputed latents, inference pipelines and export.

Import from the modules (`loop.train`, `pipeline.load_pipeline`, `to_diffusers.export`, `presets.PRESETS`):
nothing is re-exported here, so `import opencanvas.train` (and `opencanvas --help`) stays free of torch.
"""
