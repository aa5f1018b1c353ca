"""The engine's fast paths keep their promises: batched cache commits are durable within
their interval, pending entries are served, and the hand-written serialisers equal asdict."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import asdict
from pathlib import Path

from cai_kit.cache import CallCache
from cai_kit.llm.base import Completion, GenParams, TokenLogprob, Usage


def _committed(path: Path) -> int:
    with sqlite3.connect(path) as db:  # another connection: what a kill -9 would leave
        return int(db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])


def test_cache_entries_put_in_a_job_are_committed_within_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"

    async def go() -> tuple[int, str | None]:
        cache = CallCache(path, commit_every=1000, commit_interval_s=0.05)
        cache.put("k1", Completion("one"))
        served = cache.get("k1")  # pending, not committed yet: served all the same
        await asyncio.sleep(0.4)  # no further call arrives
        n = _committed(path)
        cache.close()
        return n, served.text if served else None

    assert asyncio.run(go()) == (1, "one")


def test_a_full_batch_of_cache_entries_is_committed_at_once(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"

    async def go() -> tuple[int, int]:
        cache = CallCache(path, commit_every=100, commit_interval_s=3600)
        for i in range(99):
            cache.put(f"b{i}", Completion(str(i)))
        before = _committed(path)
        cache.put("b99", Completion("99"))
        after = _committed(path)
        cache.close()
        return before, after

    assert asyncio.run(go()) == (0, 100)


def test_cache_put_outside_an_event_loop_commits_at_once(tmp_path: Path) -> None:
    cache = CallCache(tmp_path / "c.sqlite")
    cache.put("k", Completion("x"))
    assert _committed(tmp_path / "c.sqlite") == 1
    cache.close()


def test_hand_written_to_dict_equals_dataclasses_asdict() -> None:
    p = GenParams(temperature=0.2, seed=7, stop=("\n",), top_logprobs=3)
    expected = asdict(p)
    expected["stop"] = ["\n"]
    assert p.to_dict() == expected
    c = Completion(
        "t", [TokenLogprob("a", -0.5, {"a": -0.5, "b": -2.0})], Usage(3, 4), 0.01, "m", "stop", True
    )
    d = asdict(c)
    d.pop("cached")
    assert c.to_dict() == d
    assert Completion.from_dict(c.to_dict()).to_dict() == d
