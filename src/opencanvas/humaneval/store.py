"""A study's SQLite file: `humaneval/<study>.sqlite` (WAL), its images in `humaneval/<study>/`.

Every vote is its own transaction and is acknowledged only after it commits. Votes are appended, never
updated: a repeat by the same rater on the same pair and question is a new row, and the figures count
only the newest one per (pair, rater, question), so a retried request can never be counted twice.
Rater tokens are stored as SHA-256 hashes; the token itself is shown once, when it is made.

Left and right are decided per (pair, rater) from the study's secret salt, so the same rater always
sees a pair the same way round, and each vote records which image was on which side.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opencanvas.workspace import Workspace

# The paper's questions (CommonCanvas Sec. 6, after Podell et al.): overall preference and prompt following.
QUESTIONS: dict[str, str] = {
    "overall": "Which image is better overall?",
    "prompt": "Which image follows the prompt better?",
}
CHOICES = ("left", "right", "tie")
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
OPAQUE_ID = re.compile(r"^[0-9a-f]{16}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS study (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
  id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, spec TEXT NOT NULL, weights_hash TEXT, provenance TEXT);
CREATE TABLE IF NOT EXISTS prompts (
  id INTEGER PRIMARY KEY, text TEXT NOT NULL, category TEXT, challenge TEXT, seed INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS images (
  id TEXT PRIMARY KEY, prompt_id INTEGER NOT NULL REFERENCES prompts(id), model_id INTEGER NOT NULL
  REFERENCES models(id), path TEXT NOT NULL, meta TEXT NOT NULL, UNIQUE (prompt_id, model_id));
CREATE TABLE IF NOT EXISTS pairs (
  id TEXT PRIMARY KEY, prompt_id INTEGER NOT NULL REFERENCES prompts(id),
  a_image TEXT NOT NULL REFERENCES images(id), b_image TEXT NOT NULL REFERENCES images(id),
  UNIQUE (a_image, b_image));
CREATE TABLE IF NOT EXISTS raters (
  id INTEGER PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE, label TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS votes (
  id INTEGER PRIMARY KEY AUTOINCREMENT, pair_id TEXT NOT NULL REFERENCES pairs(id),
  rater_id INTEGER NOT NULL REFERENCES raters(id), question TEXT NOT NULL, choice TEXT NOT NULL,
  left_image TEXT NOT NULL, right_image TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS votes_by_rater ON votes (rater_id, pair_id, question);
CREATE INDEX IF NOT EXISTS votes_by_pair ON votes (pair_id, rater_id);
CREATE TABLE IF NOT EXISTS answered (
  rater_id INTEGER NOT NULL, pair_id TEXT NOT NULL, questions INTEGER NOT NULL, PRIMARY KEY (rater_id, pair_id))
  WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pair_raters (pair_id TEXT PRIMARY KEY, raters INTEGER NOT NULL) WITHOUT ROWID;
"""


