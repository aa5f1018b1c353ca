"""Opening a SQLite file another connection is writing: the call cache, the feedback store, the
labels and the review index all open theirs through `cai_kit.wal.connect_wal`.

SQLite answers "database is locked" at once, without waiting on its busy timeout, when a
connection inside a read transaction needs to write while another holds the write lock: turning
a new file to WAL is such a step. Twelve engines opening one fresh call cache side by side hit
it (CI, `test_async_variants_run_side_by_side_under_load`)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from cai_kit.engine.cache import CallCache
from cai_kit.llm.base import Completion


class Writer(threading.Thread):
    """Another connection (another engine, another process) writing to a file still in
    rollback-journal mode, for `seconds`; `join()` says whether its write was kept."""

    def __init__(self, path: Path, seconds: float) -> None:
        super().__init__()
        self.path, self.seconds, self.error = path, seconds, None
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("CREATE TABLE IF NOT EXISTS other (x)")
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("INSERT INTO other VALUES (1)")
        self.start()

    def run(self) -> None:
        time.sleep(self.seconds)
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self.error = exc
        self.db.close()

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        assert self.error is None, f"the other connection's write was lost: {self.error}"
        with sqlite3.connect(self.path) as db:
            assert db.execute("SELECT COUNT(*) FROM other").fetchone() == (1,)


def test_a_call_cache_opens_a_file_another_connection_is_writing(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite"
    writer = Writer(path, 0.3)
    t0 = time.monotonic()
    cache = CallCache(path)  # old code: "database is locked" at once
    waited = time.monotonic() - t0
    writer.join()
    cache.put("k", Completion(text="kept"))
    got = cache.get("k")
    assert got is not None and got.text == "kept"
    assert waited >= 0.2, waited  # it waited for the writer, then opened
    cache.close()


@pytest.mark.parametrize("store", ["feedback", "labels", "index"])
def test_the_web_apps_stores_open_a_file_another_connection_is_writing(
    tmp_path: Path, store: str
) -> None:
    from cai_kit.review.index import INDEX_NAME, RunIndex
    from cai_kit.review.labels import LabelStore
    from cai_kit.serve.store import FeedbackStore

    path = (
        tmp_path
        / {"feedback": "feedback.db", "labels": "labels.sqlite", "index": INDEX_NAME}[store]
    )
    writer = Writer(path, 0.3)
    if store == "feedback":
        opened = FeedbackStore(path)
    elif store == "labels":
        opened = LabelStore(path)
    else:
        (tmp_path / "prefs.jsonl").write_text("")
        opened = RunIndex.open(tmp_path)
    writer.join()  # old code, index: it took the lock for a torn file and deleted it
    assert opened.where == str(path) if store == "index" else opened.path == path
    opened.close()


def test_many_threads_open_one_fresh_cache_at_once(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite"
    start = threading.Barrier(12)
    errors: list[BaseException] = []

    def open_and_write(i: int) -> None:
        start.wait()
        try:
            cache = CallCache(path)
            cache.put(f"k{i}", Completion(text=str(i)))
            cache.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_and_write, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(CallCache(path)) == 12
