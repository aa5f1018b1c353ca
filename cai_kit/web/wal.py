"""The SQLite connection both apps write through: `serve`'s feedback store and `review`'s labels.

    db = connect_wal(Path("feedback.db"))   # callers hold a lock around each write

WAL, so the page's readers never wait for a writer; `synchronous=FULL`, so a write that was
acknowledged survives `kill -9` or a power cut.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect_wal(path: Path) -> sqlite3.Connection:
    """A connection for any thread (callers lock), autocommit, WAL with a full fsync per commit
    (an acknowledged write survives kill -9), waiting up to 10 s for another writer; as
    `serve`'s feedback store and `review`'s labels open their files."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=10000")
    return db
