"""A run's checkpoints: the one format of opencanvas.training.checkpoint, by the names runs use."""

from opencanvas.training.checkpoint import (
    CHECKPOINT_RE,
    Checkpoint,
    DamagedCheckpointWarning,
    TrainState,
    checkpoint_dir,
    checkpoint_problem,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    read_metadata,
    remove_partial_files,
    save_checkpoint,
    tensors_hash,
)

__all__ = ["CHECKPOINT_RE", "Checkpoint", "DamagedCheckpointWarning", "TrainState", "checkpoint_dir",
           "checkpoint_problem", "latest_checkpoint", "list_checkpoints", "load_checkpoint", "prune_checkpoints",
           "read_metadata", "remove_partial_files", "save_checkpoint", "tensors_hash"]
