"""Checkpoints: one safetensors file holding everything a resume needs.

Tensors: `model/<param>` (the trained model), `ema/<param>` (absent when EMA is off),
`optim/<param>/<field>` (AdamW moments and step), and for further trained modules
(an autoencoder's discriminator) `extra/<module>/<param>` and
`extra_optim/<module>/<param>/<field>`. Metadata (strings): `config` (the resolved
configuration as JSON), `state` (images seen, optimizer steps, data position,
skipped steps), `optim_groups` and `extra_optim_groups` (AdamW hyperparameters).
No pickle anywhere, so loading a checkpoint never runs code.

Files are `checkpoints/ckpt-<images seen, 12 digits>.safetensors`, written to a
temporary name and renamed, so a kill never leaves a half-written file under the
final name. A file damaged afterwards (truncated by a full disk, overwritten) is
named in a warning and skipped: the newest intact checkpoint is used instead.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from opencanvas.storage import atomic_path

CHECKPOINT_RE = re.compile(r"^ckpt-(\d{12})\.safetensors$")
FORMAT = "opencanvas-train-1"
DAMAGED_SUFFIX = ".damaged"


class DamagedCheckpointWarning(UserWarning):
    """A checkpoint file that cannot be read was skipped."""


@dataclass
class TrainState:
    """Counters that, with the seed, fix everything the next step does."""

    images_seen: int = 0
    steps: int = 0  # optimizer steps attempted (skipped ones included)
    skipped_steps: int = 0
    bad_streak: int = 0  # consecutive non-finite steps
    data: dict[str, int] = field(default_factory=dict)  # the data stream's position (the UNet's latent stream)
    wall_seconds: float = 0.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**d)


@dataclass
class Checkpoint:
    path: Path
    config: dict[str, Any]
    state: TrainState
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # {"state": {param: {field: tensor}}, "param_groups": [...]}
    extra: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # module name -> state dict
    extra_optimizers: dict[str, dict[str, Any]] = field(default_factory=dict)  # module name -> optimizer state


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint files by name, oldest first (intact or not: see `intact_checkpoints`)."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if CHECKPOINT_RE.match(p.name))


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be read as a checkpoint (None: its header, size and format are sound).

    safetensors checks that the header covers the file exactly, so truncation and garbage are caught
    here without reading the tensors.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    if meta.get("format") != FORMAT:
        return f"format {meta.get('format')!r}, not {FORMAT!r}"
    if not {"config", "state"} <= set(meta):
        return "metadata lacks the config or the training state"
    return None


def latest_checkpoint(run_dir: Path, quarantine: bool = False) -> Path | None:
    """The newest intact checkpoint; each newer damaged one is named in a DamagedCheckpointWarning.

    quarantine=True (a trainer about to write here) renames damaged files to `*.damaged`, so they are
    reported once and never count towards --keep.
    """
    for path in reversed(list_checkpoints(run_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        action = f"renamed to {path.name}{DAMAGED_SUFFIX}; " if quarantine else ""
        warnings.warn(f"checkpoint {path} is damaged ({problem}): {action}falling back to the previous one",
                      DamagedCheckpointWarning, stacklevel=2)
        if quarantine:
            path.rename(path.with_name(path.name + DAMAGED_SUFFIX))
    return None


def save_checkpoint(run_dir: Path, config: dict[str, Any], state: TrainState, model: dict[str, torch.Tensor],
                    ema: dict[str, torch.Tensor], optimizer: dict[str, Any], keep: int = 0,
                    extra: dict[str, dict[str, torch.Tensor]] | None = None,
                    extra_optimizers: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write a checkpoint atomically (refusing non-finite weights), then prune to `keep` newest."""
    tensors: dict[str, torch.Tensor] = {}
    groups = [("model", model), ("ema", ema)] + [(f"extra/{n}", sd) for n, sd in (extra or {}).items()]
    for prefix, sd in groups:
        for name, t in sd.items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise FloatingPointError(f"refusing to save a checkpoint: {prefix} weight {name} is not finite")
            tensors[f"{prefix}/{name}"] = t.detach().cpu().contiguous()
    optimizers = [("optim", optimizer)] + [(f"extra_optim/{n}", o) for n, o in (extra_optimizers or {}).items()]
    for prefix, osd in optimizers:
        for name, fields in osd["state"].items():
            for key, t in fields.items():
                tensors[f"{prefix}/{name}/{key}"] = torch.as_tensor(t).detach().cpu().contiguous()
    metadata = {"config": json.dumps(config, sort_keys=True), "state": json.dumps(asdict(state)),
                "optim_groups": json.dumps(optimizer["param_groups"]), "format": FORMAT,
                "extra_optim_groups": json.dumps({n: o["param_groups"] for n, o in (extra_optimizers or {}).items()})}
    out = checkpoint_dir(run_dir) / f"ckpt-{state.images_seen:012d}.safetensors"
    # Written with save_file beside the target rather than through bytes in memory:
    # an sd2-base checkpoint (model + EMA + AdamW) is ~14 GB.
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    prune_checkpoints(run_dir, keep)
    return out


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the `keep` newest checkpoints (keep=0 keeps all); returns the deleted."""
    found = list_checkpoints(run_dir)
    doomed = found[:-keep] if keep > 0 else []
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


def remove_partial_files(run_dir: Path) -> None:
    """Temporary files of a save interrupted by a kill."""
    d = checkpoint_dir(run_dir)
    if d.is_dir():
        for p in d.glob(".ckpt-*.tmp"):
            p.unlink(missing_ok=True)


def read_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_checkpoint(path: Path, parts: tuple[str, ...] = ("model", "ema", "optim", "extra")) -> Checkpoint:
    """Read a checkpoint; `parts` limits which tensor groups are loaded (inference needs one)."""
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(f"{path} is not a readable OpenCanvas training checkpoint ({problem}): pick another "
                         f"checkpoint, or delete this file to resume from the previous one")
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}}
    extra: dict[str, dict[str, torch.Tensor]] = {}
    optim_state: dict[str, dict[str, dict[str, torch.Tensor]]] = {"optim": {}}
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        for key in f.keys():
            prefix, _, rest = key.partition("/")
            if ("extra" if prefix.startswith("extra") else prefix) not in parts:
                continue
            if prefix in ("model", "ema"):
                groups[prefix][rest] = f.get_tensor(key)
            elif prefix == "extra":
                module, _, name = rest.partition("/")
                extra.setdefault(module, {})[name] = f.get_tensor(key)
            else:
                owner = "optim"
                if prefix == "extra_optim":
                    owner, _, rest = rest.partition("/")
                name, _, fld = rest.rpartition("/")
                optim_state.setdefault(owner, {}).setdefault(name, {})[fld] = f.get_tensor(key)
    extra_groups = json.loads(meta.get("extra_optim_groups", "{}"))
    return Checkpoint(path=Path(path), config=json.loads(meta["config"]),
                      state=TrainState.from_dict(json.loads(meta["state"])), model=groups["model"],
                      ema=groups["ema"], optimizer={"state": optim_state["optim"],
                                                    "param_groups": json.loads(meta["optim_groups"])},
                      extra=extra, extra_optimizers={n: {"state": optim_state.get(n, {}), "param_groups": g}
                                                     for n, g in extra_groups.items()})


def tensors_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over tensors' names, dtypes, shapes and bytes (order-independent of the dict)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
