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


def test_an_output_with_a_byte_that_is_not_utf8_is_one_sentence_on_resume(
    fault_server,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """Issue 29: a resumed job whose output holds a non-UTF-8 byte printed a
    UnicodeDecodeError traceback; it says file:line in one sentence, as a bad JSON line does."""
    from typer.testing import CliRunner

    from cai_kit.cli.main import app

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(3)))
    out = tmp_path / "gen"
    args = ["generate", str(prompts), "--model", "m", "--api-base", fault_server.base_url,
            "--out", str(out), "-q"]  # fmt: skip
    assert CliRunner().invoke(app, args).exit_code == 0
    path = out / "generations.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b"question", b"qu\xe9stion", 1)  # Latin-1, as an editor may save
    path.write_bytes(b"".join(lines))
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output
    assert not isinstance(r.exception, UnicodeDecodeError)
    text = " ".join(r.output.split())
    assert f"{path}:2: not UTF-8 text" in text, r.output


def test_a_torn_last_line_that_cut_a_character_in_two_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with JsonlWriter(path) as w:
        w.write(_rec(1))
    with open(path, "ab") as fh:
        fh.write('{"id": "r2", "response": "caf\u00e9'.encode()[:-1])  # died inside "é"
    with pytest.warns(UserWarning, match="torn"):
        assert [obj["id"] for _, obj in read_jsonl(path)] == ["r1"]
