"""Which demo stages are finished, so a re-run skips them (`demo/state.json`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from opencanvas.storage import atomic_write_json


class DemoState:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def is_done(self, stage: str) -> bool:
        return stage in self.done

    def mark(self, stage: str, summary: dict[str, Any]) -> None:
        self.done[stage] = summary
        atomic_write_json(self.path, self.done)
