"""A study file: a base configuration, the axes that vary, and one evaluation for every cell.

Every key is checked (name, type, range) when the file is read, and the workspace names it uses
(subset, autoencoder, CLIP, captioners, presets, prompt files) before any work starts, so a typo is
a one-line error naming the key and what is allowed, never a failure an hour into the study.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opencanvas.workspace import Workspace

AXES = ("fraction", "captioner", "preset", "seed", "images", "conditioning")
# What the UNet is conditioned on (issue 14), one cell each: see conditioning_options.
CONDITIONINGS = ("caption", "multi-caption", "two-encoders", "text+image", "text+class")
METRICS = ("clip", "fid", "kid", "memorization")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# key -> (type, default); a default of `...` makes the key required.
STUDY_KEYS: dict[str, tuple[type, Any]] = {
    "name": (str, ...), "subset": (str, ...), "autoencoder": (str, ...), "text_encoder": (str, ...),
    "captioner": (str, "metadata"), "resolution": (int, 64), "fraction": (float, 1.0), "fraction_seed": (int, 0),
    "combine": (str, "cross"), "description": (str, ""),
    # What a conditioning axis needs: more caption sets for multi-caption, a second text encoder, the CLIP
    # whose image tower embeds the images (None: the text encoder) and the catalog column of the classes.
    "extra_captioners": (list, []), "text_encoder2": (str, None), "image_clip": (str, None),
    "class_column": (str, "category"),
}
TRAIN_KEYS: dict[str, tuple[type, Any]] = {
    "preset": (str, "tiny"), "images": (int, None), "batch": (int, None), "mode": (str, "images"),
    "epochs": (int, None), "seed": (int, 0), "checkpoint_every": (int, None),
}
EVAL_KEYS: dict[str, tuple[type, Any]] = {
    "prompts": (list, ["heldout"]), "n": (int, 64), "guidance": (list, [1.5, 4.0]), "metrics": (list, list(METRICS)),
    "steps": (int, 20), "sampler": (str, "dpmpp-2m"), "seed": (int, 0), "reference": (str, None),
    "bootstrap": (int, 1000), "max_reference": (int, 2000), "prompt_captioner": (str, None), "clip": (str, None),
}
AXIS_TYPES: dict[str, type] = {"fraction": float, "captioner": str, "preset": str, "seed": int, "images": int,
                               "conditioning": str}
# Training options a study may not set: the study sets them per cell.
_RESERVED_TRAIN = {"run", "latents", "preset", "images", "unet", "resolutions", "data", "batch", "seed",
                   "key_filter", "micro_batch", "device"}
# Training options a conditioning axis sets per cell.
_CONDITIONING_TRAIN = {"conditioning", "caption_mix", "text_encoders", "class_column", "max_captions"}


class StudyError(ValueError):
    """A study file or its workspace names something that is not allowed; raised before any work."""


@dataclass(frozen=True)
class EvalSpec:
    prompts: tuple[str, ...]      # "heldout" and/or prompt files
    n: int
    guidance: tuple[float, ...]
    metrics: tuple[str, ...]
    steps: int
    sampler: str
    seed: int
    reference: str | None          # None: the study's subset
    bootstrap: int
    max_reference: int
    prompt_captioner: str | None   # None: the study's captioner (the first of a captioner axis)
    clip: str | None               # the CLIP that scores every cell (None: the study's text encoder)


@dataclass(frozen=True)
class StudySpec:
    name: str
    subset: str
    autoencoder: str
    text_encoder: str
    captioner: str
    resolution: int
    fraction: float
    fraction_seed: int
    extra_captioners: tuple[str, ...]
    text_encoder2: str | None
    image_clip: str | None
    class_column: str
    combine: str                              # "cross" or "zip"
    description: str
    axes: tuple[tuple[str, tuple[Any, ...]], ...]  # in file order
    preset: str
    images: int | None
    batch: int | None
    mode: str                                  # "images" (equal compute) or "epochs"
    epochs: int | None
    seed: int
    checkpoint_every: int | None
    train_options: tuple[tuple[str, Any], ...]  # other TrainConfig fields, passed through
    eval: EvalSpec
    source: str                                # the file, or builtin:<name>
    text: str                                  # the file's text, kept beside the results

    def resolved(self) -> dict[str, Any]:
        """Everything that decides the results, by the file's tables (what a re-run compares against)."""
        study = {k: getattr(self, k) for k in STUDY_KEYS if k != "description"}
        study["extra_captioners"] = list(self.extra_captioners)
        train = {k: getattr(self, k) for k in TRAIN_KEYS}
        train.update(dict(self.train_options))
        evaluation = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.eval).items()}
        return {"study": study, "axes": {k: list(v) for k, v in self.axes}, "train": train, "eval": evaluation}

    def axis_names(self) -> list[str]:
        return [k for k, _ in self.axes]

    def captioners(self) -> list[str]:
        return list(dict(self.axes).get("captioner", (self.captioner,)))

    def conditionings(self) -> list[str]:
        """The conditioning axis's values ([] without one: every cell is the plain one-caption run)."""
        return list(dict(self.axes).get("conditioning", ()))


