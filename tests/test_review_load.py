"""`cai-kit review` under load and under `kill -9`: 16 reviewers x 50 labels over the HTTP API;
every acknowledged label is in RUN/labels.sqlite, none twice. Loops are bounded (16 x 50)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from pathlib import Path

import aiohttp

from tests.fixtures.processes import kill_9_midway
from tests.fixtures.review_run import make_run, review_process, start_review

LABELS = ("A", "B", "tie", "both-bad")
N_PAIRS = 400


async def _reviewer(
    session: aiohttp.ClientSession, url: str, who: int, n: int, acked: dict[tuple[str, str], str]
) -> None:
    """n labels over overlapping rows; every 10th is sent twice (a double click)."""
    name = f"reviewer-{who}"
    for i in range(n):
        row_id, label = f"pair{(who * 23 + i * 7) % N_PAIRS:04d}", LABELS[(who + i) % 4]
        body = {"reviewer": name, "kind": "pair", "id": row_id, "label": label, "note": f"n{i}"}
        for _ in range(2 if i % 10 == 0 else 1):
            async with session.post(url + "/api/label", json=body) as r:
                assert r.status == 200, await r.text()
            acked[(name, row_id)] = label


def _stored(db: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT reviewer, row_id, label FROM labels").fetchall()


async def test_16_reviewers_x_50_labels_store_each_once(tmp_path: Path) -> None:
    make_run(tmp_path / "run", n_pairs=N_PAIRS, n_revisions=0)
    h = start_review(tmp_path / "run")
    acked: dict[tuple[str, str], str] = {}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await asyncio.gather(*(_reviewer(session, h.url, w, 50, acked) for w in range(16)))
    finally:
        h.stop()
    rows = _stored(tmp_path / "run" / "labels.sqlite")
    assert len(acked) == 16 * 50 and len(rows) == 16 * 50
    assert {(r, i): lab for r, i, lab in rows} == acked


async def test_kill_9_while_labelling_keeps_every_acknowledged_label(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    make_run(run_dir, n_pairs=N_PAIRS, n_revisions=0)
    proc, url = review_process(run_dir)
    acked: dict[tuple[str, str], str] = {}

    async def until_killed(who: int) -> None:
        with contextlib.suppress(aiohttp.ClientError, AssertionError):
            await _reviewer(session, url, who, 50, acked)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        # kill -9 after 100 labels, while 16 reviewers are still labelling
        await kill_9_midway(proc, [until_killed(w) for w in range(16)], lambda: len(acked) >= 100)
    assert proc.returncode == -signal.SIGKILL and 100 <= len(acked) < 16 * 50

    proc2, url2 = review_process(run_dir)  # the labels DB opens again after the crash
    try:
        stored = {(r, i): lab for r, i, lab in _stored(run_dir / "labels.sqlite")}
        assert {k: stored.get(k) for k in acked} == acked  # every acknowledged label is there
        with sqlite3.connect(run_dir / "labels.sqlite") as con:
            assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            dup = "SELECT reviewer, kind, row_id FROM labels GROUP BY 1, 2, 3 HAVING COUNT(*) > 1"
            assert con.execute(dup).fetchall() == []
        async with aiohttp.ClientSession() as s:  # and it takes labels again
            body = {"reviewer": "after", "kind": "pair", "id": "pair0001", "label": "A"}
            async with s.post(url2 + "/api/label", json=body) as r:
                assert r.status == 200, await r.text()
    finally:
        proc2.send_signal(signal.SIGTERM)
        out, _ = proc2.communicate(timeout=30)
    assert proc2.returncode == 0 and "Stopped." in out
    print(f"\nkill -9 after {len(acked)} acknowledged labels: all {len(acked)} kept, none twice")
