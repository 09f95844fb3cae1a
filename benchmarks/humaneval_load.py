"""Arena load: simulated raters voting as fast as they can against a real `opencanvas serve`, then a
`kill -9` of the server in the middle of such a load, a restart, and a check of every acknowledged vote.

1. Load: R raters (threads, one keep-alive HTTP connection each) loop GET /next -> POST /votes per
   question for `--seconds`; votes/s counts acknowledged votes (HTTP 200) over the wall time.
2. Page: GET /arena/<study> (the rater's HTML page) timed `--pages` times on an idle server, under the
   full load, and under a load paced to `--paced-rate` votes/s (the goal's 200); p50/p95 in ms.
3. Faults: the same load, the server killed with SIGKILL after `--kill-after` s, restarted; every vote
   the server acknowledged must be in the database with the same content, and no (pair, rater,
   question) may be counted twice in the figures.

The study is synthetic (plain PNGs, no model), so the figure is the arena's, not the sampler's.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/humaneval_load.py --raters 20 --seconds 20
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.web_server import free_port, start_server  # noqa: E402
from tests.web_workspace import synthetic_study  # noqa: E402

from opencanvas.humaneval.report import study_results  # noqa: E402
from opencanvas.humaneval.store import open_study  # noqa: E402
from opencanvas.workspace import Workspace  # noqa: E402

STUDY = "load"


def make_study(ws: Workspace, prompts: int, raters: int) -> list[str]:
    """Two models x `prompts` prompts of plain PNGs; returns `raters` invite tokens."""
    return synthetic_study(ws, STUDY, prompts, raters)


class Rater(threading.Thread):
    """Votes as fast as the server answers; records what the server acknowledged."""

    def __init__(self, port: int, token: str, stop: threading.Event, seed: int, interval: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.port, self.token, self.stop, self.seed = port, token, stop, seed
        self.interval = interval   # seconds between this rater's votes (0: as fast as the server answers)
        self.acked: list[dict] = []
        self.errors = 0

    def _request(self, conn: http.client.HTTPConnection, method: str, path: str, body: dict | None = None
                 ) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        n = self.seed
        due = time.perf_counter() + self.interval * (self.seed % 20) / 20
        while not self.stop.is_set():
            try:
                status, body = self._request(conn, "GET", f"/api/humaneval/{STUDY}/next")
                if status == 204:
                    return
                pair = json.loads(body)
                for q in pair["questions"]:
                    if self.interval:
                        time.sleep(max(0.0, due - time.perf_counter()))
                        due += self.interval
                    n += 1
                    vote = {"pair_id": pair["pair_id"], "question": q["id"], "choice": ("left", "right", "tie")[n % 3]}
                    status, body = self._request(conn, "POST", f"/api/humaneval/{STUDY}/votes", vote)
                    if status == 200:
                        self.acked.append({**vote, "vote_id": json.loads(body)["vote_id"], "token": self.token})
                    else:
                        self.errors += 1
            except (OSError, http.client.HTTPException, ValueError):
                self.errors += 1
                if self.stop.is_set():
                    return
                conn.close()
                time.sleep(0.05)
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)


def page_times(port: int, n: int, token: str) -> list[float]:
    """Milliseconds per GET of the arena page (HTML), one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        conn.request("GET", f"/arena/{STUDY}", headers={"Authorization": f"Bearer {token}", "Accept": "text/html"})
        r = conn.getresponse()
        r.read()
        assert r.status == 200, r.status
        out.append(1000 * (time.perf_counter() - t))
        time.sleep(0.02)
    return out


def p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20)[18] if len(xs) >= 20 else max(xs)


