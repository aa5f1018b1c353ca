"""The SQLite connection both apps open their files with: the feedback store, labels, review index.

    db = connect_wal(Path("feedback.db"))   # callers hold a lock around each write
    db = connect_wal(run_dir / "review_index.sqlite", synchronous="OFF")   # a cache

WAL, so the page's readers never wait for a writer; `synchronous=FULL` (the stores), so a
write that was acknowledged survives `kill -9` or a power cut; `OFF` for a cache that is
rebuilt from its sources when torn (the review index).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal


def connect_wal(path: Path, synchronous: Literal["FULL", "OFF"] = "FULL") -> sqlite3.Connection:
    """A connection for any thread (callers lock), autocommit, WAL with a full fsync per commit
    (an acknowledged write survives kill -9) unless `synchronous="OFF"`, waiting up to 10 s for
    another writer; as `serve`'s feedback store, `review`'s labels and its index open their
    files."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")  # raises on a file that is not a database
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA busy_timeout=10000")
    except sqlite3.Error:
        db.close()
        raise
    return db
