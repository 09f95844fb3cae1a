"""Test tooling: a local image server with injectable faults, and small catalog builders.

Serves registered images on 127.0.0.1 (HTTP/1.1 keep-alive, threaded). The first
path segment picks the behaviour, the rest names the image:

    /img/NAME                 200 with the image
    /slow/NAME                sleeps `slow_seconds` first (client timeouts)
    /flaky/NAME               500 for the first `flaky_failures` requests, then 200
    /ratelimited/NAME         429 with Retry-After: `retry_after` on the first request, then 200
    /truncated/NAME           announces the full Content-Length, sends half, closes
    /redirect/N/NAME          a chain of N 302 redirects ending at /img/NAME
    /noai/NAME                200 with X-Robots-Tag: noai
    /private/NAME             disallowed by /robots.txt
    /html/NAME                200 with Content-Type: text/html
    /oversize/NAME            streams `oversize_bytes` of data without Content-Length
    /missing/NAME             404

Every response waits `delay` seconds first (to slow a run down for kill tests).
`hits[path]` counts requests, so tests can check retries happened.
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from opencanvas.catalog.ingest import write_done_record
from opencanvas.catalog.schema import CATALOG_SCHEMA, SUBSET_SCHEMA
from opencanvas.storage import atomic_write_parquet
from opencanvas.workspace import Workspace

ROBOTS_TXT = b"User-agent: *\nDisallow: /private/\n"


@dataclass
class ServerState:
    images: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # name -> (body, content type)
    delay: float = 0.0
    slow_seconds: float = 2.0
    flaky_failures: int = 1
    retry_after: int = 1
    oversize_bytes: int = 4 * 1024 * 1024
    hits: Counter[str] = field(default_factory=Counter)
    user_agents: set[str] = field(default_factory=set)
    active: int = 0          # requests being handled now
    max_active: int = 0      # the most at once (per-domain concurrency tests)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hit(self, path: str, agent: str) -> int:
        with self.lock:
            self.hits[path] += 1
            self.user_agents.add(agent)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            return self.hits[path]

    def done(self) -> None:
        with self.lock:
            self.active -= 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall
    state: ServerState  # set on the subclass made by `image_server`

    def log_message(self, *args: object) -> None:  # quiet under tests
        pass

    def _send(self, status: int, body: bytes = b"", ctype: str = "application/octet-stream",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        n = self.state.hit(self.path, self.headers.get("User-Agent", ""))
        try:
            self._respond(n)
        finally:
            self.state.done()

    def _respond(self, n: int) -> None:
        st = self.state
        if st.delay:
            time.sleep(st.delay)
        if self.path == "/robots.txt":
            return self._send(200, ROBOTS_TXT, "text/plain")
        parts = self.path.split("?", 1)[0].lstrip("/").split("/")  # the query only makes URLs distinct
        kind, name = parts[0], parts[-1]
        if kind == "redirect":
            hops = int(parts[1])
            target = f"/redirect/{hops - 1}/{name}" if hops > 1 else f"/img/{name}"
            return self._send(302, headers={"Location": target})
        if name not in st.images or kind == "missing":
            return self._send(404, b"not found", "text/plain")
        body, ctype = st.images[name]
        if kind == "slow":
            time.sleep(st.slow_seconds)
        elif kind == "flaky" and n <= st.flaky_failures:
            return self._send(500, b"try again", "text/plain")
        elif kind == "ratelimited" and n == 1:
            return self._send(429, b"slow down", "text/plain", {"Retry-After": str(st.retry_after)})
        elif kind == "truncated":
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return None
        elif kind == "noai":
            return self._send(200, body, ctype, {"X-Robots-Tag": "noai, noimageai"})
        elif kind == "html":
            return self._send(200, b"<html>an image page</html>", "text/html; charset=utf-8")
        elif kind == "oversize":
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Connection", "close")
            self.end_headers()
            chunk = b"\0" * 65536
            try:
                for _ in range(st.oversize_bytes // len(chunk)):
                    self.wfile.write(chunk)
            except OSError:
                pass  # the client hung up at its cap, as it should
            self.close_connection = True
            return None
        return self._send(200, body, ctype)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up on slow or oversize responses is what the tests do on purpose


@contextmanager
def image_server(state: ServerState | None = None, port: int = 0) -> Iterator[tuple[str, ServerState]]:
    """Start the server on 127.0.0.1:<port> (0: a free one); yields (base URL, state)."""
    state = state or ServerState()
    handler = type("Handler", (_Handler,), {"state": state})
    server = _QuietServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def write_catalog_subset(ws: Workspace, name: str, rows: list[dict[str, Any]], source: str = "synthetic") -> None:
    """Write catalog rows (CATALOG_SCHEMA dicts; missing columns are null) and a subset of their keys."""
    table = pa.Table.from_pylist([{c: r.get(c) for c in CATALOG_SCHEMA.names} for r in rows], schema=CATALOG_SCHEMA)
    atomic_write_parquet(ws.source_dir(source) / "part-00000.parquet", table)
    write_done_record(ws, source, "test", "(written by a test)", ["part-00000.parquet"], read=table.num_rows,
                      ingested=table.num_rows)
    subset = table.select(SUBSET_SCHEMA.names).cast(SUBSET_SCHEMA)
    atomic_write_parquet(ws.subset_path(name), subset, metadata={"policy": "commercial", "policy_text": "test",
                                                               "catalog_hash": "test"})


def noise_image(seed: int, size: tuple[int, int] = (512, 512), fmt: str = "JPEG") -> bytes:
    """A distinct, photo-like test image (smooth random field): unique perceptual hashes per seed."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(low, "RGB").resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def main() -> None:
    """`python -m opencanvas.fetch.testing DIR [PORT]`: serve DIR's images (as /img/NAME) until killed."""
    import sys
    from pathlib import Path

    folder, port = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0
    state = ServerState(images={p.name: (p.read_bytes(), "image/jpeg" if p.suffix == ".jpg" else "image/png")
                                for p in folder.iterdir() if p.is_file()})
    with image_server(state, port) as (url, _):
        print(url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
