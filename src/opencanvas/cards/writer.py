"""`opencanvas card --run NAME`: data card, model card and attribution list.

Every number comes from a workspace record (catalog parts and their ingest
records, the subset file, shard indexes, caption tables, component records,
the run's config/summary/checkpoint, evaluation reports); each card ends with
the list of records it was generated from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opencanvas.cards.attribution import write_attribution
from opencanvas.cards.charts import license_bar_chart
from opencanvas.cards.model_facts import component_facts, eval_reports, run_facts
from opencanvas.cards.records import Sources, caption_facts, fetch_facts, ok_keys, subset_facts
from opencanvas.cards.studies import study_sections
from opencanvas.storage import atomic_write_json, atomic_write_text
from opencanvas.workspace import Workspace

SAMPLING_DEFAULTS = {"sampler": "dpmpp-2m", "steps": 25, "guidance": 5.0}


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join("-" if c is None else (f"{c:,}" if isinstance(c, int) else str(c)) for c in r) + " |"
            for r in rows]
    return out + [""]


def _fmt_num(x: Any, digits: int = 4) -> str:
    return "-" if x is None else (f"{x:.{digits}g}" if isinstance(x, float) else str(x))


def gather(ws: Workspace, run: str) -> dict[str, Any]:
    """All facts the cards print, with the records they came from."""
    from opencanvas.catalog.ingest import DONE_DIR
    from opencanvas.catalog.query import catalog_rows
    from opencanvas.catalog.stats import catalog_stats

    src = Sources()
    runf = run_facts(ws, run, src)
    data = runf["config"].get("data", {})
    subset = data.get("subset")
    if not subset:
        raise ValueError(f"run {run!r} does not record its training subset (config.json 'data.subset')")
    for p in ws.catalog_dir.glob(f"*/{DONE_DIR}/*.json"):  # ingest done-records (read counts)
        src.add(ws, p)
    keys = ok_keys(ws, subset)
    captioners = data.get("captioners") or []
    # Training leaves out the held-out split (train/config.py `holdout`); those images are
    # evaluation references only.
    from opencanvas.splits import key_fraction

    holdout = float(runf["config"].get("holdout", 0.0))
    heldout = [k for k in keys if key_fraction(k) < holdout]
    return {
        "run": run,
        "catalog": catalog_stats(ws),
        "subset": subset_facts(ws, subset, src),
        "fetch": fetch_facts(ws, subset, src),
        "captions": [caption_facts(ws, c, keys, src) for c in captioners],
        "autoencoder": component_facts(ws, str(data.get("autoencoder", "")), "autoencoder", src),
        "text_encoder": component_facts(ws, str(data.get("text_encoder", "")), "text_encoder", src),
        "train": runf,
        "evals": eval_reports(ws, run, src),
        "humaneval": study_sections(ws, run, src),
        "training_rows": catalog_rows(ws, keys).to_pylist() if keys else [],
        "split": {"fetched_ok": len(keys), "heldout": len(heldout), "trained": len(keys) - len(heldout),
                  "holdout_fraction": holdout},
        "sources": src,
    }


def data_card(facts: dict[str, Any], chart: str) -> str:
    cat, sub, fetch = facts["catalog"], facts["subset"], facts["fetch"]
    lines = [f"# Data card: training data of `{facts['run']}`", "",
             f"Policy **{sub['policy']}**: {sub['policy_text']}", "",
             f"Catalog snapshot `{sub['catalog_hash']}`; subset `{sub['name']}`.", "",
             "## Sources and how each was read", ""]
    lines += _table(["source", "inputs", "records read", "ingested", "quarantined", "read = ingested + quarantined"],
                    [[s, v["inputs"], v["read"], v["ingested"], v["quarantined"], "yes" if v["balanced"] else "NO"]
                     for s, v in cat["sources"].items()])
    lines += ["Quarantined records (never used; kept with the raw record and the reason):", ""]
    lines += _table(["reason", "records"], [[r, n] for r, n in cat["quarantine"].items()]) if cat["quarantine"] \
        else ["None.", ""]
    lines += ["## License composition", "", "Whole catalog:", ""]
    lines += _table(["license", "images"], [[k, v] for k, v in cat["licenses"].items()])
    lines += [f"Training subset `{sub['name']}` ({sub['count']:,} images):", ""]
    lines += _table(["license", "images"], [[k, v] for k, v in sorted(sub["by_license"].items())])
    lines += [f"![license composition]({chart})", "", "## Counts at every stage", ""]
    ok = fetch["by_status"].get("ok", 0)
    lines += _table(["stage", "images"], [
        ["records read from sources", cat["total"]["read"]],
        ["ingested into the catalog", cat["total"]["ingested"]],
        ["quarantined", cat["total"]["quarantined"]],
        [f"in subset `{sub['name']}` ({sub['policy']})", sub["count"]],
        ["fetched ok", ok],
        ["fetch failed", fetch["by_status"].get("failed", 0)],
        ["fetch skipped (too small, duplicates, opt-outs)", fetch["by_status"].get("skipped", 0)],
        [f"held out for evaluation, never trained on (key-hash fraction < {facts['split']['holdout_fraction']})",
         facts["split"]["heldout"]],
        ["trained on", facts["split"]["trained"]],
    ])
    if fetch["by_reason"]:
        lines += ["Fetch outcomes other than ok, by reason:", ""]
        lines += _table(["status: reason", "images"], [[k, v] for k, v in fetch["by_reason"].items()])
    lines += ["## Captions", "", "Synthetic or metadata captions used for training, per captioner:", ""]
    lines += _table(["captioner", "model", "revision", "captions", "flagged", "distinct", "mean words"],
                    [[c["captioner"], ", ".join(c.get("model_id") or []) or "(metadata)",
                      ", ".join(c.get("model_revision") or []) or "-", c["count"], c.get("flagged"),
                      c.get("distinct_captions"), c.get("mean_words")] for c in facts["captions"]])
    return "\n".join(lines)


def _component_rows(facts: dict[str, Any]) -> list[list[Any]]:
    rows = []
    t = facts["train"]
    cfg = t["config"]
    rows.append(["UNet (diffusers UNet2DConditionModel)", f"preset `{cfg.get('preset')}`", t["unet_parameters"],
                 f"trained here on subset `{cfg.get('data', {}).get('subset')}`"])
    for label, key in (("Autoencoder (diffusers AutoencoderKL)", "autoencoder"),
                       ("Text encoder (CLIP text tower)", "text_encoder")):
        c = facts[key]
        rec = c["record"]
        if c["origin"] == "trained here":
            where = (f"trained here on subset `{rec.get('subset')}` (policy {rec.get('policy')}, "
                     f"catalog `{str(rec.get('catalog_hash', ''))[:12]}`), {rec.get('images_seen', '-')} images seen")
        else:
            where = (f"pretrained `{c['spec']}`: its training data is outside this catalog and is not covered "
                     "by this card; see that model's own card")
        rows.append([label, f"`{c['path']}`", c["parameters"], where])
    return rows


def obligations(sub: dict[str, Any]) -> list[str]:
    lic = set(sub["by_license"])
    out = []
    if lic & {"cc-by", "cc-by-sa", "cc-by-nc", "cc-by-nc-sa"}:
        out.append("**Attribution required.** Some training images are CC BY-family licensed: credit them as "
                   "listed in `ATTRIBUTION.md` / `attribution.csv` when you distribute this model.")
    else:
        out.append("**No attribution required by the licenses**: every training image is public domain or CC0 "
                   "(crediting the Open Clip Art Library and the authors in `attribution.csv` is still courteous).")
    if lic & {"cc-by-sa", "cc-by-nc-sa"}:
        out.append("**ShareAlike present.** Some training images are BY-SA / BY-NC-SA. Whether a model trained on "
                   "them is an adaptation is unsettled; if it is, adaptations must carry the same license.")
    else:
        out.append("**No ShareAlike material** is in the training data.")
    if sub["policy"] == "noncommercial" or lic & {"cc-by-nc", "cc-by-nc-sa"}:
        out.append("**Non-commercial.** The NC policy admits CC BY-NC images: do not use this model commercially.")
    else:
        out.append("**Commercial use allowed** by the training data's licenses (policy `commercial`, "
                   "CommonCatalog-C).")
    out.append("No-derivatives (ND) and unknown licenses never enter training.")
    return out


def model_card(facts: dict[str, Any]) -> str:
    t, sub = facts["train"], facts["subset"]
    cfg, summ = t["config"], t["summary"]
    wall = summ.get("wall_seconds")
    lines = [f"# Model card: `{facts['run']}`", "",
             "A latent text-to-image diffusion model trained with OpenCanvas (CommonCanvas recipe, "
             "arXiv 2310.16825) only on openly licensed images.", "", "## Components", ""]
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
        ["resolutions", cfg.get("resolutions")], ["checkpoint", t["checkpoint"]],
        ["weights sha256", summ.get("weights_sha256")],
    ])
    lines += ["## Sampling defaults", "",
              f"`opencanvas sample --run {facts['run']} PROMPT` uses sampler {SAMPLING_DEFAULTS['sampler']}, "
              f"{SAMPLING_DEFAULTS['steps']} steps, classifier-free guidance {SAMPLING_DEFAULTS['guidance']}, "
              "EMA weights.", "", "## Evaluation", ""]
    if not facts["evals"]:
        lines += ["Not evaluated yet: run `opencanvas eval`.", ""]
    for ev in facts["evals"]:
        lines += [f"Evaluation `{ev['id']}`: {ev['prompts']['count']} prompts ({ev['prompts']['source']}), "
                  f"{ev['settings']['n']} images per guidance scale, "
                  f"sampler {ev['settings']['sampler']}, {ev['settings']['steps']} steps; "
                  f"CLIP score by {ev.get('clip_model')}; distribution metrics in {ev.get('features')} features.", ""]
        fd, kid = ev.get("fd_metric"), ev.get("kid_metric")
        rows = [[f"{r['guidance']:g}" + (" (unconditional)" if r["baseline"] else ""),
                 _fmt_num(r.get("clip_score")), _fmt_num(r.get(fd)) if fd else "-",
                 _fmt_num(r.get(kid)) if kid else "-",
                 _fmt_num((r.get("memorization") or {}).get("share_cosine_above")),
                 _fmt_num((r.get("memorization") or {}).get("share_phash_within"))] for r in ev["rows"]]
        lines += _table(["guidance", "CLIP score", fd or "FD", kid or "KID", "near a training image (features)",
                         "near a training image (perceptual hash)"], rows)
        gallery = ev.get("memorization_gallery") or {}
        if gallery:
            lines += [f"Memorization: share of samples whose nearest training image has feature cosine >= "
                      f"{gallery.get('cosine_threshold')} or perceptual-hash distance <= "
                      f"{gallery.get('phash_threshold')} bits; the closest pairs are in "
                      f"`runs/{facts['run']}/eval/{ev['id']}/{gallery.get('path')}`. With a small catalog CLIP "
                      "the feature cosine is coarse (unrelated images score high): read the perceptual-hash "
                      "column and the gallery.", ""]
    for section in facts.get("humaneval", []):   # one heading level down: it sits under "Evaluation"
        lines += [("#" + line) if line.startswith("#") else line for line in section.splitlines()] + [""]
    lines += ["## Intended use", "",
              "Research and creative use where the provenance of training data matters. It is not a "
              "source of facts and should not be used to depict real people. Outputs can reflect the "
              "biases and gaps of the catalog (which sources, which subjects are openly licensed).", "",
              "## Obligations that follow from the training data", ""]
    lines += [f"- {o}" for o in obligations(sub)] + [""]
    lines += [f"Training data: policy `{sub['policy']}`, catalog `{sub['catalog_hash']}`, {sub['count']:,} images "
              "in the subset; see `DATA_CARD.md`."]
    return "\n".join(lines)


def _footer(src: Sources) -> str:
    return "\n## Records this card was generated from\n\n" + "\n".join(f"- `{p}`" for p in sorted(src.paths)) + "\n"


def write_cards(ws: Workspace, run: str) -> Path:
    """Write runs/<run>/cards/ and return that directory."""
    facts = gather(ws, run)
    out = ws.run_dir(run) / "cards"
    chart = license_bar_chart(facts["subset"]["by_license"], f"Licenses of subset {facts['subset']['name']}",
                              out / "license_composition.png")
    attribution = write_attribution(out, facts["training_rows"], heldout=facts["split"]["heldout"])
    footer = _footer(facts["sources"])
    atomic_write_text(out / "DATA_CARD.md", data_card(facts, chart.name) + footer)
    atomic_write_text(out / "MODEL_CARD.md", model_card(facts) + footer)
    atomic_write_json(out / "cards.json", {k: v for k, v in facts.items() if k not in ("training_rows", "sources")}
                      | {"attribution": attribution, "records": sorted(facts["sources"].paths)})
    return out
