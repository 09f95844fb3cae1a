"""`opencanvas card --run NAME`: data card, model card and attribution list.

Every number comes from a workspace record (catalog parts and their ingest
records, the subset file, shard indexes, caption tables, component records,
the run's config/summary/checkpoint, evaluation reports); each card ends with
the list of records it was generated from. Catalog text is escaped
(`opencanvas.untrusted`); per-image work streams through DuckDB
(`records.UsedImages`). The cards are also copied into every folder
`opencanvas export` wrote for the run, so an exported model carries them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opencanvas.cards.attribution import write_attribution
from opencanvas.cards.charts import license_bar_chart
from opencanvas.cards.model_facts import (
    component_facts,
    eval_reports,
    export_folders,
    extra_component_facts,
    run_facts,
)
from opencanvas.cards.records import (
    Sources,
    UsedImages,
    caption_facts,
    fetch_facts,
    key_filter_facts,
    split_facts,
    subset_facts,
    trained_license_facts,
)
from opencanvas.cards.source_versions import source_version
from opencanvas.cards.studies import study_sections
from opencanvas.model_license import model_license, obligations
from opencanvas.storage import atomic_write_bytes, atomic_write_json, atomic_write_text
from opencanvas.train.config import caption_mix_text
from opencanvas.untrusted import markdown_text
from opencanvas.workspace import Workspace

SAMPLING_DEFAULTS = {"sampler": "dpmpp-2m", "steps": 25, "guidance": 5.0}
CARD_FILES = ("DATA_CARD.md", "MODEL_CARD.md", "ATTRIBUTION.md", "attribution.csv", "license_composition.png",
              "cards.json")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join("-" if c is None else (f"{c:,}" if isinstance(c, int) else str(c)) for c in r) + " |"
            for r in rows]
    return out + [""]


def _fmt_num(x: Any, digits: int = 4) -> str:
    return "-" if x is None else (f"{x:.{digits}g}" if isinstance(x, float) else str(x))


def gather(ws: Workspace, run: str, images: UsedImages, src: Sources, runf: dict[str, Any]) -> dict[str, Any]:
    """All facts the cards print, with the records they came from."""
    from opencanvas.catalog.ingest import DONE_DIR
    from opencanvas.catalog.stats import catalog_stats

    data = runf["config"].get("data", {})
    subset = data["subset"]
    for p in ws.catalog_dir.glob(f"*/{DONE_DIR}/*.json"):  # ingest done-records (read counts)
        src.add(ws, p)
    catalog = catalog_stats(ws)
    # Training leaves out the held-out split (train/config.py `holdout`); those images are
    # evaluation references only.
    holdout = float(runf["config"].get("holdout", 0.0))
    return {
        "run": run,
        "catalog": catalog,
        "source_versions": {s: source_version(s) for s in catalog["sources"]},
        "subset": subset_facts(ws, subset, images, src),
        "key_filter": key_filter_facts(ws, runf["config"].get("key_filter"), src),
        "trained": trained_license_facts(images),
        "fetch": fetch_facts(ws, subset, images, src),
        "captions": [caption_facts(ws, c, images, src) for c in data.get("captioners") or []],
        "autoencoder": component_facts(ws, str(data.get("autoencoder", "")), "autoencoder", src),
        "text_encoder": component_facts(ws, str(data.get("text_encoder", "")), "text_encoder", src),
        # A second text encoder and an image-embedding CLIP (issue 14), where the run conditions on them.
        **extra_component_facts(ws, runf["config"], src),
        "train": runf,
        "evals": eval_reports(ws, run, src),
        "humaneval": study_sections(ws, run, src),
        "split": split_facts(images, holdout),
        "sources": src,
    }


def license_origin_notes(trained: dict[str, Any]) -> list[str]:
    """Where the trained-on images' licenses came from, flagged where it is not the item itself."""
    notes = []
    collection = sum(trained["collection_origin"].values())
    if collection:
        by_source = ", ".join(f"{markdown_text(s)} {n:,}" for s, n in trained["collection_origin_by_source"].items())
        by_license = ", ".join(f"{lic} {n:,}" for lic, n in trained["collection_origin"].items())
        notes.append(f"**{collection:,} trained-on images have no license of their own** ({by_source}; {by_license}): "
                     "their license is the one their source declares for the whole collection "
                     "(`license_origin = collection`), not a statement on the item. Check it before relying on "
                     "these images individually.")
    else:
        notes.append("Every trained-on image states its own license (`license_origin = item`).")
    if trained["old_public_domain_dedication"]:
        notes.append(f"**{trained['old_public_domain_dedication']:,} trained-on images carry the old "
                     "`http://web.resource.org/cc/PublicDomain` dedication, recorded as `pdm`** (Public Domain "
                     "Mark), the nearest canonical id: it is Creative Commons' public-domain dedication from before "
                     "CC0 and the Public Domain Mark, and like them it asks for no attribution.")
    return notes


