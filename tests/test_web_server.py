"""A real `opencanvas serve` killed with SIGKILL while raters vote: after a restart every vote the
server acknowledged is there, unchanged, and nothing is counted twice."""

from __future__ import annotations

import importlib.util
import os
import signal
import threading
import time
from pathlib import Path

from opencanvas.humaneval.report import study_results
from opencanvas.humaneval.store import open_study
from opencanvas.workspace import Workspace
from tests.web_server import free_port, start_server
from tests.web_workspace import synthetic_study

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "humaneval_load.py"


def _rater_class() -> type:
    spec = importlib.util.spec_from_file_location("humaneval_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)   # the benchmark's rater: one loop, shared with the load figures
    return module.Rater


def test_kill_9_mid_load_keeps_every_acknowledged_vote(ws: Workspace) -> None:
    Rater = _rater_class()
    tokens = synthetic_study(ws, "load", 300, raters=4)
    port = free_port()
    proc = start_server(ws.root, port, log=ws.root / "serve.log")
    stop = threading.Event()
    raters = [Rater(port, t, stop, i) for i, t in enumerate(tokens)]
    for r in raters:
        r.start()
    deadline = time.monotonic() + 60
    while sum(len(r.acked) for r in raters) < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)   # mid-load: requests are in flight
    proc.wait(timeout=30)
    stop.set()
    for r in raters:
        r.join(timeout=15)
    acked = [a for r in raters for a in r.acked]
    assert len(acked) >= 100
    restarted = start_server(ws.root, free_port(), log=ws.root / "serve.log")
    try:
        study = open_study(ws, "load")
        rows = {v["id"]: v for v in study.raw_votes()}
        ids = {t: study.rater_id(t) for t in tokens}
        for a in acked:
            row = rows.get(a["vote_id"])
            assert row is not None, f"acknowledged vote {a['vote_id']} lost"
            assert (row["pair_id"], row["question"], row["choice"], row["rater_id"]) == \
                (a["pair_id"], a["question"], a["choice"], ids[a["token"]])
        assert len(rows) - len(acked) <= len(tokens)   # at most one unacknowledged commit per in-flight request
        results = study_results(study, bootstrap=5)
        current = [(v["pair_id"], v["rater_id"], v["question"]) for v in rows.values() if v["current"]]
        assert len(current) == len(set(current))
        assert sum(sec["votes"] for sec in results["questions"].values()) == len(current)
    finally:
        restarted.terminate()
        restarted.wait(timeout=30)