def load_phase(ws: Workspace, tokens: list[str], seconds: float, pages: int, rate: float = 0.0) -> dict:
    """Raters as fast as they can (rate 0) or paced to `rate` votes/s in all; page times idle and under it."""
    port = free_port()
    proc = start_server(ws.root, port, log=ws.root / "serve.log")
    try:
        idle = page_times(port, pages, tokens[0])
        stop = threading.Event()
        raters = [Rater(port, t, stop, i, len(tokens) / rate if rate else 0.0) for i, t in enumerate(tokens)]
        cpu0 = os.times()
        start = time.perf_counter()
        for r in raters:
            r.start()
        loaded = page_times(port, pages, tokens[0])
        time.sleep(max(0.0, seconds - (time.perf_counter() - start)))
        stop.set()
        for r in raters:
            r.join(timeout=15)
        wall = time.perf_counter() - start
        cpu1 = os.times()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    votes = sum(len(r.acked) for r in raters)
    return {"raters": len(tokens), "paced_to_votes_per_s": rate or None, "seconds": round(wall, 2),
            "votes": votes, "votes_per_s": round(votes / wall, 1),
            "errors": sum(r.errors for r in raters),
            "client_cpu_s": round((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system), 2),
            "page_ms_idle": {"p50": round(statistics.median(idle), 2), "p95": round(p95(idle), 2)},
            "page_ms_under_load": {"p50": round(statistics.median(loaded), 2), "p95": round(p95(loaded), 2)}}


def kill_phase(ws: Workspace, tokens: list[str], kill_after: float) -> dict:
    """SIGKILL the server mid-load, restart, check every acknowledged vote."""
    port = free_port()
    proc = start_server(ws.root, port, log=ws.root / "serve.log")
    stop = threading.Event()
    raters = [Rater(port, t, stop, 100 + i) for i, t in enumerate(tokens)]
    for r in raters:
        r.start()
    time.sleep(kill_after)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    stop.set()
    for r in raters:
        r.join(timeout=15)
    acked = [a for r in raters for a in r.acked]
    port = free_port()
    proc = start_server(ws.root, port, log=ws.root / "serve.log")   # the restart (recovers the WAL)
    try:
        study = open_study(ws, STUDY)
        rows = {v["id"]: v for v in study.raw_votes()}
        raters_by_token = {t: study.rater_id(t) for t in tokens}
        missing = [a for a in acked if a["vote_id"] not in rows]
        changed = [a for a in acked if a["vote_id"] in rows and (
            rows[a["vote_id"]]["pair_id"], rows[a["vote_id"]]["question"], rows[a["vote_id"]]["choice"],
            rows[a["vote_id"]]["rater_id"]) != (a["pair_id"], a["question"], a["choice"], raters_by_token[a["token"]])]
        results = study_results(study, bootstrap=20)
        current = [v for v in rows.values() if v["current"]]
        keys = [(v["pair_id"], v["rater_id"], v["question"]) for v in current]
        counted = sum(sec["votes"] for sec in results["questions"].values())
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", f"/api/humaneval/{STUDY}/next", headers={"Authorization": f"Bearer {tokens[0]}"})
        after_restart = conn.getresponse().status
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"acknowledged": len(acked), "rows_in_db": len(rows), "missing_acknowledged": len(missing),
            "changed_acknowledged": len(changed), "current_votes": len(current),
            "counted_in_results": counted, "duplicate_current": len(keys) - len(set(keys)),
            "serves_after_restart": after_restart in (200, 204)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raters", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--kill-after", type=float, default=5)
    ap.add_argument("--paced-rate", type=float, default=200, help="votes/s of the paced phase (the goal's load)")
    ap.add_argument("--keep", type=Path, help="workspace directory to keep (default: a temp dir)")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="humaneval-load-"))
    ws = Workspace.open(root)
    tokens = make_study(ws, args.prompts, args.raters)
    load = load_phase(ws, tokens, args.seconds, args.pages)
    print(json.dumps({"load": load}, indent=2), flush=True)
    paced = load_phase(ws, tokens, args.seconds, args.pages, rate=args.paced_rate)
    print(json.dumps({"paced": paced}, indent=2), flush=True)
    faults = kill_phase(ws, tokens, args.kill_after)
    ok = faults["missing_acknowledged"] == 0 and faults["changed_acknowledged"] == 0 and \
        faults["duplicate_current"] == 0 and faults["counted_in_results"] == faults["current_votes"]
    print(json.dumps({"kill": faults, "durable_and_no_double_counts": ok, "cpus": os.cpu_count(),
                      "loadavg": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