class StudyError(ValueError):
    """A request the study cannot serve (unknown pair, question or choice)."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def check_name(name: str) -> str:
    if not STUDY_NAME.match(name or ""):
        raise StudyError(f"study name {name!r} must be 1-64 letters, digits, '_', '.' or '-' (starting with a "
                         "letter or digit)")
    return name


def study_path(ws: Workspace, name: str) -> Path:
    return ws.root / "humaneval" / f"{check_name(name)}.sqlite"


def study_names(ws: Workspace) -> list[str]:
    return sorted(p.stem for p in (ws.root / "humaneval").glob("*.sqlite") if STUDY_NAME.match(p.stem))


@dataclass(frozen=True)
class Pair:
    id: str
    prompt: str
    category: str | None
    left_image: str
    right_image: str


class Study:
    """One study's database; safe to share between threads (one SQLite connection per thread)."""

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = Path(path), name
        self.images_dir = self.path.with_suffix("") / "images"
        self._local = threading.local()
        self._raters: dict[str, int] = {}
        self.db.executescript(SCHEMA)   # idempotent DDL; executescript manages its own transaction
        with self.write() as db:
            db.execute("INSERT OR IGNORE INTO study VALUES ('salt', ?)", (secrets.token_hex(16),))
            db.execute("INSERT OR IGNORE INTO study VALUES ('created_at', ?)", (now(),))
            db.execute("INSERT OR IGNORE INTO study VALUES ('questions', ?)", (json.dumps(list(QUESTIONS)),))
        self.salt = self.meta("salt")
        self.questions: list[str] = json.loads(self.meta("questions"))

    # ---- connections -------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit is in the WAL file before it returns, so it survives the server
            # being killed (-9); only an operating-system crash could lose the last commits.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    def write(self) -> _Transaction:
        return _Transaction(self.db)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def meta(self, key: str, default: str | None = None) -> str:
        row = self.db.execute("SELECT value FROM study WHERE key = ?", (key,)).fetchone()
        if row is None:
            if default is None:
                raise KeyError(key)
            return default
        return str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.write() as db:
            db.execute("INSERT OR REPLACE INTO study VALUES (?, ?)", (key, value))

    # ---- preparation ---------------------------------------------------------
    def add_model(self, name: str, spec: str, weights_hash: str, provenance: dict[str, Any]) -> int:
        with self.write() as db:
            db.execute("INSERT OR IGNORE INTO models (name, spec, weights_hash, provenance) VALUES (?, ?, ?, ?)",
                       (name, spec, weights_hash, json.dumps(provenance, sort_keys=True, default=str)))
            return int(db.execute("SELECT id FROM models WHERE name = ?", (name,)).fetchone()[0])

    def add_prompt(self, index: int, text: str, category: str | None, challenge: str | None, seed: int) -> None:
        with self.write() as db:
            db.execute("INSERT OR IGNORE INTO prompts VALUES (?, ?, ?, ?, ?)", (index, text, category, challenge, seed))

    def has_image(self, prompt_id: int, model_id: int) -> bool:
        return self.db.execute("SELECT 1 FROM images WHERE prompt_id = ? AND model_id = ?",
                               (prompt_id, model_id)).fetchone() is not None

    def add_image(self, image_id: str, prompt_id: int, model_id: int, rel_path: str, meta: dict[str, Any]) -> str:
        """Record an image already written to `rel_path` (relative to humaneval/)."""
        with self.write() as db:
            db.execute("INSERT INTO images VALUES (?, ?, ?, ?, ?)",
                       (image_id, prompt_id, model_id, rel_path, json.dumps(meta, sort_keys=True, default=str)))
        return image_id

    def make_pairs(self) -> int:
        """One pair per prompt and pair of models (each unordered pair once); returns how many exist."""
        rows = self.db.execute("SELECT id, prompt_id, model_id FROM images ORDER BY prompt_id, model_id").fetchall()
        by_prompt: dict[int, list[sqlite3.Row]] = {}
        for r in rows:
            by_prompt.setdefault(int(r["prompt_id"]), []).append(r)
        with self.write() as db:
            for prompt_id, images in by_prompt.items():
                for i, a in enumerate(images):
                    for b in images[i + 1:]:
                        db.execute("INSERT OR IGNORE INTO pairs VALUES (?, ?, ?, ?)",
                                   (secrets.token_hex(8), prompt_id, a["id"], b["id"]))
        return int(self.db.execute("SELECT COUNT(*) FROM pairs").fetchone()[0])

    # ---- raters ----------------------------------------------------------------
    def add_raters(self, count: int, label: str = "") -> list[str]:
        """`count` new invite tokens (shown once; only their hashes are stored)."""
        tokens = [secrets.token_urlsafe(24) for _ in range(count)]
        with self.write() as db:
            start = int(db.execute("SELECT COUNT(*) FROM raters").fetchone()[0])
            for i, token in enumerate(tokens):
                db.execute("INSERT INTO raters (token_sha256, label, created_at) VALUES (?, ?, ?)",
                           (token_hash(token), label or f"rater-{start + i + 1}", now()))
        return tokens

    def rater_id(self, token: str | None) -> int | None:
        if not token:
            return None
        digest = token_hash(token)
        if digest not in self._raters:
            row = self.db.execute("SELECT id FROM raters WHERE token_sha256 = ?", (digest,)).fetchone()
            if row is None:
                return None
            self._raters[digest] = int(row[0])
        return self._raters[digest]

    def local_rater(self) -> int:
        """The rater `local` (the person at a server bound to 127.0.0.1), the same one across restarts."""
        row = self.db.execute("SELECT id FROM raters WHERE label = 'local' ORDER BY id LIMIT 1").fetchone()
        if row is not None:
            return int(row[0])
        return int(self.rater_id(self.add_raters(1, "local")[0]) or 0)   # its token is never shown

    def rater_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM raters").fetchone()[0])

    # ---- serving -----------------------------------------------------------------
    def swapped(self, pair_id: str, rater_id: int) -> bool:
        """Whether this rater sees image b on the left (a fair coin per pair and rater, fixed by the salt)."""
        return hashlib.sha256(f"{self.salt}|{pair_id}|{rater_id}".encode()).digest()[0] & 1 == 1

    def _pair(self, row: sqlite3.Row, rater_id: int) -> Pair:
        a, b = row["a_image"], row["b_image"]
        left, right = (b, a) if self.swapped(row["id"], rater_id) else (a, b)
        return Pair(row["id"], row["text"], row["category"], left, right)

    def pair_for(self, pair_id: str, rater_id: int) -> Pair:
        row = self.db.execute("SELECT p.id, p.a_image, p.b_image, q.text, q.category FROM pairs p "
                              "JOIN prompts q ON q.id = p.prompt_id WHERE p.id = ?", (pair_id,)).fetchone()
        if row is None:
            raise StudyError(f"no pair {pair_id!r} in study {self.name!r}")
        return self._pair(row, rater_id)

    def next_pair(self, rater_id: int) -> Pair | None:
        """A pair this rater has not answered every question of: one it has started first (a reloaded page
        comes back to it), then fewest raters, then an order of its own per rater (a multiplicative
        permutation of the pairs' row numbers), so raters spread over the pairs."""
        row = self.db.execute(
            "SELECT p.id, p.a_image, p.b_image, q.text, q.category FROM pairs p "
            "JOIN prompts q ON q.id = p.prompt_id LEFT JOIN pair_raters c ON c.pair_id = p.id "
            "LEFT JOIN answered d ON d.rater_id = ? AND d.pair_id = p.id "
            "WHERE COALESCE(d.questions, 0) < ? "
            "ORDER BY d.questions IS NULL, COALESCE(c.raters, 0), (p.rowid * ?) % 2147483647, p.rowid LIMIT 1",
            (rater_id, len(self.questions), 1 + 7919 * (rater_id % 271_000))).fetchone()
        return None if row is None else self._pair(row, rater_id)

    def image_path(self, image_id: str) -> Path | None:
        if not OPAQUE_ID.match(image_id):
            return None
        row = self.db.execute("SELECT path FROM images WHERE id = ?", (image_id,)).fetchone()
        return None if row is None else self.path.parent / row[0]

    def vote(self, rater_id: int, pair_id: str, question: str, choice: str) -> int:
        """Record one vote in its own transaction; returns its id once committed."""
        if question not in self.questions:
            raise StudyError(f"unknown question {question!r}; this study asks {', '.join(self.questions)}")
        if choice not in CHOICES:
            raise StudyError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
        pair = self.pair_for(pair_id, rater_id)
        with self.write() as db:
            first_on_question = db.execute("SELECT 1 FROM votes WHERE rater_id = ? AND pair_id = ? AND question = ? "
                                           "LIMIT 1", (rater_id, pair_id, question)).fetchone() is None
            cur = db.execute("INSERT INTO votes (pair_id, rater_id, question, choice, left_image, right_image, "
                             "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (pair_id, rater_id, question, choice, pair.left_image, pair.right_image, now()))
            if first_on_question:   # the serving counters, kept in the vote's own transaction
                first_on_pair = db.execute("INSERT OR IGNORE INTO answered VALUES (?, ?, 0)",
                                           (rater_id, pair_id)).rowcount == 1
                db.execute("UPDATE answered SET questions = questions + 1 WHERE rater_id = ? AND pair_id = ?",
                           (rater_id, pair_id))
                if first_on_pair:
                    db.execute("INSERT INTO pair_raters VALUES (?, 1) ON CONFLICT (pair_id) DO UPDATE SET "
                               "raters = raters + 1", (pair_id,))
            return int(cur.lastrowid or 0)

    # ---- reading back ----------------------------------------------------------------
    def raw_votes(self) -> list[dict[str, Any]]:
        """Every vote ever cast, with model names resolved and `current` (the newest of its rater/pair/question)."""
        rows = self.db.execute(
            "SELECT v.id, v.pair_id, v.rater_id, r.label AS rater, v.question, v.choice, v.created_at, "
            " v.left_image, v.right_image, ml.name AS left_model, mr.name AS right_model, "
            " q.id AS prompt_id, q.text AS prompt, q.category, "
            " v.id = (SELECT MAX(w.id) FROM votes w WHERE w.pair_id = v.pair_id AND w.rater_id = v.rater_id "
            "         AND w.question = v.question) AS current "
            "FROM votes v JOIN raters r ON r.id = v.rater_id JOIN pairs p ON p.id = v.pair_id "
            "JOIN prompts q ON q.id = p.prompt_id "
            "JOIN images il ON il.id = v.left_image JOIN models ml ON ml.id = il.model_id "
            "JOIN images ir ON ir.id = v.right_image JOIN models mr ON mr.id = ir.model_id "
            "ORDER BY v.id").fetchall()
        return [dict(r) | {"current": bool(r["current"])} for r in rows]

    def models(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT id, name, spec, weights_hash FROM models ORDER BY id")]

    def counts(self) -> dict[str, int]:
        one = self.db.execute
        return {"models": one("SELECT COUNT(*) FROM models").fetchone()[0],
                "prompts": one("SELECT COUNT(*) FROM prompts").fetchone()[0],
                "images": one("SELECT COUNT(*) FROM images").fetchone()[0],
                "pairs": one("SELECT COUNT(*) FROM pairs").fetchone()[0],
                "raters": one("SELECT COUNT(*) FROM raters").fetchone()[0],
                "votes": one("SELECT COUNT(*) FROM votes").fetchone()[0]}


class _Transaction:
    """`with study.write() as db:` runs the block in one IMMEDIATE transaction (committed on success)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")


def open_study(ws: Workspace, name: str, create: bool = False) -> Study:
    """Open study `name`; `create=True` makes it when missing, else a missing study is an error."""
    path = study_path(ws, name)
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"no study {name!r} under {path.parent}: make it with "
                                    f"`opencanvas humaneval prepare --name {name} ...`")
        path.parent.mkdir(parents=True, exist_ok=True)
    return Study(path, name)
