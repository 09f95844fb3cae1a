"""A study's results: the dict that `humaneval report --json`, the results page and the API all return,
its Markdown (for the model card) and a PNG plot."""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from opencanvas.humaneval.stats import (
    Comparison,
    bootstrap_bradley_terry,
    bradley_terry,
    fleiss_kappa,
    percent_agreement,
    wilson_interval,
    win_matrix,
)
from opencanvas.humaneval.store import QUESTIONS, Study

CATEGORIES = ("a", "b", "tie")   # a vote in model terms, for agreement


def _outcome(vote: dict[str, Any], a: str) -> float:
    """1.0 when model `a` won this vote, 0.0 when it lost, 0.5 for a tie."""
    if vote["choice"] == "tie":
        return 0.5
    winner = vote["left_model"] if vote["choice"] == "left" else vote["right_model"]
    return 1.0 if winner == a else 0.0


def _comparisons(votes: list[dict[str, Any]], index: dict[str, int]) -> list[Comparison]:
    out = []
    for v in votes:
        a, b = sorted((v["left_model"], v["right_model"]), key=index.__getitem__)
        out.append(Comparison(index[a], index[b], _outcome(v, a)))
    return out


def _win_rates(votes: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per model (against all others) and per pair of models: wins, losses, ties, rate and Wilson interval."""
    index = {n: i for i, n in enumerate(names)}
    comps = _comparisons(votes, index)
    w = win_matrix(comps, len(names))
    ties = np.zeros_like(w)
    for c in comps:
        if c.outcome == 0.5:
            ties[c.a, c.b] += 1
            ties[c.b, c.a] += 1
    per_model = []
    for i, name in enumerate(names):
        n = float((w[i] + w[:, i]).sum())
        score = float(w[i].sum())
        lo, hi = wilson_interval(score, n)
        per_model.append({"model": name, "n": int(n), "win_rate": score / n if n else None, "ci95": [lo, hi]})
    pairs = []
    for i, j in itertools.combinations(range(len(names)), 2):
        n = float(w[i, j] + w[j, i])
        t = float(ties[i, j])
        lo, hi = wilson_interval(float(w[i, j]), n)
        pairs.append({"a": names[i], "b": names[j], "n": int(n), "a_wins": int(round(w[i, j] - t / 2)),
                      "b_wins": int(round(w[j, i] - t / 2)), "ties": int(t),
                      "a_win_rate": float(w[i, j]) / n if n else None, "ci95": [lo, hi]})
    return {"per_model": per_model, "pairwise": pairs}


def _bradley_terry(votes: list[dict[str, Any]], names: list[str], rounds: int, seed: int) -> list[dict[str, Any]]:
    index = {n: i for i, n in enumerate(names)}
    comps = _comparisons(votes, index)
    strengths = bradley_terry(win_matrix(comps, len(names)))
    lo, hi = bootstrap_bradley_terry(comps, len(names), rounds=rounds, seed=seed)
    return [{"model": n, "strength": float(strengths[i]), "log_strength": float(np.log(strengths[i])),
             "log_ci95": [float(lo[i]), float(hi[i])]} for i, n in enumerate(names)]


def _agreement(votes: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    index = {n: i for i, n in enumerate(names)}
    items: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for v in votes:
        a = min(v["left_model"], v["right_model"], key=index.__getitem__)
        o = _outcome(v, a)
        items[v["pair_id"]][0 if o == 1.0 else 1 if o == 0.0 else 2] += 1
    counts = np.array(list(items.values()), float).reshape(-1, 3)
    multi = int((counts.sum(axis=1) >= 2).sum()) if len(counts) else 0
    return {"pairs_with_several_raters": multi,
            "percent_agreement": percent_agreement(counts) if multi else None,
            "fleiss_kappa": fleiss_kappa(counts) if multi else None}


def study_results(study: Study, bootstrap: int = 200, seed: int = 0) -> dict[str, Any]:
    """Every figure of the study from its current votes (the newest per rater, pair and question)."""
    models = study.models()
    names = [m["name"] for m in models]
    raw = study.raw_votes()
    current = [v for v in raw if v["current"]]
    out: dict[str, Any] = {"study": study.name, "models": models, "counts": study.counts() | {
        "current_votes": len(current)}, "questions": {}}
    for q in study.questions:
        votes = [v for v in current if v["question"] == q]
        section: dict[str, Any] = {"text": QUESTIONS.get(q, q), "votes": len(votes), **_win_rates(votes, names)}
        section["bradley_terry"] = _bradley_terry(votes, names, bootstrap, seed) if len(names) >= 2 else []
        section["agreement"] = _agreement(votes, names)
        categories = sorted({v["category"] for v in votes if v["category"]})
        section["categories"] = {c: _win_rates([v for v in votes if v["category"] == c], names)["per_model"]
                                 for c in categories}
        out["questions"][q] = section
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def results_markdown(results: dict[str, Any]) -> str:
    """The study as Markdown: the section a model card includes."""
    lines = [f"## Human evaluation: study `{results['study']}`", "",
             f"{results['counts']['current_votes']} votes by {results['counts']['raters']} raters on "
             f"{results['counts']['pairs']} pairs ({results['counts']['prompts']} prompts); pairwise, blind, left "
             "and right randomised per pair and rater, ties allowed. Win rates count a tie as half a win "
             "(Wilson 95% intervals); Bradley-Terry log-strengths with bootstrap 95% intervals.", ""]
    for sec in results["questions"].values():
        lines += [f"### {sec['text']} ({sec['votes']} votes)", "", "| model | win rate | 95% CI | BT log-strength "
                  "| 95% CI |", "|---|---|---|---|---|"]
        bt = {r["model"]: r for r in sec["bradley_terry"]}
        for r in sec["per_model"]:
            b = bt.get(r["model"])
            lines.append(f"| {r['model']} | {_pct(r['win_rate'])} | {_pct(r['ci95'][0])}-{_pct(r['ci95'][1])} | "
                         + (f"{b['log_strength']:+.2f} | {b['log_ci95'][0]:+.2f} to {b['log_ci95'][1]:+.2f} |"
                            if b else "- | - |"))
        ag = sec["agreement"]
        if ag["pairs_with_several_raters"]:
            kappa = ag["fleiss_kappa"]
            lines += ["", f"Agreement on {ag['pairs_with_several_raters']} pairs with several raters: "
                      f"{_pct(ag['percent_agreement'])} of rater pairs agree, Fleiss' kappa "
                      f"{'-' if kappa is None else f'{kappa:.2f}'}."]
        lines.append("")
    return "\n".join(lines)


def results_plot(results: dict[str, Any], path: Path) -> Path:
    """Win rate per model and question with Wilson intervals, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from opencanvas.storage import atomic_write_figure

    questions = list(results["questions"].items())
    fig, axes = plt.subplots(1, max(1, len(questions)), figsize=(4.5 * max(1, len(questions)), 3.2), squeeze=False)
    for ax, (q, sec) in zip(axes[0], questions, strict=False):
        rows = list(sec["per_model"])
        ys = np.arange(len(rows))
        rates = [r["win_rate"] or 0.0 for r in rows]
        err = np.array([[rate - r["ci95"][0], r["ci95"][1] - rate] for rate, r in zip(rates, rows, strict=True)]).T
        ax.barh(ys, rates, xerr=err if len(rows) else None, color="#4a7bb7", capsize=4)
        ax.axvline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_yticks(ys, [r["model"] for r in rows])
        ax.set_xlim(0, 1)
        ax.set_xlabel("win rate (ties count half)")
        ax.set_title(f"{q}: {sec['votes']} votes", fontsize=10)
    fig.tight_layout()
    return atomic_write_figure(fig, Path(path))