def _fraction_lines(sub: dict[str, Any], key_filter: dict[str, Any] | None) -> list[str]:
    """How much of the policy's images the run could see: a nested fraction of the subset and/or of a study."""
    lines = []
    if sub.get("fraction") not in ("", "1.0", None) or sub.get("max_rows"):
        lines += [f"The subset is a nested random fraction of the policy's images: fraction {sub['fraction']}, "
                  f"seed {sub['seed']}" + (f", at most {sub['max_rows']} rows" if sub.get("max_rows") else "")
                  + f" ({markdown_text(sub.get('selection', ''))}).", ""]
    if key_filter:
        if key_filter.get("missing"):
            lines += [f"Training read only the keys in `{key_filter['path']}`, which no longer exists.", ""]
        else:
            lines += [f"Training read only the keys in `{key_filter['path']}`: fraction {key_filter['fraction']} "
                      f"of the subset, seed {key_filter['seed']} ({markdown_text(key_filter['formula'])}); "
                      "the counts below are the subset's.", ""]
    return lines


def data_card(facts: dict[str, Any], chart: str) -> str:
    cat, sub, fetch, trained = facts["catalog"], facts["subset"], facts["fetch"], facts["trained"]
    versions = facts["source_versions"]
    lines = [f"# Data card: training data of `{facts['run']}`", "",
             f"Policy **{sub['policy']}**: {markdown_text(sub['policy_text'])}", "",
             f"Catalog snapshot `{sub['catalog_hash']}`; subset `{sub['name']}`.", "",
             *_fraction_lines(sub, facts.get("key_filter")),
             "## Sources and how each was read", ""]
    lines += _table(["source", "version", "inputs", "records read", "ingested", "quarantined",
                     "read = ingested + quarantined"],
                    [[markdown_text(s), markdown_text(versions.get(s, "unknown")), v["inputs"], v["read"],
                      v["ingested"], v["quarantined"], "yes" if v["balanced"] else "NO"]
                     for s, v in cat["sources"].items()])
    lines += ["Version: the release of the source that was ingested, where the toolkit can tell (for the Open "
              "Clip Art Library, the installed Debian package `openclipart-svg`); otherwise `unknown`.", "",
              "Quarantined records (never used; kept with the raw record and the reason):", ""]
    lines += _table(["reason", "records"], [[markdown_text(r), n] for r, n in cat["quarantine"].items()]) \
        if cat["quarantine"] else ["None.", ""]
    lines += ["## License composition", "", "Whole catalog:", ""]
    lines += _table(["license", "images"], [[k, v] for k, v in cat["licenses"].items()])
    split = facts["split"]
    lines += [f"Training subset `{sub['name']}` ({sub['count']:,} images) and the {split['trained']:,} images "
              "actually trained on (fetched ok, not held out):", ""]
    licenses = sorted(set(sub["by_license"]) | set(trained["by_license"]))
    lines += _table(["license", "in subset", "trained on"],
                    [[k, sub["by_license"].get(k, 0), trained["by_license"].get(k, 0)] for k in licenses])
    lines += [f"![license composition]({chart})", "", "Where the licenses came from:", ""]
    lines += [f"- {n}" for n in license_origin_notes(trained)] + ["", "## Counts at every stage", ""]
    ok = fetch["by_status"].get("ok", 0)
    lines += _table(["stage", "images"], [
        ["records read from sources", cat["total"]["read"]],
        ["ingested into the catalog", cat["total"]["ingested"]],
        ["quarantined", cat["total"]["quarantined"]],
        [f"in subset `{sub['name']}` ({sub['policy']})", sub["count"]],
        ["fetched ok", ok],
        ["fetch failed", fetch["by_status"].get("failed", 0)],
        ["fetch skipped (too small, duplicates, opt-outs)", fetch["by_status"].get("skipped", 0)],
        [f"held out for evaluation, never trained on (key-hash fraction < {split['holdout_fraction']:g})",
         split["heldout"]],
        ["trained on", split["trained"]],
    ])
    if fetch["by_reason"]:
        lines += ["Fetch outcomes other than ok, by reason:", ""]
        lines += _table(["status: reason", "images"], [[markdown_text(k), v] for k, v in fetch["by_reason"].items()])
    lines += ["## Captions", "", "Synthetic or metadata captions used for training, per captioner:", ""]
    lines += _table(["captioner", "model", "revision", "captions", "flagged", "distinct", "mean words"],
                    [[markdown_text(c["captioner"]),
                      markdown_text(", ".join(v for v in c.get("model_id") or [] if v)) or "(metadata)",
                      markdown_text(", ".join(v for v in c.get("model_revision") or [] if v)) or "-", c["count"],
                      c.get("flagged"), c.get("distinct_captions"), _fmt_num(c.get("mean_words"))]
                     for c in facts["captions"]])
    return "\n".join(lines)


