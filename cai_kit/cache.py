"""The call cache: identical model calls are never paid twice, within a run or across runs.

Content-addressed: key = sha256(backend identity, messages, sampling params, sample index).
Backend identities never contain keys, so neither does the cache.

Durability: inside a running event loop (every job), answered calls are committed in batches,
one SQLite transaction per `commit_every` entries or per `commit_interval_s` seconds, whichever
comes first (a timer commits a batch that stops growing), and on `close()`. So a run killed
with kill -9 pays again at most the calls in flight plus those answered in the last
`commit_interval_s` (0.25 s) seconds. Outside a loop (`put` from plain code) every entry is
committed at once. Pending entries are served by `get` like committed ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from cai_kit.llm.base import Completion


def cache_key(
    identity: dict[str, Any],
    messages: list[dict[str, str]],
    params: dict[str, Any],
    sample_index: int,
) -> str:
    blob = json.dumps(
        [identity, messages, params, sample_index],
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class CallCache:
    def __init__(
        self, path: Path, commit_every: int = 256, commit_interval_s: float = 0.25
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.commit_every = commit_every
        self.commit_interval_s = commit_interval_s
        self._lock = threading.Lock()
        self._pending: dict[str, str] = {}  # answered, not committed yet
        self._oldest = 0.0  # when the oldest pending entry was put
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, completion TEXT NOT NULL)"
        )

    def get(self, key: str) -> Completion | None:
        with self._lock:
            blob = self._pending.get(key)
            if blob is None:
                row = self._db.execute(
                    "SELECT completion FROM calls WHERE key = ?", (key,)
                ).fetchone()
                blob = None if row is None else row[0]
        if blob is None:
            return None
        c = Completion.from_dict(json.loads(blob))
        c.cached = True
        return c

    def put(self, key: str, completion: Completion) -> None:
        blob = json.dumps(completion.to_dict(), ensure_ascii=False)
        with self._lock:
            first = not self._pending
            self._pending[key] = blob
            if first:
                self._oldest = time.monotonic()
            full = len(self._pending) >= self.commit_every
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # plain code: commit at once
            self.commit()
            return
        if full or time.monotonic() - self._oldest >= self.commit_interval_s:
            self.commit()
        elif first:  # a batch that stops growing is committed by the timer
            loop.call_later(self.commit_interval_s, self.commit)

    def commit(self) -> None:
        """Write the pending entries in one transaction."""
        with self._lock:
            if not self._pending or self._db is None:
                return
            rows = list(self._pending.items())
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO calls (key, completion) VALUES (?, ?)", rows
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._pending.clear()

    def put_many(self, items: list[tuple[str, Completion]]) -> None:
        """Many answers in one transaction (a Batch API job's results)."""
        rows = [(k, json.dumps(c.to_dict(), ensure_ascii=False)) for k, c in items]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO calls (key, completion) VALUES (?, ?)", rows
                )
            finally:
                self._db.execute("COMMIT")

    def delete(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM calls WHERE key = ?", (key,))

    def __len__(self) -> int:
        self.commit()
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def close(self) -> None:
        self.commit()
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None  # type: ignore[assignment]
