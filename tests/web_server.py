"""Start `opencanvas serve` for real (a subprocess on 127.0.0.1) and wait until it answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(workspace: Path, port: int, *extra: str, log: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "OPENCANVAS_PROGRESS": "0"}
    out = open(log, "ab") if log else subprocess.DEVNULL   # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([sys.executable, "-m", "opencanvas", "serve", "-w", str(workspace), "--port", str(port),
                             *extra], env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} (log: {log})")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/static/app.css", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the server did not answer on port {port} within 60 s (log: {log})")
