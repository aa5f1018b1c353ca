"""The engine's fast paths keep their promises: every answered call is committed before its
caller sees it (kill -9 re-pays only calls in flight), and the hand-written serialisers equal
asdict."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import asdict
from pathlib import Path

from cai_kit.engine.cache import CallCache
from cai_kit.llm.base import Completion, GenParams, TokenLogprob, Usage


def _committed(path: Path) -> int:
    with sqlite3.connect(path) as db:  # another connection: what a kill -9 would leave
        return int(db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])


def test_an_answered_call_is_committed_before_its_caller_sees_it(tmp_path: Path) -> None:
    """Inside a running job (an event loop), as outside one: a kill -9 right after `put`
    returns must find the answer on disk, so only calls in flight can be paid twice."""
    path = tmp_path / "c.sqlite"

    async def go() -> tuple[int, str | None]:
        cache = CallCache(path)
        cache.put("k1", Completion("one"))
        n = _committed(path)  # no await in between: no timer could have run
        served = cache.get("k1")
        cache.close()
        return n, served.text if served else None

    assert asyncio.run(go()) == (1, "one")


def test_cache_put_outside_an_event_loop_commits_at_once(tmp_path: Path) -> None:
    cache = CallCache(tmp_path / "c.sqlite")
    cache.put("k", Completion("x"))
    assert _committed(tmp_path / "c.sqlite") == 1
    cache.close()


def test_hand_written_to_dict_equals_dataclasses_asdict() -> None:
    p = GenParams(temperature=0.2, seed=7, stop=("\n",), top_logprobs=3, reasoning_effort="low")
    expected = asdict(p)
    expected["stop"] = ["\n"]
    assert p.to_dict() == expected
    # an unset reasoning effort is left out, so cache keys and record ids made before the field
    # existed still match
    expected = asdict(p.replace(reasoning_effort=None))
    expected["stop"] = ["\n"]
    del expected["reasoning_effort"]
    assert p.replace(reasoning_effort=None).to_dict() == expected
    c = Completion(
        "t", [TokenLogprob("a", -0.5, {"a": -0.5, "b": -2.0})], Usage(3, 4), 0.01, "m", "stop", True
    )
    d = asdict(c)
    d.pop("cached")
    assert c.to_dict() == d
    assert Completion.from_dict(c.to_dict()).to_dict() == d
