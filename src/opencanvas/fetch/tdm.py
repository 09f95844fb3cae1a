"""AI-training opt-outs beyond robots.txt: the W3C TDM Reservation Protocol and ai.txt.

- TDMRep (https://www.w3.org/community/reports/tdmrep/CG-FINAL-tdmrep-20240510/): a response header
  `tdm-reservation: 1`, or a rule in `/.well-known/tdmrep.json` on the image's origin whose
  `location` pattern matches the path and whose `tdm-reservation` is 1.
- ai.txt (Spawning): robots.txt-style `User-Agent` groups whose `Disallow`/`Allow` patterns
  (`*` any text, `$` the end; `*.jpg` matches by extension) apply to AI training; the longest
  matching pattern wins, Allow on a tie.

Both files are read once per origin (like robots.txt, through `robots.OriginCache`). A file that is
missing, unreadable or not valid is no reservation: unlike robots.txt, these signals are optional
and only ever add skips. Each skip's reason names its signal: `tdm-reservation`, `tdmrep-json`, `ai-txt`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from opencanvas.fetch.robots import OriginCache, RobotsFetcher, RobotsUnavailable

MAX_BYTES = 512 * 1024


def header_reservation(value: str | None) -> str | None:
    """The skip reason for a `tdm-reservation` response header of 1, else None."""
    return "tdm-reservation: header 1" if value is not None and value.strip() == "1" else None


def _pattern(pattern: str) -> re.Pattern[str]:
    """robots-style path pattern -> regex: `*` any text, a final `$` anchors; a pattern without `/` matches any
    final path segment ("*.jpg")."""
    anchored = pattern.endswith("$")
    body = pattern[:-1] if anchored else pattern
    rx = ".*".join(re.escape(part) for part in body.split("*"))
    if not body.startswith("/") and not body.startswith("*"):
        rx = "(?:.*/)?" + rx
    return re.compile(rx + ("$" if anchored else ""))


@dataclass(frozen=True)
class TdmRules:
    rules: tuple[tuple[re.Pattern[str], str, int], ...]  # (location regex, location text, tdm-reservation)

    def reason(self, path: str) -> str | None:
        for rx, location, reserved in self.rules:  # the first matching rule applies (TDMRep §4.1)
            if rx.match(path):
                return f"tdmrep-json: reserved for {location}" if reserved == 1 else None
        return None


def parse_tdmrep(body: bytes) -> TdmRules:
    try:
        doc = json.loads(body[:MAX_BYTES])
    except (UnicodeDecodeError, ValueError, RecursionError):
        return TdmRules(())
    rules = []
    for rule in doc if isinstance(doc, list) else []:
        if isinstance(rule, dict) and isinstance(rule.get("location"), str):
            location = rule["location"]
            reserved = 1 if str(rule.get("tdm-reservation")).strip() == "1" else 0
            rules.append((_pattern(location if location.startswith("/") or "*" in location else "/" + location),
                          location, reserved))
    return TdmRules(tuple(rules))


@dataclass(frozen=True)
class AiTxt:
    rules: tuple[tuple[re.Pattern[str], str, bool], ...]  # (pattern regex, pattern text, allowed)

    def reason(self, path: str) -> str | None:
        best: tuple[int, bool, str] | None = None
        for rx, text, allowed in self.rules:
            if rx.match(path) and (best is None or (len(text), allowed) > best[:2]):
                best = (len(text), allowed, text)
        return f"ai-txt: disallowed by {best[2]!r}" if best and not best[1] else None


def parse_ai_txt(body: bytes, agent: str) -> AiTxt:
    """The rules of the group for `agent`, or of `*` when none names it."""
    groups: dict[str, list[tuple[str, bool]]] = {}
    agents: list[str] = []
    in_rules = False
    for raw in body[:MAX_BYTES].decode("utf-8", "replace").splitlines():
        line = raw.split("#", 1)[0].strip()
        field, _, value = line.partition(":")
        field, value = field.strip().lower(), value.strip()
        if field == "user-agent":
            if in_rules:
                agents, in_rules = [], False
            agents.append(value.lower())
            for a in agents:
                groups.setdefault(a, [])
        elif field in ("allow", "disallow") and agents:
            in_rules = True
            if value:
                for a in agents:
                    groups[a].append((value, field == "allow"))
    chosen = groups.get(agent.lower(), groups.get("*", []))
    return AiTxt(tuple((_pattern(p), p, allowed) for p, allowed in chosen))


class OptOutFiles:
    """tdmrep.json and ai.txt per origin, fetched once each and shared by threads."""

    def __init__(self, fetch_file: RobotsFetcher, agent: str) -> None:
        self._fetch, self._agent = fetch_file, agent
        self._tdm: OriginCache[TdmRules] = OriginCache(
            lambda o: parse_tdmrep(self._body(o + "/.well-known/tdmrep.json")))
        self._ai: OriginCache[AiTxt] = OriginCache(lambda o: parse_ai_txt(self._body(o + "/ai.txt"), self._agent))

    def _body(self, url: str) -> bytes:
        try:
            status, body = self._fetch(url)
        except RobotsUnavailable:
            return b""
        return body if status == 200 else b""

    def check(self, origin: str, url: str) -> str | None:
        """None when no file reserves `url`, else the skip reason naming the signal."""
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return self._tdm.get(origin).reason(path) or self._ai.get(origin).reason(path)