def _typed(section: str, key: str, value: Any, kind: type) -> Any:
    where = f"[{section}] {key}"
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise StudyError(f"{where} = {value!r} must be {_kind_word(kind)}")
    return value


def _kind_word(kind: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", list: "a list", bool: "true or false"}.get(
        kind, kind.__name__)


def _section(doc: dict[str, Any], section: str, keys: dict[str, tuple[type, Any]],
             extra: dict[str, type] | None = None) -> dict[str, Any]:
    table = doc.get(section, {})
    if not isinstance(table, dict):
        raise StudyError(f"[{section}] must be a table of keys")
    allowed = {**{k: t for k, (t, _) in keys.items()}, **(extra or {})}
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise StudyError(f"unknown key [{section}] {unknown[0]}: allowed are {', '.join(sorted(allowed))}")
    out: dict[str, Any] = {}
    for key, (kind, default) in keys.items():
        if key not in table:
            if default is ...:
                raise StudyError(f"[{section}] {key} is required")
            out[key] = default
            continue
        value = table[key]
        if section == "eval" and key == "prompts" and isinstance(value, str):
            value = [value]
        if section == "eval" and key == "guidance" and isinstance(value, (int, float)) \
                and not isinstance(value, bool):
            value = [value]
        out[key] = _typed(section, key, value, kind)
    for key in set(table) - set(keys):
        out[key] = _typed(section, key, table[key], (extra or {})[key])
    return out


def _train_option_types() -> dict[str, type]:
    """TrainConfig fields a study may pass through, typed by their defaults."""
    from opencanvas.train.config import TrainConfig

    types: dict[str, type] = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in _RESERVED_TRAIN or f.name in TRAIN_KEYS or f.default is dataclasses.MISSING:
            continue
        d = f.default
        types[f.name] = bool if isinstance(d, bool) or d is None and "bool" in str(f.type) else \
            float if isinstance(d, float) else int if isinstance(d, int) else str if isinstance(d, str) else \
            list if isinstance(d, tuple) else str
    return types


