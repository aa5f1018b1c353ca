"""The feedback store: every served completion and every rating, in one SQLite file (WAL).

    store = FeedbackStore(Path("feedback.db"))
    cid = store.add_completion(messages, text, model="local", identity={...}, params={...})
    store.rate(cid, rating=1, comment="clear answer")   # -> True; False for an unknown id
    store.rated()                                       # rated completions, oldest first

Durability: WAL journal with `synchronous=FULL`, one committed transaction per write, and
the server acknowledges a rating only after `rate()` returns, so a `kill -9` (or a power
cut) never loses an acknowledged rating. One rating per completion: rating it again (👍 then
👎, or a client retrying the same POST) replaces the earlier rating, it never duplicates.
Writes from many threads go through one connection under a lock (SQLite has one writer).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai_kit.errors import DataError
from cai_kit.records import stable_hash
from cai_kit.wal import connect_wal

SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    id            TEXT PRIMARY KEY,     -- the `id` of the chat completion sent to the client
    created       REAL NOT NULL,        -- unix time
    model         TEXT NOT NULL,        -- the model string served (e.g. local, hf:runs/dpo)
    identity      TEXT NOT NULL,        -- JSON: the backend's identity (weights fingerprint)
    messages      TEXT NOT NULL,        -- JSON: the conversation sent, OpenAI shape
    turn          TEXT NOT NULL,        -- hash of messages: regenerations share it
    text          TEXT NOT NULL,        -- the reply
    params        TEXT NOT NULL,        -- JSON: generation parameters
    usage         TEXT,                 -- JSON: prompt/completion tokens, when known
    finish_reason TEXT,
    regenerate_of TEXT,                 -- the completion this one regenerates (page), if any
    source        TEXT NOT NULL         -- api | page
);
CREATE INDEX IF NOT EXISTS completions_turn ON completions(turn);
CREATE TABLE IF NOT EXISTS ratings (
    completion_id TEXT PRIMARY KEY REFERENCES completions(id),
    rating        INTEGER NOT NULL CHECK (rating IN (1, -1)),
    comment       TEXT,
    created       REAL NOT NULL,
    updated       REAL NOT NULL
);
"""


@dataclass
class RatedCompletion:
    id: str
    model: str
    messages: list[dict[str, str]]
    turn: str
    text: str
    rating: int
    comment: str | None
    created: float


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def turn_key(messages: list[dict[str, str]]) -> str:
    """Two completions answer the same turn when they were given the same conversation."""
    return stable_hash("turn", [{"role": m["role"], "content": m["content"]} for m in messages])


def is_feedback_db(path: Path) -> bool:
    """True for an SQLite file (what `cai-kit serve --feedback-db` writes)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


class FeedbackStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = connect_wal(self.path, schema=SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{self.path} is not a cai-kit feedback database ({exc}).") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add_completion(
        self,
        messages: list[dict[str, str]],
        text: str,
        *,
        model: str,
        identity: dict[str, Any],
        params: dict[str, Any],
        usage: dict[str, int] | None = None,
        finish_reason: str | None = None,
        regenerate_of: str | None = None,
        source: str = "api",
        completion_id: str | None = None,
    ) -> str:
        cid = completion_id or new_completion_id()
        row = (
            cid,
            time.time(),
            model,
            json.dumps(identity, sort_keys=True, default=str),
            json.dumps(messages, ensure_ascii=False),
            turn_key(messages),
            text,
            json.dumps(params, sort_keys=True),
            json.dumps(usage) if usage else None,
            finish_reason,
            regenerate_of,
            source,
        )
        with self._lock:
            self._db.execute("INSERT INTO completions VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", row)
        return cid

    def has_completion(self, completion_id: str) -> bool:
        with self._lock:
            cur = self._db.execute("SELECT 1 FROM completions WHERE id = ?", (completion_id,))
            return cur.fetchone() is not None

    def rate(self, completion_id: str, rating: int, comment: str | None = None) -> bool:
        """Record (or replace) the rating of a served completion; False if the id is unknown."""
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO ratings (completion_id, rating, comment, created, updated) "
                "SELECT id, ?, ?, ?, ? FROM completions WHERE id = ? "
                "ON CONFLICT(completion_id) DO UPDATE SET rating = excluded.rating, "
                "comment = excluded.comment, updated = excluded.updated",
                (rating, comment, now, now, completion_id),
            )
            return cur.rowcount == 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM completions").fetchone()
            rows = self._db.execute("SELECT rating, COUNT(*) FROM ratings GROUP BY rating")
            by = dict(rows.fetchall())
        return {"completions": n, "up": by.get(1, 0), "down": by.get(-1, 0)}

    def rated(self) -> list[RatedCompletion]:
        """Every rated completion with its rating, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.id, c.model, c.messages, c.turn, c.text, r.rating, r.comment, c.created "
                "FROM completions c JOIN ratings r ON r.completion_id = c.id ORDER BY c.created, c.id"
            ).fetchall()
        return [
            RatedCompletion(i, m, json.loads(msgs), t, text, rating, comment, created)
            for i, m, msgs, t, text, rating, comment, created in rows
        ]

    def models(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT model FROM completions ORDER BY model")
            return [m for (m,) in rows.fetchall()]