def _component_rows(facts: dict[str, Any]) -> list[list[Any]]:
    rows = []
    t = facts["train"]
    cfg = t["config"]
    rows.append(["UNet (diffusers UNet2DConditionModel)", f"preset `{cfg.get('preset')}`", t["unet_parameters"],
                 f"trained here on subset `{cfg.get('data', {}).get('subset')}`"])
    for label, key in (("Autoencoder (diffusers AutoencoderKL)", "autoencoder"),
                       ("Text encoder (CLIP text tower)", "text_encoder"),
                       ("Second text encoder (CLIP text tower)", "text_encoder_2"),
                       ("Image-embedding CLIP (image tower)", "image_clip")):
        if key not in facts:
            continue
        c = facts[key]
        rec = c["record"]
        if c["origin"] == "trained here":
            where = (f"trained here on subset `{rec.get('subset')}` (policy {rec.get('policy')}, "
                     f"catalog `{str(rec.get('catalog_hash', ''))[:12]}`), {rec.get('images_seen', '-')} images seen")
        else:
            where = (f"pretrained `{markdown_text(c['spec'])}`: its training data is outside this catalog and is "
                     "not covered by this card; see that model's own card and license")
        rows.append([label, f"`{markdown_text(c['path'])}`", c["parameters"], where])
    return rows


def quality_verdict(facts: dict[str, Any]) -> str | None:
    """One plain sentence when the records show the model is not good, else None."""
    problems = []
    report = facts["autoencoder"]["record"].get("report", {})
    psnr, bicubic = report.get("heldout_psnr"), report.get("heldout_bicubic_psnr")
    if psnr is not None and bicubic is not None and psnr < bicubic:
        problems.append(f"its autoencoder reconstructs held-out images worse than bicubic down- and upsampling "
                        f"(PSNR {psnr:.2f} dB against {bicubic:.2f} dB)")
    evals = [ev for ev in facts["evals"] if ev.get("clip_gain_over_unconditional") is not None]
    if evals and evals[-1]["clip_gain_over_unconditional"] < 0:
        ev = evals[-1]
        problems.append(f"guidance lowers its CLIP score instead of raising it (best guided minus unconditional "
                        f"{ev['clip_gain_over_unconditional']:+.3f} in evaluation `{ev['id']}`), so it does not "
                        "follow prompts")
    if not problems:
        return None
    return "**This model is not good yet:** " + "; and ".join(problems) + "."


