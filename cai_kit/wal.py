"""The one way cai-kit opens a SQLite file: the call cache, `serve`'s feedback store, `review`'s
labels and its index.

    db = connect_wal(Path("feedback.db"), schema=SCHEMA)   # callers hold a lock around each write
    db = connect_wal(cache_dir / "calls.sqlite", synchronous="NORMAL", schema=SCHEMA)
    db = connect_wal(run_dir / "review_index.sqlite", synchronous="OFF", setup=_schema)

WAL, so readers never wait for a writer. `synchronous=FULL` (the stores): a write that was
acknowledged survives `kill -9` or a power cut; `NORMAL` (the call cache): it survives `kill -9`;
`OFF` for a cache rebuilt from its sources when torn (the review index).

Opening waits for other writers. SQLite answers "database is locked" at once, without its busy
timeout, when a connection inside a read transaction must write while another connection holds
the write lock: turning a new file to WAL and creating its tables are such steps, and twelve
engines opening one fresh cache side by side (or a second process) meet it. So the set-up runs
again, after a short sleep, until it succeeds or `wait_s` has passed.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

# Connections of this process open one at a time: they never race each other's set-up.
_OPENING = threading.Lock()


def _busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def connect_wal(
    path: Path,
    synchronous: Literal["FULL", "NORMAL", "OFF"] = "FULL",
    *,
    schema: str = "",
    setup: Callable[[sqlite3.Connection], None] | None = None,
    wait_s: float = 30.0,
) -> sqlite3.Connection:
    """A connection for any thread (callers lock), autocommit, in WAL mode, with `schema` (a SQL
    script) and then `setup` applied; later statements wait up to `wait_s` for another writer.
    Raises `sqlite3.DatabaseError` for a file that is not a database, and
    `sqlite3.OperationalError` when another writer held the file for all of `wait_s`."""
    deadline = time.monotonic() + wait_s
    pause = 0.005
    with _OPENING:
        while True:
            db = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, timeout=wait_s
            )
            try:
                if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    db.execute("PRAGMA journal_mode=WAL")  # raises on a file that is not a database
                db.execute(f"PRAGMA synchronous={synchronous}")
                if schema:
                    db.executescript(schema)
                if setup is not None:
                    setup(db)
                return db
            except sqlite3.OperationalError as exc:
                db.close()
                if not _busy(exc) or time.monotonic() + pause > deadline:
                    raise
            except BaseException:
                db.close()
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.25)
