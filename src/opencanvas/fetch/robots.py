"""Opt-outs: robots.txt (RFC 9309) and the X-Robots-Tag response header.

Images in an open catalog are still hosted by people who may not want
crawlers or AI training to touch them. Both signals are honoured by default and
the skipped row names which one applied.
"""

from __future__ import annotations

import threading
import urllib.robotparser
from collections.abc import Callable, Iterable

# X-Robots-Tag values that opt an image out of training or indexing ("none" = noindex, nofollow).
OPT_OUT_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex", "none")
ROBOTS_MAX_BYTES = 512 * 1024  # RFC 9309 §2.5: parse at least the first 500 KiB


def x_robots_opt_out(values: Iterable[str], agent: str) -> str | None:
    """The first opt-out directive addressed to everyone or to `agent`, else None.

    A value is a comma-separated list; a directive may be scoped to a crawler
    ("googlebot: noindex"), which we only obey when the scope is our agent.
    """
    agent = agent.lower()
    for value in values:
        scope = None
        for part in value.split(","):
            token = part.strip().lower()
            if ":" in token:
                maybe_scope, _, rest = token.partition(":")
                if maybe_scope.strip() not in ("unavailable_after", "max-snippet", "max-image-preview",
                                                "max-video-preview"):
                    scope, token = maybe_scope.strip(), rest.strip()
            if scope not in (None, agent):
                continue
            if token in OPT_OUT_DIRECTIVES:
                return token
    return None


class RobotsUnavailable(Exception):
    """robots.txt could not be read (network error, 5xx after retries)."""


# fetch_robots(url) -> (HTTP status, body); raises RobotsUnavailable.
RobotsFetcher = Callable[[str], tuple[int, bytes]]


class RobotsCache:
    """robots.txt per origin (scheme://host:port), fetched once per process and shared by threads."""

    def __init__(self, fetch_robots: RobotsFetcher, agent: str) -> None:
        self._fetch = fetch_robots
        self._agent = agent
        self._rules: dict[str, urllib.robotparser.RobotFileParser | str] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def check(self, origin: str, url: str) -> str | None:
        """None when `url` may be fetched, else the skip reason."""
        rules = self._rules_for(origin)
        if isinstance(rules, str):
            return rules
        if not rules.can_fetch(self._agent, url):
            return f"robots-txt: disallowed for {self._agent}"
        return None

    def crawl_delay(self, origin: str) -> float:
        rules = self._rules_for(origin)
        if isinstance(rules, str):
            return 0.0
        delay = rules.crawl_delay(self._agent)
        return float(delay) if delay else 0.0

    def _rules_for(self, origin: str) -> urllib.robotparser.RobotFileParser | str:
        if origin in self._rules:
            return self._rules[origin]
        with self._guard:
            lock = self._locks.setdefault(origin, threading.Lock())
        with lock:  # one fetch per origin, other threads wait for it
            if origin not in self._rules:
                self._rules[origin] = self._load(origin)
        return self._rules[origin]

    def _load(self, origin: str) -> urllib.robotparser.RobotFileParser | str:
        try:
            status, body = self._fetch(origin + "/robots.txt")
        except RobotsUnavailable as e:
            # RFC 9309 §2.3.1.4: an unreachable robots.txt means complete disallow.
            return f"robots-txt: unreachable ({e})"
        parser = urllib.robotparser.RobotFileParser(origin + "/robots.txt")
        if status == 200:
            parser.parse(body[:ROBOTS_MAX_BYTES].decode("utf-8", errors="replace").splitlines())
        elif 400 <= status < 500:
            parser.allow_all = True  # type: ignore[attr-defined]  # RFC 9309 §2.3.1.3: "unavailable" means no rules
        else:
            return f"robots-txt: unreachable (HTTP {status})"
        return parser
