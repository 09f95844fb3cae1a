"""A workspace for the web app's tests: two tiny trained runs on the synthetic shapes subset, a tiny
catalog CLIP, and catalog text written by a hostile stranger (script tags, javascript: links)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from opencanvas.catalog.schema import CATALOG_SCHEMA
from opencanvas.storage import atomic_write_parquet
from opencanvas.workspace import Workspace
from tests.factories import make_captions, make_image_subset

EVIL_TITLE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
RUNS = ("tiny-a", "tiny-b")
PROMPTS_TSV = ("Prompt\tCategory\tChallenge\na red circle\tShapes\tBasic\na blue square\tShapes\tBasic\n"
               "a green triangle\tColors\tBasic\na yellow circle <b>bold</b>\tColors\tBasic\n")


def hostile_catalog(ws: Workspace) -> None:
    """Every title gets a script tag and an event handler; every author link is javascript:."""
    part = ws.source_dir("synthetic") / "part-00000.parquet"
    rows = pq.read_table(part).to_pylist()
    for r in rows:
        r["title"] = f"{r['title']} {EVIL_TITLE}"
        r["creator_url"] = "javascript:window.__pwned=3"
    atomic_write_parquet(part, pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA))


def make_web_workspace(root: Path) -> tuple[Workspace, Path]:
    """Returns the workspace and a tiny CLIP folder (for `clip=`)."""
    from opencanvas.encode import encode
    from opencanvas.sample.tiny import write_tiny_clip
    from opencanvas.train.loop import train
    from tests.test_train_pipeline import write_components

    ws = Workspace.open(root / "ws")
    components = write_components(ws.root / "sd2-tiny")
    make_image_subset(ws, "shapes", n=16, size=32, shard_size=8)
    make_captions(ws, "shapes", "metadata")
    hostile_catalog(ws)   # after captioning: the captions (prompts) stay plain, the catalog text is hostile
    encode(ws, "shapes", str(components), str(components), ["metadata"], "shapes16", resolutions=(16,))
    for seed, run in enumerate(RUNS):
        train(ws, "shapes16", "tiny", run, images=16, batch=8, validate_every=16,
              validation_prompts=("a red circle", "a blue square"), seed=seed)
    (ws.root / "prompts.tsv").write_text(PROMPTS_TSV, encoding="utf-8")
    return ws, write_tiny_clip(root / "clip")


def shared_web_workspace(tmp_path_factory: object) -> tuple[Workspace, Path]:
    """One web workspace per pytest session (each test module asks; the first builds it). Tests that
    add to it use their own study names and runs' sample folders, so they do not see each other."""
    base = Path(tmp_path_factory.getbasetemp()) / "web-workspace"   # type: ignore[attr-defined]
    done = base / "ready"
    if not done.exists():
        if base.exists():
            import shutil

            shutil.rmtree(base)   # a half-built one from an interrupted fixture
        base.mkdir(parents=True)
        make_web_workspace(base)
        done.write_text("ok")
    return Workspace.open(base / "ws"), base / "clip"


def synthetic_study(ws: Workspace, name: str, prompts: int, raters: int = 0,
                    categories: tuple[str, ...] = ("animals", "vehicles", "food")) -> list[str]:
    """A study of two models ("model-a", "model-b") over `prompts` plain PNGs, no sampling; returns tokens."""
    from PIL import Image

    from opencanvas.humaneval.store import open_study

    study = open_study(ws, name, create=True)
    models = [study.add_model(m, m, m, {}) for m in ("model-a", "model-b")]
    for i in range(prompts):
        study.add_prompt(i, f"prompt number {i}", categories[i % len(categories)], None, i)
        for m in models:
            image_id = f"{i:08x}{m:08x}"
            rel = f"{name}/images/{image_id}.png"
            path = study.path.parent / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 64), (i % 255, 80 * m, 0)).save(path)
            study.add_image(image_id, i, m, rel, {"model": m})
    study.make_pairs()
    return study.add_raters(raters) if raters else []
