"""Checkpoints: one safetensors file holding everything a resume needs.

Tensors: `model/<param>` (the UNet), `ema/<param>`, `optim/<param>/<field>` (AdamW
moments and step). Metadata (strings): `config` (the resolved TrainConfig as
JSON), `state` (images seen, optimizer steps, data position, skipped steps) and
`optim_groups` (AdamW hyperparameters). No pickle anywhere, so loading a
checkpoint never runs code.

Files are `checkpoints/ckpt-<images seen, 12 digits>.safetensors`, written to a
temporary name and renamed, so the newest file is always complete.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from opencanvas.storage import atomic_path

CHECKPOINT_RE = re.compile(r"^ckpt-(\d{12})\.safetensors$")


@dataclass
class TrainState:
    """Counters that, with the seed, fix everything the next step does."""

    images_seen: int = 0
    steps: int = 0  # optimizer steps attempted (skipped ones included)
    skipped_steps: int = 0
    bad_streak: int = 0  # consecutive non-finite steps
    data: dict[str, int] = field(default_factory=dict)  # {"resolution", "epoch", "start"}
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


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if CHECKPOINT_RE.match(p.name))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: Path, config: dict[str, Any], state: TrainState, model: dict[str, torch.Tensor],
                    ema: dict[str, torch.Tensor], optimizer: dict[str, Any], keep: int = 0) -> Path:
    """Write a checkpoint atomically (refusing non-finite weights), then prune to `keep` newest."""
    tensors: dict[str, torch.Tensor] = {}
    for prefix, sd in (("model", model), ("ema", ema)):
        for name, t in sd.items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise FloatingPointError(f"refusing to save a checkpoint: {prefix} weight {name} is not finite")
            tensors[f"{prefix}/{name}"] = t.detach().cpu().contiguous()
    for name, fields in optimizer["state"].items():
        for key, t in fields.items():
            tensors[f"optim/{name}/{key}"] = torch.as_tensor(t).detach().cpu().contiguous()
    metadata = {"config": json.dumps(config, sort_keys=True), "state": json.dumps(asdict(state)),
                "optim_groups": json.dumps(optimizer["param_groups"]), "format": "opencanvas-train-1"}
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


def load_checkpoint(path: Path, parts: tuple[str, ...] = ("model", "ema", "optim")) -> Checkpoint:
    """Read a checkpoint; `parts` limits which tensor groups are loaded (inference needs one)."""
    model: dict[str, torch.Tensor] = {}
    ema: dict[str, torch.Tensor] = {}
    optim_state: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        for key in f.keys():
            prefix, _, rest = key.partition("/")
            if prefix not in parts:
                continue
            if prefix == "model":
                model[rest] = f.get_tensor(key)
            elif prefix == "ema":
                ema[rest] = f.get_tensor(key)
            elif prefix == "optim":
                name, _, fld = rest.rpartition("/")
                optim_state.setdefault(name, {})[fld] = f.get_tensor(key)
    if meta.get("format") != "opencanvas-train-1":
        raise ValueError(f"{path} is not an OpenCanvas training checkpoint (format {meta.get('format')!r})")
    return Checkpoint(path=Path(path), config=json.loads(meta["config"]),
                      state=TrainState.from_dict(json.loads(meta["state"])), model=model, ema=ema,
                      optimizer={"state": optim_state, "param_groups": json.loads(meta["optim_groups"])})


def tensors_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over tensors' names, dtypes, shapes and bytes (order-independent of the dict)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
