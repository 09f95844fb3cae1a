"""The human-evaluation section of a model card: the Markdown `opencanvas humaneval report` wrote for
every study that compared this run (`humaneval/<study>/results.json` names the models). Read as
records, so the cards never import the human-evaluation stage, which sits above them."""

from __future__ import annotations

import json

from opencanvas.cards.records import Sources
from opencanvas.workspace import Workspace

SECTION_FILE = "card_section.md"


def study_sections(ws: Workspace, run: str, src: Sources) -> list[str]:
    """Markdown sections (one per study that includes `run`), oldest study name first."""
    out = []
    for results in sorted((ws.root / "humaneval").glob("*/results.json")):
        try:
            models = json.loads(results.read_text(encoding="utf-8")).get("models", [])
        except (OSError, ValueError):
            continue
        section = results.parent / SECTION_FILE
        if section.is_file() and any(run in (m.get("name"), m.get("spec")) for m in models):
            src.add(ws, results)
            out.append(src.add(ws, section).read_text(encoding="utf-8").strip())
    return out
