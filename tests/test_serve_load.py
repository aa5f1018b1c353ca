"""`cai-kit serve` under load and under `kill -9`: no rating lost, none duplicated.

The served model is the scripted provider (`fault_server`) through --api-base, so the load is
on serve and its feedback store, not on a model. Loops are bounded (32 x 20 requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from pathlib import Path

import aiohttp

from tests.fixtures.fault_server import FaultServer
from tests.fixtures.processes import kill_9_midway
from tests.fixtures.serve_server import ServeHandle, serve_process


async def _client(session: aiohttp.ClientSession, url: str, who: int, n: int,
                  acked: dict[str, int]) -> None:  # fmt: skip
    """n turns of: ask, then rate the reply; a rating counts once the server acknowledged it."""
    for i in range(n):
        body = {"messages": [{"role": "user", "content": f"client {who} question {i}"}]}
        async with session.post(url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200, await r.text()
            cid = (await r.json())["id"]
        rating = 1 if (who + i) % 3 else -1
        async with session.post(
            url + "/v1/feedback", json={"completion_id": cid, "rating": rating}
        ) as r:
            assert r.status == 200, await r.text()
        acked[cid] = rating


def _ratings(db: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT completion_id, rating FROM ratings").fetchall()


async def test_32_clients_x_20_requests_lose_and_duplicate_no_rating(
    serve_upstream: ServeHandle, fault_server: FaultServer
) -> None:
    acked: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(
            *(_client(session, serve_upstream.url, w, 20, acked) for w in range(32))
        )
    rows = _ratings(serve_upstream.db)
    assert len(acked) == 640 and fault_server.paid == 640
    assert len(rows) == 640 and dict(rows) == acked
    with sqlite3.connect(serve_upstream.db) as con:
        assert con.execute("SELECT COUNT(*) FROM completions").fetchone() == (640,)
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_kill_9_during_writes_keeps_every_acknowledged_rating(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    db = tmp_path / "feedback.db"
    args = ("openai/upstream", "--api-base", fault_server.base_url, "--feedback-db", str(db))
    proc, url = serve_process(*args)
    acked: dict[str, int] = {}

    async def until_killed(who: int) -> None:
        # The server dies under us: whatever was not acknowledged may be lost.
        with contextlib.suppress(aiohttp.ClientError, AssertionError):
            await _client(session, url, who, 50, acked)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        # kill -9 after 60 ratings, mid-stream: 16 clients are still asking and rating
        await kill_9_midway(proc, [until_killed(w) for w in range(16)], lambda: len(acked) >= 60)
    assert proc.returncode == -signal.SIGKILL and 60 <= len(acked) < 16 * 50

    proc2, url2 = serve_process(*args)  # the database opens again after the crash
    try:
        stored = dict(_ratings(db))
        assert {cid: stored.get(cid) for cid in acked} == acked
        some_id = next(iter(acked))  # completions survived too: an old id is still rateable
        async with (
            aiohttp.ClientSession() as s,
            s.post(url2 + "/v1/feedback", json={"completion_id": some_id, "rating": -1}) as r,
        ):
            assert r.status == 200, await r.text()
        with sqlite3.connect(db) as con:
            assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        proc2.send_signal(signal.SIGTERM)
        out, _ = proc2.communicate(timeout=30)
    assert proc2.returncode == 0 and "Stopped." in out
