"""Names that become paths, and what a fresh start may delete (issue 19 item 5, issue 22 item 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opencanvas.workspace import InvalidName, Workspace, WorkspaceNotEmpty, check_name

BAD_NAMES = ["/elsewhere/ae", "../../x", "..", ".", "", "a\x00b", "a\\b", "a/b", "runs/../..", ".hidden",
             "-rf", "a b", "x\n", "é", "a" * 129, "~", "$HOME"]

ACCESSORS = ["source_dir", "subset_path", "images_dir", "captions_dir", "autoencoder_dir", "clip_dir",
             "latents_dir", "run_dir", "study_dir"]


@pytest.mark.parametrize("accessor", ACCESSORS)
@pytest.mark.parametrize("name", BAD_NAMES)
def test_every_accessor_refuses_names_that_leave_their_folder(ws: Workspace, accessor: str, name: str) -> None:
    with pytest.raises(InvalidName, match="is not allowed: use 1-128 letters, digits"):
        getattr(ws, accessor)(name)


@pytest.mark.parametrize("accessor", ACCESSORS)
def test_ordinary_names_stay_one_level_below_their_folder(ws: Workspace, accessor: str) -> None:
    for name in ("clipart-c", "run_2.v1", "A", "x" * 128):
        path = getattr(ws, accessor)(name)
        assert path.resolve().parent.parent == ws.root
        assert path.name in (name, f"{name}.parquet")


def test_reserved_folder_names_are_refused_where_they_collide(ws: Workspace) -> None:
    for accessor, name in (("source_dir", "quarantine"), ("source_dir", "stats"), ("captions_dir", "stats")):
        with pytest.raises(InvalidName, match="and not"):
            getattr(ws, accessor)(name)


@given(st.text(max_size=40))
def test_any_accepted_name_is_one_plain_path_component(name: str) -> None:
    try:
        check_name("run", name)
    except InvalidName:
        return
    assert Path(name).name == name and name not in (".", "..") and not name.startswith(".")
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in name)


def _user_files(root: Path) -> None:
    (root / "my_notes.txt").write_text("mine")
    (root / "src").mkdir()
    (root / "src" / "main.py").write_text("print(1)")


def test_clear_refuses_and_deletes_nothing_when_the_user_has_files_there(ws: Workspace) -> None:
    (ws.root / "runs" / "r").mkdir(parents=True)
    _user_files(ws.root)
    with pytest.raises(WorkspaceNotEmpty, match=r"my_notes.txt, src/\), so nothing was deleted"):
        ws.clear()
    assert (ws.root / "my_notes.txt").read_text() == "mine"
    assert (ws.root / "src" / "main.py").exists() and (ws.root / "runs" / "r").is_dir()


def test_clear_deletes_stage_folders_and_keeps_settings(ws: Workspace, tmp_path: Path) -> None:
    for name in ("catalog", "runs", "demo"):
        (ws.root / name / "x").mkdir(parents=True)
    ws.settings_path.write_text("[fetch]\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (ws.root / "images").symlink_to(outside, target_is_directory=True)   # a stage folder kept elsewhere
    removed = ws.clear()
    assert set(removed) == {"catalog", "runs", "demo", "images"}
    assert sorted(p.name for p in ws.root.iterdir()) == ["opencanvas.toml"]
    assert (outside / "keep.txt").read_text() == "keep"   # the link went, not what it pointed at


def test_remove_refuses_anything_outside_the_stage_folders(ws: Workspace, tmp_path: Path) -> None:
    (ws.root / "runs" / "r").mkdir(parents=True)
    _user_files(ws.root)
    victim = tmp_path / "victim.txt"
    victim.write_text("v")
    for path in (ws.root / "my_notes.txt", ws.root / "src", ws.root, ws.settings_path, victim,
                 ws.root / "runs" / "..", ws.root / "runs" / "r" / ".." / ".." / "src", Path("my_notes.txt")):
        with pytest.raises(ValueError, match="refusing to delete"):
            ws.remove(path)
    assert victim.exists() and (ws.root / "my_notes.txt").exists() and (ws.root / "src" / "main.py").exists()
    ws.remove(ws.root / "runs" / "r")
    assert not (ws.root / "runs" / "r").exists()
    ws.remove(Path("runs"))   # relative to the workspace
    assert not (ws.root / "runs").exists()