def _hash_rows(t: dict[str, Any]) -> list[list[Any]]:
    hashes = t.get("weights_sha256") or {}
    if hashes:
        return [["published weights (EMA) sha256", f"`{hashes['ema']}`" if "ema" in hashes else None],
                ["raw weights sha256", f"`{hashes['raw']}`" if "raw" in hashes else None]]
    raw = t["summary"].get("weights_sha256")
    return [["raw weights sha256 (summary.json; no checkpoint to hash the EMA)", f"`{raw}`" if raw else None]]


def _searched(ev: dict[str, Any]) -> str:
    """The set the memorization check searched, from the eval report."""
    searched = ev.get("memorization_reference") or {}
    if searched.get("training_subset"):
        return f"the training subset ({searched['count']:,} images, held-out ones included, by design)"
    if searched:
        return f"the reference set {markdown_text(searched['source'])} ({searched['count']:,} images)"
    return f"the reference set {markdown_text(ev['reference']['source'])}"


def _eval_lines(facts: dict[str, Any]) -> list[str]:
    lines = []
    verdict = quality_verdict(facts)
    if verdict:
        lines += [verdict, ""]
    if not facts["evals"]:
        lines += ["Not evaluated yet: run `opencanvas eval`.", ""]
    for ev in facts["evals"]:
        lines += [f"Evaluation `{ev['id']}`: {ev['prompts']['count']} prompts "
                  f"({markdown_text(ev['prompts']['source'])}), {ev['settings']['n']} images per guidance scale, "
                  f"sampler {ev['settings']['sampler']}, {ev['settings']['steps']} steps; "
                  f"CLIP score by {markdown_text(ev.get('clip_model'))}; distribution metrics in "
                  f"{markdown_text(ev.get('features'))} features.", ""]
        fd, kid = ev.get("fd_metric"), ev.get("kid_metric")
        rows = [[f"{r['guidance']:g}" + (" (unconditional)" if r["baseline"] else ""),
                 _fmt_num(r.get("clip_score")), _fmt_num(r.get(fd)) if fd else "-",
                 _fmt_num(r.get(kid)) if kid else "-",
                 _fmt_num((r.get("memorization") or {}).get("share_cosine_above")),
                 _fmt_num((r.get("memorization") or {}).get("share_phash_within"))] for r in ev["rows"]]
        lines += _table(["guidance", "CLIP score", fd or "FD", kid or "KID", "near a training image (features)",
                         "near a training image (perceptual hash)"], rows)
        lines += [line for note in ev.get("notes", []) for line in (f"> {markdown_text(note)}", "")]
        gallery = ev.get("memorization_gallery") or {}
        if gallery:
            lines += [f"Memorization: share of samples whose nearest image in {_searched(ev)} has feature "
                      f"cosine >= {gallery.get('cosine_threshold')} or perceptual-hash distance <= "
                      f"{gallery.get('phash_threshold')} bits; the closest pairs are in "
                      f"`runs/{facts['run']}/eval/{ev['id']}/{gallery.get('path')}`.", ""]
    return lines


