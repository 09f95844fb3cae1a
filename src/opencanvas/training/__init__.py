"""The one training loop every trained model goes through: the UNet (opencanvas.train), the
autoencoder and the CLIP (opencanvas.components).

Counted in images seen, seeded per step from (seed, rank, images seen), with one checkpoint
format (atomic safetensors, the settings embedded), an EMA, resume by re-running the same
command, and metrics.jsonl + TensorBoard. It imports no stage: stages import it.
"""

# The default checkpoint schedule (here, not in loop.py, so configs can name it without importing torch).
AUTO_CHECKPOINTS = 20  # checkpoint_every=None: this many checkpoints over a run
DEFAULT_CHECKPOINT_MINUTES = 30.0  # ... or one every this many minutes of wall time, whichever comes first
DEFAULT_KEEP = 3  # the newest checkpoints kept
