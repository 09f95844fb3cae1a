"""`opencanvas publish model`: a run as a Hub model folder: the diffusers pipeline (as `export` writes it),
a README with the model card under the Hub's YAML header, and ATTRIBUTION.md / attribution.csv."""

from __future__ import annotations

import json
from pathlib import Path

from opencanvas.storage import atomic_write_bytes, atomic_write_text
from opencanvas.workspace import Workspace

MODEL_TAGS = ["text-to-image", "diffusers", "creative-commons", "opencanvas"]


def publish_model(ws: Workspace, run: str, out: Path) -> Path:
    """Write the Hub model folder for `run` at `out` (new or empty); returns `out`.

    The cards are (re)written first (`opencanvas card`), so the README's model card, the attribution
    files and the license (`opencanvas.model_license`, as `export` states it) come from one source.
    """
    from huggingface_hub import ModelCardData

    from opencanvas.cards.writer import write_cards
    from opencanvas.provenance.takedown import takedowns_section
    from opencanvas.train.to_diffusers import export

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty: pass a new --out directory")
    cards = write_cards(ws, run)  # fails before any export work when the run's records are missing
    facts = json.loads((cards / "cards.json").read_text())
    export(ws, run, out)
    header = ModelCardData(license=facts["model_license"]["license_id"], datasets=[facts["subset"]["name"]],
                           base_model="none", tags=MODEL_TAGS, library_name="diffusers",
                           pipeline_tag="text-to-image")
    for name in ("ATTRIBUTION.md", "attribution.csv"):
        atomic_write_bytes(out / name, (cards / name).read_bytes())
    atomic_write_text(out / "README.md", f"---\n{header.to_yaml()}\n---\n\n{(cards / 'MODEL_CARD.md').read_text()}"
                      f"\n\n{takedowns_section(ws, run)}")  # README last: a folder with it is complete
    return out


def push(folder: Path, repo_id: str, repo_type: str) -> str:
    """Upload a published folder to the Hub (needs a token: `hf auth login` or HF_TOKEN); returns its URL."""
    from huggingface_hub import create_repo, get_token, upload_folder

    if not get_token():
        raise ValueError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then re-run with --push")
    create_repo(repo_id, repo_type=repo_type, exist_ok=True)
    return str(upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type))
