"""The workspace: one directory holding every stage's inputs and outputs.

Layout (see ../shared/architecture.md, the contract between stages)::

    opencanvas.toml
    catalog/<source>/part-*.parquet      catalog/quarantine/*.parquet
    subsets/<name>.parquet
    images/<subset>/shard-*.tar|parquet
    captions/<captioner>/part-*.parquet
    autoencoders/<name>/  clips/<name>/  latents/<name>/  runs/<name>/

Every path stored inside the workspace is relative to its root, so a workspace
can be moved.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SETTINGS_FILE = "opencanvas.toml"
QUARANTINE = "quarantine"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def open(cls, root: str | Path) -> Workspace:
        """Open (and create if needed) a workspace directory."""
        path = Path(root).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    # ---- settings -------------------------------------------------------
    @property
    def settings_path(self) -> Path:
        return self.root / SETTINGS_FILE

    def settings(self) -> dict[str, Any]:
        """`opencanvas.toml` as a dict (empty when absent)."""
        if not self.settings_path.exists():
            return {}
        with self.settings_path.open("rb") as f:
            return tomllib.load(f)

    # ---- stage directories ----------------------------------------------
    @property
    def catalog_dir(self) -> Path:
        return self.root / "catalog"

    def source_dir(self, source: str) -> Path:
        if source == QUARANTINE:
            raise ValueError("'quarantine' is reserved and cannot be a source name")
        return self.catalog_dir / source

    @property
    def quarantine_dir(self) -> Path:
        return self.catalog_dir / QUARANTINE

    def subset_path(self, name: str) -> Path:
        return self.root / "subsets" / f"{name}.parquet"

    def images_dir(self, subset: str) -> Path:
        return self.root / "images" / subset

    def captions_dir(self, captioner: str) -> Path:
        return self.root / "captions" / captioner

    def autoencoder_dir(self, name: str) -> Path:
        return self.root / "autoencoders" / name

    def clip_dir(self, name: str) -> Path:
        return self.root / "clips" / name

    def latents_dir(self, name: str) -> Path:
        return self.root / "latents" / name

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / name

    def relative(self, path: Path) -> str:
        """A path as stored in workspace records: relative to the root."""
        return Path(path).resolve().relative_to(self.root).as_posix()
