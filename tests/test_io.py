"""Crash-safe JSONL: torn last lines are dropped, bad middle lines name file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai_kit.errors import DataError
from cai_kit.io import JsonlWriter, latest_by_id, read_jsonl
from cai_kit.records import GenerationRecord, Message


def _rec(i: int, status: str = "ok") -> GenerationRecord:
    return GenerationRecord(id=f"r{i}", prompt_id="p", messages=[Message(role="user", content="x")],
                            response=str(i), status=status)  # type: ignore[arg-type]  # fmt: skip


def test_torn_last_line_is_dropped_and_appending_continues(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with JsonlWriter(path) as w:
        w.write(_rec(1))
        w.write(_rec(2))
    with open(path, "a") as fh:
        fh.write('{"id": "r3", "prompt_id": "p", "mess')  # the process died mid-write
    with pytest.warns(UserWarning, match="torn"), JsonlWriter(path) as w:
        w.write(_rec(3))
    assert [obj["id"] for _, obj in read_jsonl(path)] == ["r1", "r2", "r3"]


def test_bad_middle_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        list(read_jsonl(path))


def test_later_records_supersede_earlier_ones_with_the_same_id(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with JsonlWriter(path) as w:
        w.write(_rec(1, "failed"))
        w.write(_rec(2))
        w.write(_rec(1, "ok"))
    latest = latest_by_id(path, GenerationRecord)
    assert latest["r1"].status == "ok" and len(latest) == 2


def test_a_finished_record_reaches_the_file_within_the_interval_even_if_no_other_follows(
    tmp_path: Path,
) -> None:
    """kill -9 loses only what is still in the process: a lone record must not wait for the
    next write (a job whose last rows are slow) to leave the process."""
    import asyncio

    path = tmp_path / "out.jsonl"

    async def go() -> list[str]:
        with JsonlWriter(path, batch=64, interval_s=0.05) as w:
            w.write(_rec(1))
            await asyncio.sleep(0.5)  # the job is busy elsewhere; nothing else is written
            on_disk = path.read_text().splitlines()  # what a kill -9 now would leave
        return on_disk

    assert [json.loads(x)["id"] for x in asyncio.run(go())] == ["r1"]


def test_records_written_outside_an_event_loop_are_all_on_disk_after_close(
    tmp_path: Path,
) -> None:
    path = tmp_path / "out.jsonl"
    with JsonlWriter(path, batch=3) as w:
        for i in range(10):
            w.write(_rec(i))
    assert [obj["id"] for _, obj in read_jsonl(path)] == [f"r{i}" for i in range(10)]