def _distill_lines(facts: dict[str, Any]) -> list[str]:
    """A guidance-distilled student: its teacher, the rounds and the images each took (empty for other runs)."""
    t = facts["train"]
    d = t["config"].get("distilled")
    if not d:
        return []
    phases = t.get("distill", {}).get("phases", [])
    lines = ["## Distillation", "",
             f"Distilled from the run `{markdown_text(str(d['teacher']))}` by guided distillation (Meng et al. 2023, "
             f"arXiv 2210.03142): a guidance-conditioned student (w ~ U{tuple(d['guidance_range'])}), then "
             f"progressive distillation (Salimans & Ho 2022) from {d['base_steps']} DDIM steps down to "
             f"{d['steps']}. Sample it with `opencanvas sample --run {facts['run']} --steps {d['steps']} --guidance 5`"
             ": one UNet call per step, no classifier-free guidance batch.", ""]
    lines += _table(["phase", "student steps", "images", "minutes"],
                    [[p["phase"], p["steps"] or "(guided)", p["images"], f"{p['minutes']:.1f}"] for p in phases]
                    or [["(per phase)", d["rounds"], d["images_per_round"], None]])
    return lines


def _conditioning_rows(cfg: dict[str, Any]) -> list[list[Any]]:
    """What the UNet is conditioned on besides one caption (issue 14), for the training table."""
    rows: list[list[Any]] = []
    mode = cfg.get("conditioning") or "text"
    if mode == "multi-caption":
        rows.append(["conditioning", f"multi-caption: up to {cfg.get('max_captions') or 'all'} captions per image "
                     f"at once, each dropped with p={cfg.get('slot_dropout')}"])
    elif mode == "text+image":
        rows.append(["conditioning", f"text + CLIP image embedding ({cfg.get('image_tokens')} tokens and the "
                     f"timestep embedding), image dropped with p={cfg.get('image_dropout')}"])
    if len(cfg.get("data", {}).get("text_encoders") or []) > 1 and cfg.get("text_encoders") != 1:
        rows.append(["text encoders", f"two, concatenated along the feature axis, each dropped with "
                     f"p={cfg.get('encoder_dropout')}"])
    if cfg.get("class_column"):
        names = cfg.get("class_names") or []
        rows.append(["class labels", f"catalog column {markdown_text(cfg['class_column'])}, {len(names)} classes "
                     "(plus a null class for guidance)"])
    return rows


def sampling_defaults(run: str, config: dict[str, Any]) -> str:
    """How `opencanvas sample` samples this run; a distilled student only at its own step count."""
    distilled = config.get("distilled")
    if distilled:
        return (f"`opencanvas sample --run {run} --steps {distilled['steps']} PROMPT` samples the student's own DDIM "
                f"grid, guidance {SAMPLING_DEFAULTS['guidance']} as an input, EMA weights; without --steps it takes "
                f"{SAMPLING_DEFAULTS['steps']} steps and warns that it was distilled for {distilled['steps']}.")
    return (f"`opencanvas sample --run {run} PROMPT` uses sampler {SAMPLING_DEFAULTS['sampler']}, "
            f"{SAMPLING_DEFAULTS['steps']} steps, classifier-free guidance {SAMPLING_DEFAULTS['guidance']}, "
            "EMA weights.")


