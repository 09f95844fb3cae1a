"""Class labels from a catalog column (`train --class-column`): the vocabulary and each key's label.

The vocabulary is built once, when a run starts, from the catalog rows of the latent set's images,
sorted by frequency (most first) then name, and stored in the run config (`class_names`), so a
resumed run, sampling and evaluation use the same map. Label i < N is class_names[i]; label N is the
null class: images without a value, and the unconditional half of classifier-free guidance (the
class is dropped with the caption-dropout p). The UNet then has N + 1 class embeddings (diffusers
`num_class_embeds`, added to the timestep embedding).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from opencanvas.workspace import Workspace

EXTRA_PREFIX = "extra."  # a field of the catalog's source-specific JSON column
DEFAULT_MAX_CLASSES = 1000


def class_columns() -> list[str]:
    """Catalog columns that can serve as a class label (text or integer, one value per row)."""
    import pyarrow as pa

    from opencanvas.catalog.schema import CATALOG_SCHEMA

    return [f.name for f in CATALOG_SCHEMA if f.name not in ("key", "extra")
            and (pa.types.is_string(f.type) or pa.types.is_integer(f.type))]


def check_class_column(column: str) -> None:
    """A one-line error for a column the catalog does not have."""
    if column.startswith(EXTRA_PREFIX) and len(column) > len(EXTRA_PREFIX):
        return
    if column not in class_columns():
        raise ValueError(f"unknown --class-column {column!r}: use a catalog column ({', '.join(class_columns())}) "
                         f"or {EXTRA_PREFIX}FIELD for a source field")


def key_values(ws: Workspace, keys: Iterable[str], column: str) -> dict[str, str | None]:
    """key -> the column's value as text (None when missing or empty), for the catalog rows of `keys`."""
    from opencanvas.catalog.query import catalog_rows

    check_class_column(column)
    name = "extra" if column.startswith(EXTRA_PREFIX) else column
    table = catalog_rows(ws, sorted(set(keys))).select(["key", name]).to_pydict()
    out: dict[str, str | None] = {}
    for key, value in zip(table["key"], table[name], strict=True):
        if column.startswith(EXTRA_PREFIX):
            value = _extra_field(value, column[len(EXTRA_PREFIX):])
        text = None if value is None else str(value).strip()
        out[key] = text or None
    return out


def _extra_field(extra: str | None, field: str) -> Any:
    try:
        record = json.loads(extra) if extra else {}
    except ValueError:
        return None  # an unreadable extra is the same as no value: the image trains as the null class
    return record.get(field) if isinstance(record, dict) else None


def build_vocabulary(values: Iterable[str | None], column: str, max_classes: int) -> tuple[str, ...]:
    """The classes present in `values`, most frequent first, ties by name; at most `max_classes`."""
    counts = Counter(v for v in values if v is not None)
    if not counts:
        raise ValueError(f"--class-column {column!r} has no value for any image of the latent set: pick a column "
                         "the catalog fills in (or ingest the catalog these images came from)")
    if len(counts) > max_classes:
        raise ValueError(f"--class-column {column!r} has {len(counts)} classes, more than --max-classes "
                         f"{max_classes}: raise --max-classes or pick a coarser column")
    return tuple(sorted(counts, key=lambda name: (-counts[name], name)))


def class_labels(values: dict[str, str | None], names: Sequence[str]) -> dict[str, int]:
    """key -> label; a value outside the vocabulary (or none) gets the null class len(names)."""
    index = {name: i for i, name in enumerate(names)}
    return {key: index.get(value, len(names)) if value is not None else len(names) for key, value in values.items()}


def label_for(name: str | None, names: Sequence[str]) -> int:
    """The label of class `name` (None: the null class), with a one-line error for an unknown one."""
    if name is None:
        return len(names)
    try:
        return list(names).index(name)
    except ValueError:
        shown = ", ".join(list(names)[:10]) + (", ..." if len(names) > 10 else "")
        raise ValueError(f"unknown --class {name!r}: this run knows {len(names)} classes ({shown})") from None
