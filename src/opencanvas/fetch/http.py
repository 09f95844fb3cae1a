"""A polite, safe HTTP client for fetching catalog images (stdlib http.client).

Polite: an honest User-Agent with a contact URL, per-domain concurrency and
rate limits (and robots.txt Crawl-delay), retries with exponential backoff and
jitter on timeouts, 429 (Retry-After honoured, and the whole domain waits) and
5xx, robots.txt and X-Robots-Tag opt-outs.

Safe: URLs come from third-party metadata, so every connection (the first and
each redirect hop) goes through `addresses.guarded_connect`, which refuses
private, loopback, link-local and metadata destinations. Bodies are capped in
size and must have an image content type.

Limits are per worker process: with `--workers N` a domain sees at most N
times the configured concurrency and rate.
"""

from __future__ import annotations

import email.utils
import http.client
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import SplitResult, urljoin, urlsplit

from opencanvas import __version__
from opencanvas.fetch.addresses import BlockedAddress, guarded_connect
from opencanvas.fetch.robots import ROBOTS_MAX_BYTES, RobotsCache, RobotsUnavailable, x_robots_opt_out

AGENT = "OpenCanvas"
DEFAULT_CONTACT = "https://github.com/opencanvas/opencanvas"
REDIRECTS = (301, 302, 303, 307, 308)
# Types a server may legitimately label an image with; the decoder has the last word.
ALLOWED_NON_IMAGE_TYPES = ("application/octet-stream", "binary/octet-stream")
DEFAULT_PORTS = {"http": 80, "https": 443}
# `scheme://user:pass@` in a URL or in any text (an error message may quote the URL).
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")  # http.client refuses these in a request line
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s@]*@")


def redact_credentials(text: str) -> str:
    """`text` without the `user:pass@` of any URL in it: credentials never reach a shard or an index."""
    return _USERINFO.sub(r"\1", text)


def user_agent(contact: str) -> str:
    return f"{AGENT}/{__version__} (+{contact})"


@dataclass(frozen=True)
class HttpConfig:
    contact: str = DEFAULT_CONTACT
    timeout: float = 20.0              # seconds per connect / read
    retries: int = 3                   # extra attempts after the first
    backoff: float = 1.0               # first retry waits ~backoff s, doubling, with +-50% jitter
    max_backoff: float = 60.0          # also the longest Retry-After we wait for
    max_redirects: int = 5
    max_bytes: int = 50 * 1024 * 1024  # response body cap
    domain_concurrency: int = 4        # simultaneous requests per domain (per process)
    domain_rps: float = 10.0           # requests per second per domain (per process); 0 = no limit
    respect_robots: bool = True
    allow_private_addresses: bool = False


