"""`opencanvas publish model`: a run as a Hub model folder: the diffusers pipeline (as `export` writes it),
a README with the model card under the Hub's YAML header, and ATTRIBUTION.md / attribution.csv."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from opencanvas.publish.hub_card import header_fields, hub_license
from opencanvas.storage import atomic_write_text
from opencanvas.workspace import Workspace

MODEL_TAGS = ["text-to-image", "diffusers", "creative-commons", "opencanvas"]


def publish_model(ws: Workspace, run: str, out: Path) -> Path:
    """Write the Hub model folder for `run` at `out` (new or empty); returns `out`."""
    from huggingface_hub import ModelCardData

    from opencanvas.cards.attribution import write_attribution
    from opencanvas.cards.writer import gather, model_card
    from opencanvas.provenance.takedown import takedowns_section
    from opencanvas.train.to_diffusers import export

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty: pass a new --out directory")
    facts = gather(ws, run)  # fails (ValueError) before any export work when records are missing
    tmp = out.with_name(f".{out.name}.publish")
    shutil.rmtree(tmp, ignore_errors=True)
    export(ws, run, tmp)
    rows = facts["training_rows"]
    license_id, explanation = hub_license(Counter((r["license_id"], r["license_version"] or "") for r in rows))
    header = ModelCardData(**header_fields(license_id, explanation), datasets=[facts["subset"]["name"]],
                           base_model="none", tags=MODEL_TAGS, library_name="diffusers",
                           pipeline_tag="text-to-image")
    atomic_write_text(tmp / "README.md", f"---\n{header.to_yaml()}\n---\n\n{model_card(facts)}\n\n"
                      f"{takedowns_section(ws, run)}")
    write_attribution(tmp, rows, heldout=facts["split"]["heldout"])
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


def push(folder: Path, repo_id: str, repo_type: str) -> str:
    """Upload a published folder to the Hub (needs a token: `hf auth login` or HF_TOKEN); returns its URL."""
    from huggingface_hub import create_repo, get_token, upload_folder

    if not get_token():
        raise ValueError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then re-run with --push")
    create_repo(repo_id, repo_type=repo_type, exist_ok=True)
    return str(upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type))
