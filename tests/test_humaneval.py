"""Human evaluation: the statistics against known values, the study store (votes, raters, sides),
`humaneval prepare|raters|report|export` on two tiny runs with PartiPrompts categories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from opencanvas.cli import app
from opencanvas.humaneval.report import study_results
from opencanvas.humaneval.stats import (
    Comparison,
    bootstrap_bradley_terry,
    bradley_terry,
    fleiss_kappa,
    percent_agreement,
    wilson_interval,
    win_matrix,
)
from opencanvas.humaneval.store import Study, StudyError, open_study
from opencanvas.workspace import Workspace
from tests.web_workspace import shared_web_workspace, synthetic_study

# ---- statistics ---------------------------------------------------------------------------

def test_wilson_interval_known_values() -> None:
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)   # stays inside [0, 1], unlike p +- 1.96 se
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_bradley_terry_recovers_simulated_strengths() -> None:
    rng = np.random.default_rng(0)
    truth = np.array([1.0, 2.0, 0.5])
    comps = []
    for _ in range(3000):
        a, b = sorted(rng.choice(3, 2, replace=False))
        comps.append(Comparison(int(a), int(b), float(rng.random() < truth[a] / (truth[a] + truth[b]))))
    p = bradley_terry(win_matrix(comps, 3))
    assert np.log(p) - np.log(p).mean() == pytest.approx(np.log(truth) - np.log(truth).mean(), abs=0.12)
    lo, hi = bootstrap_bradley_terry(comps, 3, rounds=50)
    centred = np.log(truth) - np.log(truth).mean()
    assert np.all(lo <= centred + 0.05) and np.all(centred - 0.05 <= hi) and np.all(hi - lo < 0.4)


def test_bradley_terry_stays_finite_when_one_model_always_wins() -> None:
    p = bradley_terry(win_matrix([Comparison(0, 1, 1.0)] * 20, 2))
    assert np.all(np.isfinite(p)) and p[0] > 10 * p[1]


def test_fleiss_kappa_matches_the_published_example() -> None:
    # Fleiss (1971) as worked on Wikipedia: 10 items, 14 raters, 5 categories -> kappa 0.210.
    table = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                      [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])
    assert fleiss_kappa(table) == pytest.approx(0.210, abs=1e-3)
    assert percent_agreement(np.array([[2, 0, 0], [1, 1, 0], [1, 0, 0]])) == pytest.approx(0.5)
    assert fleiss_kappa(np.array([[1, 0, 0]])) is None   # no item has two raters


# ---- the store --------------------------------------------------------------------------------

def _toy_study(ws: Workspace, name: str = "toy") -> Study:
    """Two models, three prompts (categories animals, animals, vehicles), no sampling."""
    synthetic_study(ws, name, 3, categories=("animals", "animals", "vehicles"))
    return open_study(ws, name)


def test_votes_repeat_replaces_raw_kept_and_tokens_hashed(ws: Workspace) -> None:
    study = _toy_study(ws)
    tokens = study.add_raters(2)
    r1, r2 = study.rater_id(tokens[0]), study.rater_id(tokens[1])
    assert r1 and r2 and study.rater_id("not-a-token") is None
    pair = study.next_pair(r1)
    study.vote(r1, pair.id, "overall", "left")
    study.vote(r1, pair.id, "overall", "right")          # a change of mind replaces the vote
    study.vote(r2, pair.id, "overall", "tie")
    raw = study.raw_votes()
    assert [v["choice"] for v in raw] == ["left", "right", "tie"] and [v["current"] for v in raw] == [False, True, True]
    results = study_results(study, bootstrap=10)
    assert results["counts"]["votes"] == 3 and results["counts"]["current_votes"] == 2
    assert results["questions"]["overall"]["votes"] == 2
    # The side each rater saw is recorded with the vote; the winner is resolved through it.
    right_model = raw[1]["right_model"]
    row = next(r for r in results["questions"]["overall"]["per_model"] if r["model"] == right_model)
    assert row["win_rate"] == pytest.approx(0.75)       # one win, one tie
    data = study.path.read_bytes() + study.path.with_name(study.path.name + "-wal").read_bytes()
    assert all(t.encode() not in data for t in tokens)   # only hashes are stored
    with pytest.raises(StudyError, match="choice must be"):
        study.vote(r1, pair.id, "overall", "both")
    with pytest.raises(StudyError, match="unknown question"):
        study.vote(r1, pair.id, "colour", "left")
    with pytest.raises(StudyError, match="no pair"):
        study.vote(r1, "0" * 16, "overall", "left")


def test_sides_are_randomised_per_rater_and_stable(ws: Workspace) -> None:
    study = _toy_study(ws)
    raters = [study.rater_id(t) for t in study.add_raters(16)]
    pair = study.next_pair(raters[0])
    lefts = {study.pair_for(pair.id, r).left_image for r in raters}
    assert len(lefts) == 2                                  # both orientations occur
    assert study.pair_for(pair.id, raters[3]) == study.pair_for(pair.id, raters[3])
    local = study.local_rater()
    assert open_study(ws, "toy").local_rater() == local and local not in raters   # the same after a restart


def test_next_pair_runs_out_after_every_question(ws: Workspace) -> None:
    study = _toy_study(ws)
    rater = study.rater_id(study.add_raters(1)[0])
    seen = []
    while (pair := study.next_pair(rater)) is not None:
        seen.append(pair.id)
        for q in study.questions:
            study.vote(rater, pair.id, q, "tie")
        assert len(seen) <= 3
    assert len(set(seen)) == 3
    # Raters spread over the pairs: a pair someone has started goes behind the untouched ones.
    other = _toy_study(ws, "spread")
    r1, r2 = (other.rater_id(t) for t in other.add_raters(2))
    first = other.next_pair(r1)
    other.vote(r1, first.id, "overall", "left")
    assert other.next_pair(r1).id == first.id          # half-answered: the same pair comes back
    assert other.next_pair(r2).id != first.id          # fewest raters first


# ---- prepare / report / export on two tiny runs --------------------------------------------------

@pytest.fixture(scope="module")
def web_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return shared_web_workspace(tmp_path_factory)[0]


def _cli(ws: Workspace, *args: str) -> str:
    result = CliRunner().invoke(app, ["humaneval", *args, "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    return result.output


def test_prepare_raters_report_export(web_ws: Workspace) -> None:
    ws = web_ws
    _cli(ws, "prepare", "--name", "cli", "--a", "tiny-a", "--b", "tiny-b", "--prompts",
         str(ws.root / "prompts.tsv"), "-n", "3", "--steps", "2", "--sampler", "euler")
    study = open_study(ws, "cli")
    counts = study.counts()
    assert counts["models"] == 2 and counts["prompts"] == 3 and counts["images"] == 6 and counts["pairs"] == 3
    for image_id in study.db.execute("SELECT id FROM images").fetchall():
        with Image.open(study.image_path(image_id[0])) as im:
            assert not getattr(im, "text", {})            # served images carry no model name
    meta = json.loads(study.db.execute("SELECT meta FROM images LIMIT 1").fetchone()[0])
    assert {"prompt", "seed", "model", "weights_hash", "license_policy"} <= set(meta)
    # The same command again makes nothing new.
    out = _cli(ws, "prepare", "--name", "cli", "--a", "tiny-a", "--b", "tiny-b", "--prompts",
               str(ws.root / "prompts.tsv"), "-n", "3", "--steps", "2", "--sampler", "euler")
    assert '"images_made": 0' in out
    tokens = _cli(ws, "raters", "--name", "cli", "--add", "3").split()
    assert len(tokens) == 3
    raters = [study.rater_id(t) for t in tokens]
    for rater in raters:
        while (pair := study.next_pair(rater)) is not None:
            for q in study.questions:
                study.vote(rater, pair.id, q, "left" if rater != raters[2] else "tie")
    report = json.loads(_cli(ws, "report", "--name", "cli", "--json", "--bootstrap", "20"))
    overall = report["questions"]["overall"]
    assert overall["votes"] == 9 and len(overall["pairwise"]) == 1 and len(overall["bradley_terry"]) == 2
    assert set(overall["categories"]) <= {"Shapes", "Colors"} and overall["categories"]
    assert overall["agreement"]["pairs_with_several_raters"] == 3
    assert 0 <= overall["agreement"]["percent_agreement"] <= 1
    out_dir = study.path.with_suffix("")
    assert Image.open(out_dir / "results.png").size[0] > 200 and "Bradley-Terry" in (out_dir / "REPORT.md").read_text()
    from opencanvas.cards.writer import write_cards

    card = (write_cards(ws, "tiny-a") / "MODEL_CARD.md").read_text()
    assert "### Human evaluation: study `cli`" in card and "Bradley-Terry" in card   # the card's section
    assert "humaneval/cli/results.json" in card                                       # ...and its record
    path = Path(_cli(ws, "export", "--name", "cli").strip().splitlines()[-1])
    table = pq.read_table(path)
    assert table.num_rows == 18 and set(table.column("choice").to_pylist()) == {"left", "tie"}


def test_prepare_errors_are_one_clear_line(web_ws: Workspace) -> None:
    r = CliRunner().invoke(app, ["humaneval", "prepare", "--name", "bad", "--a", "tiny-a", "--b", "nope",
                                 "--prompts", str(web_ws.root / "prompts.tsv"), "-w", str(web_ws.root)])
    assert r.exit_code == 2 and "neither a run" in r.output
    r = CliRunner().invoke(app, ["humaneval", "report", "--name", "missing", "-w", str(web_ws.root)])
    assert r.exit_code == 2 and "humaneval prepare" in r.output