def model_card(facts: dict[str, Any]) -> str:
    t, sub = facts["train"], facts["subset"]
    cfg, summ = t["config"], t["summary"]
    wall = summ.get("wall_seconds")
    lic = model_license(sub["by_license"], sub["policy"])
    lines = [f"# Model card: `{facts['run']}`", "",
             "A latent text-to-image diffusion model trained with OpenCanvas (CommonCanvas recipe, "
             "arXiv 2310.16825) only on openly licensed images.", "", "## License", "",
             f"The model is released under **{lic.name}** (`{lic.license_id}`, {lic.url}), {lic.reason}", "",
             "## Components", ""]
    lines += _table(["component", "weights", "parameters", "where it came from"], _component_rows(facts))
    lines += ["## Training", ""]
    lines += _table(["fact", "value"], [
        ["images seen", summ.get("images_seen")], ["optimizer steps", summ.get("steps")],
        ["skipped (non-finite) steps", summ.get("skipped_steps")],
        ["device", summ.get("device")], ["processes", summ.get("world_size")],
        ["wall time", f"{wall / 60:.1f} min ({wall * (summ.get('world_size') or 1) / 3600:.3f} device-hours)"
         if wall else None],
        ["throughput (last session)", f"{summ['images_per_s']:.1f} images/s" if summ.get("images_per_s") else None],
        ["global batch", cfg.get("batch")], ["learning rate", cfg.get("lr")],
        ["prediction", cfg.get("prediction_type")], ["caption dropout (for CFG)", cfg.get("caption_dropout")],
        *([["caption mix", caption_mix_text(cfg["caption_mix"])]] if cfg.get("caption_mix") else []),
        *_conditioning_rows(cfg),
        ["resolutions", cfg.get("resolutions")], ["checkpoint", t["checkpoint"]],
        *_hash_rows(t),
    ])
    lines += _distill_lines(facts)
    lines += ["## Sampling defaults", "", sampling_defaults(facts["run"], cfg), "", "## Evaluation", ""]
    lines += _eval_lines(facts)
    for section in facts.get("humaneval", []):   # one heading level down: it sits under "Evaluation"
        lines += [("#" + line) if line.startswith("#") else line for line in section.splitlines()] + [""]
    lines += ["## Intended use", "",
              "Research and creative use where the provenance of training data matters. It is not a "
              "source of facts and should not be used to depict real people. Outputs can reflect the "
              "biases and gaps of the catalog (which sources, which subjects are openly licensed).", "",
              "## Obligations that follow from the training data", ""]
    lines += [f"- {o}" for o in obligations(sub["by_license"], sub["policy"])] + [""]
    lines += [f"Training data: policy `{sub['policy']}`, catalog `{sub['catalog_hash']}`, {sub['count']:,} images "
              f"in the subset, {facts['split']['trained']:,} trained on; see `DATA_CARD.md`."]
    return "\n".join(lines)


def _footer(src: Sources) -> str:
    return "\n\n## Records this card was generated from\n\n" + "\n".join(f"- `{p}`" for p in sorted(src.paths)) + "\n"


def copy_cards(cards_dir: Path, folder: Path) -> Path:
    """Copy the cards into `folder`/cards (an exported model), each file atomically."""
    target = folder / "cards"
    for name in CARD_FILES:
        if (cards_dir / name).exists():
            atomic_write_bytes(target / name, (cards_dir / name).read_bytes())
    return target


def write_cards(ws: Workspace, run: str) -> Path:
    """Write runs/<run>/cards/ (and the copy in every export of the run); return runs/<run>/cards."""
    src = Sources()
    runf = run_facts(ws, run, src)
    data = runf["config"].get("data", {})
    if not data.get("subset"):
        raise ValueError(f"run {run!r} does not record its training subset (config.json 'data.subset')")
    if not ws.subset_path(data["subset"]).exists():
        raise FileNotFoundError(f"subset {data['subset']!r} not found at {ws.subset_path(data['subset'])}: "
                                "run `opencanvas catalog subset` first")
    out = ws.run_dir(run) / "cards"
    with UsedImages(ws, data["subset"], float(runf["config"].get("holdout", 0.0)), out / ".spill") as images:
        facts = gather(ws, run, images, src, runf)
        attribution = write_attribution(out, images)
    sub, trained = facts["subset"], facts["trained"]
    chart = license_bar_chart({"subset": sub["by_license"], "trained on": trained["by_license"]},
                              f"Licenses of subset {sub['name']} and of the images trained on",
                              out / "license_composition.png")
    footer = _footer(facts["sources"])
    atomic_write_text(out / "DATA_CARD.md", data_card(facts, chart.name) + footer)
    atomic_write_text(out / "MODEL_CARD.md", model_card(facts) + footer)
    lic = model_license(sub["by_license"], sub["policy"])
    atomic_write_json(out / "cards.json", {k: v for k, v in facts.items() if k != "sources"}
                      | {"attribution": attribution, "records": sorted(facts["sources"].paths),
                         "model_license": {"license_id": lic.license_id, "name": lic.name, "url": lic.url}})
    for folder in export_folders(ws, run):
        copy_cards(out, folder)
    return out
