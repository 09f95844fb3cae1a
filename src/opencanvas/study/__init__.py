"""studies: the paper's experiments as one resumable command (`opencanvas study run|plan`).

A study file names a base subset, the stages' settings, the axes that vary and one evaluation;
each cell is an ordinary training run (train/) evaluated by sample/, and the cells share images,
captions, latents and components. See runner.py for the directory layout.
"""

from __future__ import annotations

from typing import Any

__all__ = ["StudyError", "StudySpec", "fraction_keys", "in_fraction", "load_study", "plan_commands", "run_study"]

_LAZY = {
    "StudyError": "opencanvas.study.spec", "StudySpec": "opencanvas.study.spec", "load_study": "opencanvas.study.spec",
    "fraction_keys": "opencanvas.study.fractions", "in_fraction": "opencanvas.study.fractions",
    "run_study": "opencanvas.study.runner", "plan_commands": "opencanvas.study.plan",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'opencanvas.study' has no attribute {name!r}")
