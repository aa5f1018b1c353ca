"""`cai-kit review` reads a run as the rest of the toolkit reads it (issue 29): the same record
models and line rules as `io.read_records` (what `judge-report` and `export` use), the same
`failed` for an older record that lost a comparison, the same one-sentence file:line errors (at
start, in `export-gold`, and from the API for bad lines appended while it runs), and an index
that notices any change to the file while reading only what was appended."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.errors import DataError
from cai_kit.eval.judge_report import build_report
from cai_kit.review.index import RunIndex
from cai_kit.review.labels import FILENAME, LabelStore
from tests.fixtures.review_run import make_run, start_review


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _lines(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "prefs.jsonl").read_text().splitlines()]


def _write(run_dir: Path, rows: list[dict[str, Any]], end: str = "\n") -> None:
    text = "\n".join(json.dumps(r) for r in rows) + end
    (run_dir / "prefs.jsonl").write_text(text)


def _judge_labels(run_dir: Path) -> dict[str, int]:
    index = RunIndex.open(run_dir)
    try:
        return index.counts("pair")["judge_labels"]
    finally:
        index.close()


def test_a_last_line_without_newline_is_read_and_can_be_labelled(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    make_run(run_dir, n_pairs=3, n_revisions=0)
    _write(run_dir, _lines(run_dir), end="")  # as a hand-edited or other-tool file may end
    assert build_report(run_dir).pairs == 3
    index = RunIndex.open(run_dir)
    try:
        assert index.counts("pair")["views"]["all"] == 3
        assert index.has("pair", "pair0002")
    finally:
        index.close()
    # a writer that appends later ends that line first (io.repair_torn_tail): one more row,
    # with the lines numbered as the file numbers them
    from cai_kit.io import JsonlWriter

    extra = _lines(run_dir)[0] | {"id": "pair0009"}
    with JsonlWriter(run_dir / "prefs.jsonl") as w:
        w.write(extra)
    index = RunIndex.open(run_dir)
    try:
        assert index.counts("pair")["views"]["all"] == 4
        assert index.record("pair", "pair0009")["_line"] == 4
    finally:
        index.close()


def test_wrong_types_are_what_judge_report_makes_of_them(tmp_path: Path) -> None:
    """`p_a: {...}` is refused with the sentence the toolkit's reader gives (file:line:field);
    `position_consistent: "yes"` is read as the toolkit reads it (pydantic: true)."""
    run_dir = tmp_path / "run"
    make_run(run_dir, n_pairs=4, n_revisions=0)
    rows = _lines(run_dir)
    rows[1]["verdict"]["p_a"] = {"x": 1}
    _write(run_dir, rows)
    with pytest.raises(DataError) as toolkit:
        build_report(run_dir)
    r = CliRunner().invoke(app, ["review", str(run_dir)])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.exception
    said = " ".join(r.output.split())
    assert (
        "prefs.jsonl:2: verdict.p_a:" in said and str(toolkit.value).split("prefs.jsonl")[1] in said
    )

    rows[1]["verdict"]["p_a"] = 0.5
    rows[1]["verdict"]["position_consistent"] = "yes"  # pair0001 was consistent: now "yes"
    rows[3]["verdict"]["position_consistent"] = "no"
    _write(run_dir, rows)
    rep = build_report(run_dir)
    index = RunIndex.open(run_dir)
    try:
        disagree = index.query("pair", view="orders-disagree").rows
        assert [x["id"] for x in disagree] == ["pair0000", "pair0003"]
        ok = [x for x in index.query("pair").rows if x["status"] == "ok"]
        assert sum(bool(x["consistent"]) for x in ok) / len(ok) == rep.position_consistency
    finally:
        index.close()


def test_non_utf8_bytes_are_one_sentence_naming_the_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    make_run(run_dir, n_pairs=3, n_revisions=0)
    raw = (run_dir / "prefs.jsonl").read_bytes().split(b"\n")
    raw[2] = raw[2].replace(b"Answer A2", b"Answer \xff2")
    (run_dir / "prefs.jsonl").write_bytes(b"\n".join(raw))
    r = CliRunner().invoke(app, ["review", str(run_dir)])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.exception
    assert "prefs.jsonl:3:" in r.output and "UTF-8" in r.output


def test_an_older_record_that_lost_a_comparison_is_failed_as_export_counts_it(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    make_run(run_dir, n_pairs=4, n_revisions=0)
    rows = _lines(run_dir)
    rows[0]["verdict"]["comparisons"][1]["p_first"] = None  # label A, status ok, as once written
    rows[0]["status"] = "ok"
    _write(run_dir, rows)
    assert build_report(run_dir).labels == {"B": 1, "tie": 1, "failed": 2}
    assert _judge_labels(run_dir) == {"B": 1, "tie": 1, "failed": 2}
    index = RunIndex.open(run_dir)
    try:
        assert [x["id"] for x in index.query("pair", view="failed").rows] == [
            "pair0000",
            "pair0003",
        ]
        rec = index.record("pair", "pair0000")
        assert rec["status"] == "failed" and "comparisons failed" in rec["error"]
    finally:
        index.close()


def test_export_gold_of_a_labelled_pair_without_messages_is_one_sentence(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    make_run(run_dir, n_pairs=3, n_revisions=0)
    rows = _lines(run_dir)
    del rows[1]["messages"]
    _write(run_dir, rows)
    store = LabelStore(run_dir / FILENAME)  # labelled (say, before the line was rewritten)
    store.put("ana", "pair", "pair0001", "A")
    store.close()
    with pytest.raises(DataError) as toolkit:
        build_report(run_dir)
    gold = tmp_path / "gold.jsonl"
    r = CliRunner().invoke(app, ["review", "export-gold", str(run_dir), "--out", str(gold)])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.exception
    said = " ".join(r.output.split())
    assert "prefs.jsonl:2: messages: Field required" in said
    assert str(toolkit.value).split("prefs.jsonl")[1] in said and not gold.exists()


def test_bad_lines_appended_while_review_runs_are_a_4xx_sentence(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    pairs, _ = make_run(run_dir, n_pairs=12)
    h = start_review(run_dir)
    try:
        assert _get(h.url + "/api/summary")[0] == 200
        bad = pairs[0].model_dump(mode="json") | {"id": "pair0100"}
        bad["verdict"]["p_a"] = {"x": 1}
        with open(run_dir / "prefs.jsonl", "a") as fh:
            fh.write(json.dumps(bad) + "\n")
        for path in ("/api/summary", "/api/rows?kind=pair", "/api/row?kind=pair&id=pair0001"):
            status, body = _get(h.url + path)
            msg = body["error"]["message"]
            assert status == 409 and "prefs.jsonl:13: verdict.p_a:" in msg, (path, body)
        with open(run_dir / "prefs.jsonl", "a") as fh:
            fh.write("{not json\n")
        status, body = _get(h.url + "/api/summary")
        assert status == 409 and "prefs.jsonl:13" in body["error"]["message"]
        # mended (the bad lines removed): read again, all of it
        make_run(run_dir, n_pairs=12)
        status, body = _get(h.url + "/api/summary")
        assert status == 200 and body["kinds"]["pair"]["views"]["all"] == 12
    finally:
        h.stop()


def _spy_scans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The byte offsets the index starts reading the JSONL from (one per read)."""
    starts: list[int] = []
    real = RunIndex._scan

    def scan(self: RunIndex, kind: str, path: Path, start: int, *rest: Any) -> Any:
        starts.append(start)
        return real(self, kind, path, start, *rest)

    monkeypatch.setattr(RunIndex, "_scan", scan)
    return starts