def _axes(doc: dict[str, Any]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    table = doc.get("axes", {})
    if not isinstance(table, dict):
        raise StudyError("[axes] must be a table: name = [values]")
    out = []
    for key, values in table.items():
        if key not in AXIS_TYPES:
            raise StudyError(f"unknown axis [axes] {key}: allowed are {', '.join(AXES)}")
        if not isinstance(values, list) or not values:
            raise StudyError(f"[axes] {key} = {values!r} must be a non-empty list")
        typed = tuple(_typed("axes", key, v, AXIS_TYPES[key]) for v in values)
        if len(set(typed)) != len(typed):
            raise StudyError(f"[axes] {key} = {values!r} repeats a value")
        out.append((key, typed))
    return tuple(out)


def _check_values(spec_values: dict[str, Any]) -> None:
    s, t, e, axes = spec_values["study"], spec_values["train"], spec_values["eval"], dict(spec_values["axes"])
    if not _NAME.match(s["name"]):
        raise StudyError(f"[study] name = {s['name']!r} must be letters, digits, '.', '_' or '-'")
    for fraction in (s["fraction"], *axes.get("fraction", ())):
        if not 0.0 < fraction <= 1.0:
            raise StudyError(f"fraction {fraction!r} is outside (0, 1]: a fraction keeps that share of the subset")
    if s["combine"] not in ("cross", "zip"):
        raise StudyError(f"[study] combine = {s['combine']!r}: allowed are cross, zip")
    if s["combine"] == "zip" and len({len(v) for v in axes.values()}) > 1:
        raise StudyError("[study] combine = 'zip' needs axes of equal length, got "
                         + ", ".join(f"{k}: {len(v)}" for k, v in axes.items()))
    if s["resolution"] <= 0:
        raise StudyError(f"[study] resolution = {s['resolution']} must be positive")
    if t["mode"] not in ("images", "epochs"):
        raise StudyError(f"[train] mode = {t['mode']!r}: allowed are images (equal compute), epochs")
    if t["mode"] == "images" and t["images"] is None and "images" not in axes:
        raise StudyError("[train] images is required with mode = 'images' (every cell trains on that many images)")
    if t["mode"] == "epochs" and t["epochs"] is None:
        raise StudyError("[train] epochs is required with mode = 'epochs'")
    if t["mode"] == "epochs" and "images" in axes:
        raise StudyError("[axes] images cannot vary with [train] mode = 'epochs' (the epochs decide the images)")
    for key in ("images", "batch", "epochs"):
        if t[key] is not None and t[key] <= 0:
            raise StudyError(f"[train] {key} = {t[key]} must be positive")
    if any(v <= 0 for v in axes.get("images", ())):
        raise StudyError("[axes] images must be positive")
    if e["n"] < 1 or e["steps"] < 1 or e["bootstrap"] < 0:
        raise StudyError("[eval] n and steps must be positive and bootstrap >= 0")
    for p in e["prompts"]:
        if not isinstance(p, str):
            raise StudyError(f"[eval] prompts = {e['prompts']!r} must be 'heldout' and/or prompt file paths")
    for g in e["guidance"]:
        if isinstance(g, bool) or not isinstance(g, (int, float)) or g < 0:
            raise StudyError(f"[eval] guidance = {e['guidance']!r} must be a list of numbers >= 0")
    _check_conditioning(s, t, axes)
    bad = [m for m in e["metrics"] if m not in METRICS]
    if bad or not e["metrics"]:
        raise StudyError(f"[eval] metrics = {e['metrics']!r}: allowed are {', '.join(METRICS)}")


def _check_conditioning(s: dict[str, Any], t: dict[str, Any], axes: dict[str, Any]) -> None:
    modes = axes.get("conditioning", ())
    bad = [m for m in modes if m not in CONDITIONINGS]
    if bad:
        raise StudyError(f"[axes] conditioning = {bad[0]!r}: allowed are {', '.join(CONDITIONINGS)}")
    extra = s["extra_captioners"]
    if not all(isinstance(c, str) and c for c in extra) or len(set(extra)) != len(extra) or s["captioner"] in extra:
        raise StudyError(f"[study] extra_captioners = {extra!r} must be distinct captioner names other than "
                         f"captioner = {s['captioner']!r}")
    if not modes:
        return
    if "captioner" in axes:
        raise StudyError("[axes] conditioning and captioner cannot both vary: every conditioning cell trains on "
                         "[study] captioner (multi-caption adds extra_captioners)")
    fixed = sorted(_CONDITIONING_TRAIN & set(t))
    if fixed:
        raise StudyError(f"[train] {fixed[0]} is set per cell by [axes] conditioning: remove it from [train]")
    if "multi-caption" in modes and not extra:
        raise StudyError("[axes] conditioning 'multi-caption' needs [study] extra_captioners (e.g. [\"title-tags\"]): "
                         "the caption sets that fill the slots after [study] captioner")
    if "two-encoders" in modes and not s["text_encoder2"]:
        raise StudyError("[axes] conditioning 'two-encoders' needs [study] text_encoder2 (a second CLIP under clips/)")
    if s["text_encoder2"] == s["text_encoder"]:
        raise StudyError(f"[study] text_encoder2 = {s['text_encoder2']!r} must differ from text_encoder")


def conditioning_options(spec: StudySpec, mode: str | None) -> dict[str, Any]:
    """The training options of a conditioning cell. The study's latent set carries everything the axis needs
    (both encoders, image embeddings, every caption set), so each mode reads only its share: one encoder
    (text_encoders = 1) and only [study] captioner's captions (caption_mix) unless the mode adds them."""
    if mode is None:
        return {}
    modes = spec.conditionings()
    one = {"caption_mix": {spec.captioner: 1.0}} if "multi-caption" in modes else {}
    second = 1 if "two-encoders" in modes else 0
    return {"caption": {**one, "text_encoders": second},
            "multi-caption": {"conditioning": "multi-caption", "text_encoders": second},
            "two-encoders": {**one, "text_encoders": 2},
            "text+image": {**one, "conditioning": "text+image", "text_encoders": second},
            "text+class": {**one, "text_encoders": second, "class_column": spec.class_column}}[mode]


def parse_study(text: str, source: str) -> StudySpec:
    """A StudySpec from TOML text; raises StudyError naming the first bad key."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise StudyError(f"{source} is not valid TOML ({err})") from None
    unknown = sorted(set(doc) - {"study", "axes", "train", "eval"})
    if unknown:
        raise StudyError(f"unknown table [{unknown[0]}] in {source}: allowed are [study], [axes], [train], [eval]")
    if "study" not in doc:
        raise StudyError(f"{source} has no [study] table (name, subset, autoencoder, text_encoder are required)")
    values: dict[str, Any] = {"study": _section(doc, "study", STUDY_KEYS), "axes": _axes(doc),
              "train": _section(doc, "train", TRAIN_KEYS, _train_option_types()),
              "eval": _section(doc, "eval", EVAL_KEYS)}
    _check_values(values)
    s, t, e = values["study"], values["train"], values["eval"]
    options = tuple(sorted((k, v) for k, v in t.items() if k not in TRAIN_KEYS))
    return StudySpec(
        name=s["name"], subset=s["subset"], autoencoder=s["autoencoder"], text_encoder=s["text_encoder"],
        captioner=s["captioner"], resolution=s["resolution"], fraction=s["fraction"],
        fraction_seed=s["fraction_seed"], extra_captioners=tuple(s["extra_captioners"]),
        text_encoder2=s["text_encoder2"], image_clip=s["image_clip"], class_column=s["class_column"],
        combine=s["combine"], description=s["description"], axes=values["axes"],
        preset=t["preset"], images=t["images"], batch=t["batch"], mode=t["mode"], epochs=t["epochs"],
        seed=t["seed"], checkpoint_every=t["checkpoint_every"], train_options=options,
        eval=EvalSpec(prompts=tuple(e["prompts"]), n=e["n"], guidance=tuple(float(g) for g in e["guidance"]),
                      metrics=tuple(e["metrics"]), steps=e["steps"], sampler=e["sampler"], seed=e["seed"],
                      reference=e["reference"], bootstrap=e["bootstrap"], max_reference=e["max_reference"],
                      prompt_captioner=e["prompt_captioner"], clip=e["clip"]),
        source=source, text=text)


def load_study(study: str | Path) -> StudySpec:
    """A study file, or the name of a built-in study (data-scaling, captions)."""
    from opencanvas.study.builtin import BUILTIN_STUDIES

    path = Path(study)
    if path.is_file():
        return parse_study(path.read_text(encoding="utf-8"), str(path))
    if str(study) in BUILTIN_STUDIES:
        return parse_study(BUILTIN_STUDIES[str(study)], f"builtin:{study}")
    raise StudyError(f"study {str(study)!r} is neither a file nor a built-in study ({', '.join(BUILTIN_STUDIES)})")


def _listing(directory: Path) -> str:
    names = sorted(p.name for p in directory.iterdir() if p.is_dir()) if directory.is_dir() else []
    return ", ".join(names) or "none yet"


def check_workspace(ws: Workspace, spec: StudySpec) -> None:
    """Every name the study uses exists in `ws` (or is a directory / hub id); raises StudyError."""
    from opencanvas.caption.captioners import CAPTIONERS
    from opencanvas.train.presets import PRESETS

    hint = "; the built-in studies run in a workspace where `opencanvas demo` has run" \
        if spec.source.startswith("builtin:") else ""
    if not ws.subset_path(spec.subset).exists():
        subsets = sorted(p.stem for p in ws.subset_path("x").parent.glob("*.parquet"))
        raise StudyError(f"[study] subset = {spec.subset!r} does not exist: allowed are "
                         f"{', '.join(subsets) or 'none yet (opencanvas catalog subset)'}{hint}")
    for key, spec_value, directory in (("autoencoder", spec.autoencoder, ws.autoencoder_dir("x").parent),
                                       ("text_encoder", spec.text_encoder, ws.clip_dir("x").parent)):
        local = Path(spec_value).expanduser()
        hub_id = "/" in spec_value and not local.exists() and re.match(r"^[\w.-]+/[\w.-]+$", spec_value)
        if not ((directory / spec_value).is_dir() and "/" not in spec_value) and not local.is_dir() and not hub_id:
            raise StudyError(f"[study] {key} = {spec_value!r} does not exist: allowed are a name under "
                             f"{ws.relative(directory)}/ ({_listing(directory)}), a local directory, or a hub id{hint}")
    modes = spec.conditionings()
    optional: tuple[tuple[str, str | None], ...] = (
        ("text_encoder2", spec.text_encoder2 if "two-encoders" in modes else None),
        ("image_clip", spec.image_clip if "text+image" in modes else None))
    for key, clip_value in optional:
        directory = ws.clip_dir("x").parent
        if clip_value and not ((directory / clip_value).is_dir() and "/" not in clip_value) \
                and not Path(clip_value).expanduser().is_dir():
            raise StudyError(f"[study] {key} = {clip_value!r} does not exist: allowed are a name under "
                             f"{ws.relative(directory)}/ ({_listing(directory)}) or a local CLIP directory")
    if "text+class" in modes:
        from opencanvas.train.classes import check_class_column

        try:
            check_class_column(spec.class_column)
        except ValueError as err:
            raise StudyError(f"[study] class_column: {err}") from None
    captions_root = ws.captions_dir("x").parent
    extra = list(spec.extra_captioners) if "multi-caption" in modes else []
    for captioner in spec.captioners() + extra + [c for c in [spec.eval.prompt_captioner] if c]:
        if captioner not in CAPTIONERS and not (captions_root / captioner).is_dir():
            raise StudyError(f"captioner {captioner!r} is unknown: allowed are {', '.join(CAPTIONERS)} or a caption "
                             f"set under {ws.relative(captions_root)}/ ({_listing(captions_root)})")
    for preset in dict(spec.axes).get("preset", (spec.preset,)):
        if preset not in PRESETS:
            raise StudyError(f"preset {preset!r} is unknown: allowed are {', '.join(PRESETS)}")
    for prompts in spec.eval.prompts:
        if prompts != "heldout" and not Path(prompts).is_file():
            raise StudyError(f"[eval] prompts {prompts!r} is neither 'heldout' nor a prompt file")
    reference = spec.eval.reference
    if reference and not ws.images_dir(reference).is_dir() and not Path(reference).is_dir():
        raise StudyError(f"[eval] reference = {reference!r} is neither a fetched subset nor a directory of images")
