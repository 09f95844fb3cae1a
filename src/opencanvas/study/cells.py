"""The cells of a study: the axes crossed (or zipped), each cell an ordinary training run plus an evaluation."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

from opencanvas.study import shared
from opencanvas.study.spec import StudySpec


@dataclass(frozen=True)
class Cell:
    index: int
    values: dict[str, Any]     # the axis values of this cell, in axis order
    fraction: float
    fraction_seed: int
    captioner: str
    preset: str
    seed: int
    images: int | None         # None with mode = "epochs": decided by the cell's training keys
    conditioning: str | None = None  # a value of the conditioning axis (None: no such axis)

    def identity(self, spec: StudySpec) -> dict[str, Any]:
        """What decides this cell's run: a change here means a new run, never a silent resume."""
        return {"study": spec.name, "subset": spec.subset, "autoencoder": spec.autoencoder,
                "text_encoder": spec.text_encoder, "resolution": spec.resolution, "captioner": self.captioner,
                "fraction": self.fraction, "fraction_seed": self.fraction_seed, "preset": self.preset,
                "seed": self.seed, "images": self.images, "mode": spec.mode, "epochs": spec.epochs,
                "batch": spec.batch, "train_options": dict(spec.train_options),
                # only with a conditioning axis, so the runs of older studies keep their names
                **({} if self.conditioning is None else {"conditioning": self.conditioning,
                                                         "latents": shared.latents_name(spec, self.captioner)})}

    def run_name(self, spec: StudySpec) -> str:
        digest = hashlib.sha256(json.dumps(self.identity(spec), sort_keys=True).encode()).hexdigest()[:8]
        return f"{spec.name}-{self.index:02d}-{digest}"

    def label(self) -> str:
        return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.values.items()) \
            or "base"


def study_cells(spec: StudySpec) -> list[Cell]:
    """Every cell, in a fixed order: the first axis varies slowest (or all together when zipped)."""
    names = spec.axis_names()
    columns = [values for _, values in spec.axes]
    combos = list(zip(*columns, strict=True)) if spec.combine == "zip" else list(itertools.product(*columns))
    cells = []
    for index, combo in enumerate(combos or [()]):
        values = dict(zip(names, combo, strict=True))
        cells.append(Cell(
            index=index, values=values, fraction=float(values.get("fraction", spec.fraction)),
            fraction_seed=spec.fraction_seed, captioner=values.get("captioner", spec.captioner),
            preset=values.get("preset", spec.preset), seed=int(values.get("seed", spec.seed)),
            images=values.get("images", spec.images) if spec.mode == "images" else None,
            conditioning=values.get("conditioning")))
    return cells