def test_a_same_length_edit_in_the_middle_with_a_new_mtime_is_indexed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same size, same first and last 4 KB, a new mtime: the index used to take that as
    "nothing appended" and kept the old row."""
    run_dir = tmp_path / "run"
    make_run(run_dir, n_pairs=400, n_revisions=0)  # the edit is far from the first/last 4 KB
    path = run_dir / "prefs.jsonl"
    RunIndex.open(run_dir).close()
    starts = _spy_scans(monkeypatch)
    st = path.stat()
    data = path.read_bytes()
    at = data.index(b'"id":"pair0200"')
    line_end = data.index(b"\n", at)
    edited = data[:at] + data[at:line_end].replace(b'"label":"A"', b'"label":"B"') + data[line_end:]
    assert len(edited) == len(data) and edited != data
    path.write_bytes(edited)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    index = RunIndex.open(run_dir)
    try:
        assert index.counts("pair")["judge_labels"]["A"] == 99
        assert index.record("pair", "pair0200")["verdict"]["label"] == "B"
        assert starts == [0]  # indexed again from the start
    finally:
        index.close()


def test_index_reuse_reads_nothing_for_a_touch_and_only_the_appended_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    make_run(run_dir, n_pairs=400, n_revisions=0)
    path = run_dir / "prefs.jsonl"
    RunIndex.open(run_dir).close()
    starts = _spy_scans(monkeypatch)
    size = path.stat().st_size
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes
    RunIndex.open(run_dir).close()
    assert starts == []
    with open(path, "a") as fh:  # a job still writing: only the new lines are read
        fh.write(json.dumps(_lines(run_dir)[0] | {"id": "pair9999"}) + "\n")
    index = RunIndex.open(run_dir)
    try:
        assert starts == [size] and index.counts("pair")["views"]["all"] == 401
        assert index.record("pair", "pair9999")["_line"] == 401
    finally:
        index.close()
