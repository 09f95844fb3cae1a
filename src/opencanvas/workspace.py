"""The workspace: one directory holding every stage's inputs and outputs.

Layout (see ../shared/architecture.md, the contract between stages)::

    opencanvas.toml
    catalog/<source>/part-*.parquet      catalog/quarantine/*.parquet
    subsets/<name>.parquet
    images/<subset>/shard-*.tar|parquet
    captions/<captioner>/part-*.parquet
    autoencoders/<name>/  clips/<name>/  latents/<name>/  runs/<name>/  studies/<name>/

Every path stored inside the workspace is relative to its root, so a workspace
can be moved. Every name that becomes a path goes through `check_name`, inside
the accessors, so no caller can write outside the layout; every removal goes
through `Workspace.remove` or `Workspace.clear`, which touch only the layout.
"""

from __future__ import annotations

import re
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SETTINGS_FILE = "opencanvas.toml"
QUARANTINE = "quarantine"

# The top-level folders OpenCanvas stages own (architecture.md's layout, plus the demo's state).
STAGE_FOLDERS = ("catalog", "subsets", "images", "captions", "autoencoders", "clips", "latents", "runs",
                 "studies", "humaneval", "takedowns", "demo")
# What a workspace may hold at its top level besides STAGE_FOLDERS; never removed.
KEPT_FILES = (SETTINGS_FILE,)

# kind -> (top-level folder, file suffix or "" for a folder per name); see Workspace.names.
KINDS = {"subset": ("subsets", ".parquet"), "fetched": ("images", ""), "captions": ("captions", ""),
         "autoencoder": ("autoencoders", ""), "CLIP": ("clips", ""), "latents": ("latents", ""), "run": ("runs", ""),
         "study": ("studies", "")}

# A name is one path component: no separators, no leading dot (so never '.' or '..'), nothing a shell quotes.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class InvalidName(ValueError):
    """A name that cannot become a folder or file in the workspace."""


def check_name(kind: str, name: str, reserved: tuple[str, ...] = ()) -> str:
    """`name` unchanged if it is safe as one path component under the workspace, else InvalidName."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in reserved:
        taken = f" (and not {', '.join(repr(r) for r in reserved)})" if reserved else ""
        raise InvalidName(f"{kind} name {name!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
                          f"starting with a letter or digit{taken}")
    return name


def is_name(name: str) -> bool:
    """Whether `name` passes `check_name` (for specs that may also be a path or a hub id)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


class WorkspaceNotEmpty(RuntimeError):
    """The workspace holds files OpenCanvas did not write, so nothing was removed."""


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
        # catalog/stats/ holds the license chart.
        return self.catalog_dir / check_name("source", source, reserved=(QUARANTINE, "stats"))

    @property
    def quarantine_dir(self) -> Path:
        return self.catalog_dir / QUARANTINE

    def subset_path(self, name: str) -> Path:
        return self.root / "subsets" / f"{check_name('subset', name)}.parquet"

    def images_dir(self, subset: str) -> Path:
        return self.root / "images" / check_name("subset", subset)

    def captions_dir(self, captioner: str) -> Path:
        # captions/stats/ holds the caption report.
        return self.root / "captions" / check_name("caption table", captioner, reserved=("stats",))

    def autoencoder_dir(self, name: str) -> Path:
        return self.root / "autoencoders" / check_name("autoencoder", name)

    def clip_dir(self, name: str) -> Path:
        return self.root / "clips" / check_name("CLIP", name)

    def latents_dir(self, name: str) -> Path:
        return self.root / "latents" / check_name("latent set", name)

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / check_name("run", name)

    def study_dir(self, name: str) -> Path:
        return self.root / "studies" / check_name("study", name)

    # ---- what exists -------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        """The names of one kind present here: subset, fetched (a subset's images), captions, autoencoder,
        CLIP, latents, run or study."""
        folder, suffix = KINDS[kind]
        root = self.root / folder
        if not root.is_dir():
            return []
        if suffix:
            found = [p.name[: -len(suffix)] for p in root.iterdir() if p.is_file() and p.name.endswith(suffix)]
        else:
            found = [p.name for p in root.iterdir() if p.is_dir()]
        return sorted(n for n in found if is_name(n) and n not in ("stats", QUARANTINE))

    def relative(self, path: Path) -> str:
        """A path as stored in workspace records: relative to the root."""
        return Path(path).resolve().relative_to(self.root).as_posix()

    # ---- removal ----------------------------------------------------------
    def foreign_entries(self) -> list[str]:
        """Top-level entries OpenCanvas did not write (anything outside the known layout), sorted."""
        known = set(STAGE_FOLDERS) | set(KEPT_FILES)
        return sorted(p.name + ("/" if p.is_dir() else "") for p in self.root.iterdir() if p.name not in known)

    def remove(self, path: Path) -> None:
        """Delete `path` (file or folder) if it lies inside one of the stage folders; refuse anything else.

        A symlink is unlinked, never followed, so nothing outside the workspace is touched.
        """
        path = Path(path)
        absolute = path if path.is_absolute() else self.root / path
        parent = absolute.parent.resolve()   # resolve the folder, not the entry: a link is removed, not its target
        try:
            inside = parent.relative_to(self.root).parts
        except ValueError:
            inside = ()
        in_stage_folder = bool(inside) and inside[0] in STAGE_FOLDERS
        is_stage_folder = parent == self.root and absolute.name in STAGE_FOLDERS
        if absolute.name in ("", ".", "..") or not (in_stage_folder or is_stage_folder):
            raise ValueError(f"refusing to delete {absolute}: it is outside the workspace's stage folders "
                             f"({', '.join(STAGE_FOLDERS)}) in {self.root}")
        entry = parent / absolute.name
        if entry.is_symlink() or entry.is_file():
            entry.unlink()
        elif entry.is_dir():
            shutil.rmtree(entry)

    def clear(self) -> list[str]:
        """Delete every stage folder (a fresh start); returns the names removed.

        Refuses, removing nothing, when the workspace holds anything else: a workspace defaults to the
        current directory, and files there may be the user's.
        """
        foreign = self.foreign_entries()
        if foreign:
            shown = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more" if len(foreign) > 8 else "")
            raise WorkspaceNotEmpty(
                f"{self.root} holds files OpenCanvas did not write ({shown}), so nothing was deleted: "
                "move them out, or pick an empty workspace with -w DIR")
        removed = [name for name in STAGE_FOLDERS if (self.root / name).exists() or (self.root / name).is_symlink()]
        for name in removed:
            self.remove(self.root / name)
        return removed