class FetchFailure(Exception):
    """The URL cannot be used; `status` is 'failed' or 'skipped' (an opt-out), `reason` says why."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class _Retryable(Exception):
    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.wait = reason, wait


_Reply = tuple[int, http.client.HTTPMessage, bytes]  # status, headers, body


@dataclass(frozen=True)
class Fetched:
    data: bytes
    content_type: str
    final_url: str
    attempts: int


class _DomainGate:
    """Concurrency slots and a minimum interval between request starts, for one domain."""

    def __init__(self, concurrency: int, interval: float) -> None:
        self.slots = threading.BoundedSemaphore(max(1, concurrency))
        self.interval = interval
        self.next_start = 0.0
        self.lock = threading.Lock()

    def pause_until(self, t: float) -> None:
        with self.lock:
            self.next_start = max(self.next_start, t)

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self.slots:
            with self.lock:
                start = max(time.monotonic(), self.next_start)
                self.next_start = start + self.interval
            time.sleep(max(0.0, start - time.monotonic()))
            yield


class PoliteClient:
    """Thread-safe; keeps one keep-alive connection per (thread, origin)."""

    def __init__(self, config: HttpConfig) -> None:
        self.config = config
        self.user_agent = user_agent(config.contact)
        self._connect = guarded_connect(config.allow_private_addresses)
        self._local = threading.local()
        self._gates: dict[str, _DomainGate] = {}
        self._gates_lock = threading.Lock()
        self.robots = RobotsCache(self._fetch_robots, AGENT)

    # ---- public -----------------------------------------------------------
    def fetch(self, url: str) -> Fetched:
        """GET an image, following redirects; raises FetchFailure."""
        attempts = 0
        for _ in range(self.config.max_redirects + 1):
            _check_url(url)
            origin = _origin(url)
            if self.config.respect_robots:
                reason = self.robots.check(origin, url)
                if reason:
                    raise FetchFailure("skipped", reason)
                delay = min(self.robots.crawl_delay(origin), self.config.max_backoff)
                gate = self._gate(origin)
                gate.interval = max(gate.interval, delay)
            status, headers, body, tries = self._with_retries(url, self._image_attempt)
            attempts += tries
            if status in REDIRECTS:
                url = urljoin(url, headers.get("Location", ""))
                continue
            return Fetched(body, headers.get("Content-Type", ""), redact_credentials(url), attempts)
        raise FetchFailure("failed", f"too-many-redirects: more than {self.config.max_redirects}")

    # ---- attempts and retries --------------------------------------------
    def _with_retries(self, url: str, attempt: Callable[[str], _Reply]
                      ) -> tuple[int, http.client.HTTPMessage, bytes, int]:
        """Run `attempt` with retries; returns its (status, headers, body) and the number of attempts."""
        cfg = self.config
        for n in range(cfg.retries + 1):
            try:
                return (*attempt(url), n + 1)
            except _Retryable as e:
                if n == cfg.retries:
                    raise FetchFailure("failed", e.reason) from None
                if e.wait is None:
                    # Exponential backoff with +-50% jitter, so retries from many threads spread out.
                    time.sleep(min(cfg.max_backoff, cfg.backoff * 2 ** n * random.uniform(0.5, 1.5)))
                elif e.wait > cfg.max_backoff:
                    raise FetchFailure("failed", f"{e.reason}: asked to wait {e.wait:.0f} s > "
                                                 f"{cfg.max_backoff:.0f} s") from None
                else:  # 429 Retry-After: the whole domain backs off, not just this request
                    self._gate(_origin(url)).pause_until(time.monotonic() + e.wait)
        raise AssertionError("unreachable")

    def _image_attempt(self, url: str) -> _Reply:
        with self._response(url) as resp:
            status, headers = resp.status, resp.headers
            if status in REDIRECTS:
                return status, headers, b""
            if status == 429:
                raise _Retryable("http-429", _retry_after(headers.get("Retry-After"), self.config.backoff))
            if status >= 500:
                raise _Retryable(f"http-{status}")
            if status != 200:
                raise FetchFailure("failed", f"http-{status}")
            opt_out = x_robots_opt_out(headers.get_all("X-Robots-Tag") or [], AGENT)
            if opt_out:
                raise FetchFailure("skipped", f"x-robots-tag: {opt_out}")
            ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype and not ctype.startswith("image/") and ctype not in ALLOWED_NON_IMAGE_TYPES:
                raise FetchFailure("failed", f"bad-content-type: {ctype}")
            return status, headers, self._read_capped(resp)

    def _read_capped(self, resp: http.client.HTTPResponse) -> bytes:
        cap = self.config.max_bytes
        length = resp.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        if expected is not None and expected > cap:
            raise FetchFailure("failed", f"too-large: content-length {expected} > {cap}")
        chunks, total = [], 0
        try:
            while chunk := resp.read(min(1 << 20, cap + 1 - total)):
                chunks.append(chunk)
                total += len(chunk)
                if total > cap:
                    raise FetchFailure("failed", f"too-large: body > {cap} bytes")
        except http.client.IncompleteRead as e:
            raise _Retryable(f"truncated-body: got {total + len(e.partial)} of {expected} bytes") from None
        if expected is not None and total < expected:
            raise _Retryable(f"truncated-body: got {total} of {expected} bytes")
        return b"".join(chunks)

    @contextmanager
    def _response(self, url: str) -> Iterator[http.client.HTTPResponse]:
        """One request on a (reused) connection; the connection is dropped unless fully read."""
        parts, host, port = _check_url(url)
        origin = _origin(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # Catalog URLs may hold raw spaces; percent-encoding them (and CR/LF) keeps the request line valid.
        path = _UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", path)
        with self._gate(origin).slot():
            conn = self._connection(parts.scheme, host, port)
            try:
                resp = self._send(conn, path)
            except BlockedAddress as e:
                self._drop(conn)
                raise FetchFailure("failed", str(e)) from None
            except TimeoutError:
                self._drop(conn)
                raise _Retryable("timeout") from None
            except (OSError, http.client.HTTPException) as e:
                self._drop(conn)
                raise _Retryable(f"connection-error: {type(e).__name__}") from None
            clean = False
            try:
                yield resp
                clean = resp.isclosed()  # fully read: the connection can serve the next request
            except TimeoutError:
                raise _Retryable("timeout") from None
            except (OSError, http.client.HTTPException) as e:
                raise _Retryable(f"connection-error: {type(e).__name__}") from None
            finally:
                if not clean:
                    self._drop(conn)

    def _send(self, conn: http.client.HTTPConnection, path: str) -> http.client.HTTPResponse:
        headers = {"User-Agent": self.user_agent, "Accept": "image/*,*/*;q=0.5", "Accept-Encoding": "identity"}
        reused = conn.sock is not None
        try:
            conn.request("GET", path, headers=headers)
            return conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            # The server closed an idle keep-alive connection: not a failed attempt, reconnect once.
            conn.close()
            conn.request("GET", path, headers=headers)
            return conn.getresponse()

    def _robots_attempt(self, url: str) -> _Reply:
        with self._response(url) as resp:
            if resp.status == 429 or resp.status >= 500:
                raise _Retryable(f"http-{resp.status}")
            return resp.status, resp.headers, resp.read(ROBOTS_MAX_BYTES)

    def _fetch_robots(self, url: str) -> tuple[int, bytes]:
        """GET robots.txt, redirects followed (RFC 9309 §2.3.1.2); raises RobotsUnavailable."""
        for _ in range(self.config.max_redirects + 1):
            try:
                status, headers, body, _ = self._with_retries(url, self._robots_attempt)
            except FetchFailure as e:
                if "-address: " in e.reason:
                    raise  # a refused destination is the image's failure, not an opt-out
                raise RobotsUnavailable(e.reason) from None
            if status in REDIRECTS and headers.get("Location"):
                url = urljoin(url, headers["Location"])
                continue
            return status, body
        raise RobotsUnavailable("too-many-redirects")

    # ---- per-thread connections and per-domain gates ---------------------
    def _connection(self, scheme: str, host: str, port: int) -> http.client.HTTPConnection:
        conns: dict = self._local.__dict__.setdefault("conns", {})
        key = (scheme, host, port)
        conn = conns.get(key)
        if conn is None:
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            # An explicit port: given `::1` alone, http.client would read the last `:1` as the port.
            conn = cls(host, port, timeout=self.config.timeout)
            conn._create_connection = self._connect  # type: ignore[attr-defined]  # every (re)connect goes through the address check
            conns[key] = conn
        return conn

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        conns: dict = self._local.__dict__.setdefault("conns", {})
        for key, value in list(conns.items()):
            if value is conn:
                del conns[key]

    def _gate(self, origin: str) -> _DomainGate:
        with self._gates_lock:
            gate = self._gates.get(origin)
            if gate is None:
                interval = 1.0 / self.config.domain_rps if self.config.domain_rps > 0 else 0.0
                gate = self._gates[origin] = _DomainGate(self.config.domain_concurrency, interval)
        return gate

    def close(self) -> None:
        for conn in self._local.__dict__.get("conns", {}).values():
            conn.close()


def _check_url(url: str) -> tuple[SplitResult, str, int]:
    """The URL's parts, ASCII host and port, or FetchFailure('failed', 'bad-url: ...') naming what is wrong."""
    shown = redact_credentials(url)[:200]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:  # "Port out of range 0-65535", "Invalid IPv6 URL", a non-numeric port
        raise FetchFailure("failed", f"bad-url: {e}: {shown}") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise FetchFailure("failed", f"bad-url: {shown}")
    if _UNSAFE.search(parts.hostname):
        raise FetchFailure("failed", f"bad-url: whitespace or control characters in the host: {shown!r}")
    if port == 0:
        raise FetchFailure("failed", f"bad-url: port 0: {shown}")
    try:
        host = parts.hostname if ":" in parts.hostname else parts.hostname.encode("idna").decode("ascii")
    except UnicodeError as e:
        raise FetchFailure("failed", f"bad-url: host is not a valid domain name ({e}): {shown}") from None
    return parts, host, port or DEFAULT_PORTS[parts.scheme]


def _origin(url: str) -> str:
    """scheme://host[:port], without credentials (robots.txt and rate limits are per origin)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2].lower()}"


def _retry_after(value: str | None, default: float) -> float:
    """Retry-After as seconds (delta-seconds or an HTTP date)."""
    if not value:
        return default
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return max(0.0, when.timestamp() - time.time())
