"""`cai-kit review RUN`: the index, the JSON API, the labels store, the guards, and the human
labels' way into `review export-gold`, `judge-report --gold` and `export --prefer-human`."""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.records import PreferenceRecord
from tests.fixtures.review_run import ReviewHandle, make_run, start_review


def _call(
    url: str, body: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None
) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    req = urllib.request.Request(url, data=data, headers={**hdrs, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _label(
    url: str, reviewer: str, kind: str, row_id: str, label: str, note: str | None = None
) -> None:
    status, body = _call(
        url + "/api/label",
        {"reviewer": reviewer, "kind": kind, "id": row_id, "label": label, "note": note},
    )
    assert status == 200 and body["ok"], body


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, list[PreferenceRecord], list[Any]]:
    pairs, revisions = make_run(tmp_path / "run")
    return tmp_path / "run", pairs, revisions


@pytest.fixture
def served(run: tuple[Path, list[PreferenceRecord], list[Any]]) -> Iterator[ReviewHandle]:
    h = start_review(run[0])
    yield h
    h.stop()


def _ids(url: str, **query: Any) -> tuple[int, list[str]]:
    q = "&".join(f"{k}={v}" for k, v in query.items())
    status, body = _call(f"{url}/api/rows?{q}")
    assert status == 200, body
    return body["total"], [r["id"] for r in body["rows"]]


def test_views_count_and_page_what_the_records_say(run: Any, served: ReviewHandle) -> None:
    _, pairs, revisions = run
    url = served.url
    ok = [p for p in pairs if p.status == "ok"]
    expect = {
        "all": [p.id for p in pairs],
        "ties": [p.id for p in ok if p.verdict.label == "tie"],
        "low-margin": [p.id for p in ok if (p.verdict.margin or 0) < 0.2],
        "orders-disagree": [p.id for p in pairs if p.verdict.position_consistent is False],
        "failed": [p.id for p in pairs if p.status == "failed"],
    }
    status, summary = _call(url + "/api/summary?reviewer=ana")
    assert status == 200
    pair_views = summary["kinds"]["pair"]["views"]
    for view, ids in expect.items():
        assert pair_views[view] == len(ids), view
        assert _ids(url, kind="pair", view=view, limit=200) == (len(ids), ids), view
    assert pair_views["unlabelled"] == len(pairs)
    assert summary["kinds"]["pair"]["judge_labels"] == {"A": 3, "B": 3, "tie": 3, "failed": 3}
    assert sum(summary["kinds"]["pair"]["margin_hist"]) == len(ok)
    helpful = [p.id for p in pairs if "helpful" in p.verdict.principle_ids]
    assert summary["kinds"]["pair"]["principles"]["helpful"] == len(helpful)
    assert _ids(url, kind="pair", principle="helpful", limit=200) == (len(helpful), helpful)
    # paging: the file's order, offset and limit
    assert _ids(url, kind="pair", offset=5, limit=5) == (len(pairs), expect["all"][5:10])
    # search (case-insensitive) finds text in any field of the row's line
    assert _ids(url, kind="pair", q="answer%20b7:") == (1, ["pair0007"])
    assert _ids(url, kind="pair", view="ties", q="question") == (3, expect["ties"])
    # revisions: views and the word diff initial -> final
    rv = summary["kinds"]["revision"]["views"]
    assert rv["all"] == len(revisions) and rv["failed"] == 1 and rv["unchanged"] == 1
    status, body = _call(url + "/api/row?kind=revision&id=rev0000")
    assert status == 200 and body["record"]["steps"][0]["principle_id"] == "harmless"
    diff, rec = body["diff"], body["record"]
    assert {op for op, _ in diff} == {"=", "-", "+"}
    assert "".join(t for op, t in diff if op != "+") == rec["initial_response"]
    assert "".join(t for op, t in diff if op != "-") == rec["final_response"]
    status, body = _call(url + "/api/row?kind=pair&id=pair0001")
    assert body["record"]["verdict"]["comparisons"][0]["order"] == "ab" and body["labels"] == []


def test_a_run_still_being_written_is_read_again_and_superseded_lines_are_not_found(
    run: Any, served: ReviewHandle
) -> None:
    run_dir, pairs, _ = run
    url = served.url
    assert _ids(url, kind="pair", q="answer%20a1:%20water") == (1, ["pair0001"])
    retried = pairs[1].model_copy(update={"response_a": "a fresh zebra answer"})
    with open(run_dir / "prefs.jsonl", "a") as fh:  # a retried row and a new row
        fh.write(retried.model_dump_json() + "\n")
        fh.write(pairs[2].model_copy(update={"id": "pair0099"}).model_dump_json() + "\n")
        fh.write('{"id": "half a line')  # still being written: not read yet
    _, summary = _call(url + "/api/summary")
    assert summary["kinds"]["pair"]["views"]["all"] == len(pairs) + 1
    assert _ids(url, kind="pair", q="ZEBRA") == (1, ["pair0001"])
    assert _ids(url, kind="pair", q="answer%20a1:%20water") == (0, [])  # only the old line has it
    _, ids = _ids(url, kind="pair", limit=200)
    assert ids == [p.id for p in pairs] + ["pair0099"]  # the retried row keeps its place
    _, body = _call(url + "/api/row?kind=pair&id=pair0001")
    assert body["record"]["response_a"] == "a fresh zebra answer"
    assert body["position"] == 1  # its place in the `all` view: the page opens it from #id=
    _, body = _call(url + "/api/row?kind=pair&id=pair0099")
    assert body["position"] == len(pairs) == ids.index("pair0099")


def test_labels_upsert_once_per_reviewer_and_row(run: Any, served: ReviewHandle) -> None:
    run_dir, _, _ = run
    url = served.url
    body = {"reviewer": "ana", "kind": "pair", "id": "pair0002", "label": "A", "note": "short"}
    with ThreadPoolExecutor(8) as pool:  # a double (octuple) click
        results = list(pool.map(lambda _: _call(url + "/api/label", body), range(8)))
    assert all(s == 200 for s, _ in results)
    _label(url, "ana", "pair", "pair0002", "B")  # a changed mind replaces the label
    _label(url, "bob", "pair", "pair0002", "tie")
    _label(url, "ana", "revision", "rev0001", "unchanged")
    with sqlite3.connect(run_dir / "labels.sqlite") as con:
        rows = con.execute(
            "SELECT reviewer, kind, row_id, label, note FROM labels ORDER BY 1, 2"
        ).fetchall()
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert rows == [
        ("ana", "pair", "pair0002", "B", None),
        ("ana", "revision", "rev0001", "unchanged", None),
        ("bob", "pair", "pair0002", "tie", None),
    ]
    total, ids = _ids(url, kind="pair", view="unlabelled", reviewer="ana", limit=200)
    assert total == 11 and "pair0002" not in ids
    _, body = _call(url + "/api/rows?kind=pair&view=ties&reviewer=ana")
    assert (body["rows"][0]["id"], body["rows"][0]["human"]) == ("pair0002", "B")
    _, row = _call(url + "/api/row?kind=pair&id=pair0002")
    assert sorted((x["reviewer"], x["label"]) for x in row["labels"]) == [
        ("ana", "B"),
        ("bob", "tie"),
    ]


@pytest.mark.parametrize(
    ("body", "headers", "status", "says"),
    [
        (
            {"reviewer": "ana", "kind": "pair", "id": "nope", "label": "A"},
            {},
            404,
            "No pair with id 'nope'",
        ),
        (
            {
                "reviewer": "ana",
                "kind": "pair",
                "id": "pair0001",
                "label": "A",
                "note": "x" * 10_000,
            },
            {},
            400,
            "note is 10000 characters long; the limit is 2000",
        ),
        (
            {"reviewer": "ana", "kind": "pair", "id": "pair0001", "label": "C"},
            {},
            400,
            "one of A, B, tie, both-bad",
        ),
        (
            {"reviewer": "ana", "kind": "revision", "id": "rev0001", "label": "A"},
            {},
            400,
            "one of better, worse, unchanged",
        ),
        ({"kind": "pair", "id": "pair0001", "label": "A"}, {}, 400, "reviewer must be your name"),
        (
            {"reviewer": "ana", "kind": "pair", "id": "pair0001", "label": "A"},
            {"Content-Type": "text/plain"},
            415,
            "application/json",
        ),
        (
            {"reviewer": "ana", "kind": "pair", "id": "pair0001", "label": "A"},
            {"Origin": "http://evil.example"},
            403,
            "web page at http://evil.example are refused",
        ),
        (
            {"reviewer": "ana", "kind": "pair", "id": "pair0001", "label": "A"},
            {"Host": "evil.example:80"},
            403,
            "does not name this server",
        ),
    ],
)
def test_bad_label_requests_get_one_clear_sentence_and_store_nothing(
    run: Any, served: ReviewHandle, body: Any, headers: dict[str, str], status: int, says: str
) -> None:
    got, answer = _call(served.url + "/api/label", body, headers)
    assert got == status and says in answer["error"]["message"], answer
    with sqlite3.connect(run[0] / "labels.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM labels").fetchone() == (0,)


def test_oversized_bodies_unknown_rows_and_foreign_hosts_on_reads(served: ReviewHandle) -> None:
    status, answer = _call(served.url + "/api/label", raw=b'{"note": "' + b"x" * 100_000 + b'"}')
    assert status == 413 and "larger than" in answer["error"]["message"]
    status, answer = _call(served.url + "/api/row?kind=pair&id=nope")
    assert status == 404 and "No pair with id 'nope'" in answer["error"]["message"]
    status, answer = _call(served.url + "/api/rows?kind=pair&view=nonsense")
    assert status == 400 and "view must be one of" in answer["error"]["message"]
    status, answer = _call(served.url + "/api/summary", headers={"Host": "rebound.example"})
    assert status == 403
    ok, _ = _call(
        served.url + "/api/summary",
        headers={"Host": served.url.split("//")[1].replace("127.0.0.1", "localhost")},
    )
    assert ok == 200


def test_review_refuses_what_is_not_a_run_and_a_corrupt_labels_db(tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["review", str(tmp_path / "empty")])
    assert r.exit_code == 1 and "is not a run directory" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["review", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "is not a directory" in r.output
    make_run(tmp_path / "run")
    with open(tmp_path / "run" / "prefs.jsonl", "a") as fh:
        fh.write("{not json\n")
    r = runner.invoke(app, ["review", str(tmp_path / "run")])
    assert r.exit_code == 1 and "prefs.jsonl:13: not valid JSON" in r.output
    make_run(tmp_path / "run2")
    (tmp_path / "run2" / "labels.sqlite").write_bytes(b"this is no database, just bytes" * 100)
    for args in (
        ["review", str(tmp_path / "run2")],
        ["review", "export-gold", str(tmp_path / "run2"), "--out", str(tmp_path / "g.jsonl")],
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == 1 and "is not a cai-kit labels database" in r.output, r.output
    r = runner.invoke(app, ["review", str(tmp_path / "run2"), "--host", "0.0.0.0"])
    assert r.exit_code == 1 and "bind to 127.0.0.1" in r.output
    (tmp_path / "run2" / "review_index.sqlite").write_bytes(b"garbage" * 1000)  # a cache: rebuilt
    r = runner.invoke(
        app,
        [
            "review",
            "export-gold",
            str(tmp_path / "run2"),
            "--out",
            "g.jsonl",
            "--labels-db",
            str(tmp_path / "fresh.sqlite"),
        ],
    )
    assert r.exit_code == 1 and "No labels database" in r.output
    from cai_kit.review.index import RunIndex

    index = RunIndex.open(tmp_path / "run2")
    assert (
        index.where.endswith("review_index.sqlite") and index.counts("pair")["views"]["all"] == 12
    )
    index.close()
    r = runner.invoke(
        app, ["review", str(tmp_path / "run2"), "--labels-db", "/proc/x/labels.sqlite"]
    )
    assert r.exit_code == 1 and "not a writable directory; give --labels-db PATH" in r.output
    make_run(tmp_path / "run3")
    r = runner.invoke(app, ["review", "export-gold", str(tmp_path / "run3"), "--out", "g.jsonl"])
    assert r.exit_code == 1 and "No labels database" in r.output


def _label_for_gold(url: str) -> None:
    for row_id, label in [
        ("pair0000", "A"),
        ("pair0001", "A"),
        ("pair0002", "tie"),
        ("pair0003", "B"),
        ("pair0004", "A"),
        ("pair0005", "both-bad"),
        ("pair0006", "A"),
        ("pair0009", "B"),
    ]:
        _label(url, "ana", "pair", row_id, label, note="checked" if row_id == "pair0001" else None)
    _label(url, "bob", "pair", "pair0000", "A")  # agrees with ana: one gold row
    _label(url, "bob", "pair", "pair0008", "A")  # bob and carol split: left out
    _label(url, "carol", "pair", "pair0008", "B")
    _label(url, "ana", "revision", "rev0000", "worse")


def test_human_labels_become_gold_for_judge_report_with_kappa(
    run: Any, served: ReviewHandle
) -> None:
    run_dir, pairs, _ = run
    _label_for_gold(served.url)
    gold = run_dir.parent / "gold.jsonl"
    r = CliRunner().invoke(app, ["review", "export-gold", str(run_dir), "--out", str(gold)])
    assert r.exit_code == 0, r.output
    assert "Wrote 7 gold pairs" in r.output and "1 both-bad, 1 split" in r.output
    rows = {x["id"]: x for x in map(json.loads, gold.read_text().splitlines())}
    assert {k: v["label"] for k, v in rows.items()} == {
        "pair0000": "A",
        "pair0001": "A",
        "pair0002": "tie",
        "pair0003": "B",
        "pair0004": "A",
        "pair0006": "A",
        "pair0009": "B",
    }
    assert rows["pair0000"]["reviewers"] == ["ana", "bob"] and rows["pair0001"]["notes"] == [
        "ana: checked"
    ]
    assert rows["pair0001"]["response_a"] == pairs[1].response_a

    r = CliRunner().invoke(app, ["judge-report", str(run_dir), "--gold", str(gold)])
    assert r.exit_code == 0, r.output
    rep = json.loads((run_dir / "judge_report.json").read_text())
    # matched (gold, judge), pair0003's judgement failed: (A,A) (A,B) (tie,tie) (A,A) (A,tie) (B,B)
    assert rep["gold_matched"] == 4 and rep["gold_agreement"] == pytest.approx(3 / 4)
    assert rep["gold_matched_with_ties"] == 6 and rep["gold_agreement_with_ties"] == pytest.approx(
        4 / 6
    )
    # kappa: p_o = 4/6; gold A4 B1 tie1, judge A2 B2 tie2 -> p_e = 12/36; (2/3 - 1/3) / (2/3)
    assert rep["gold_kappa"] == pytest.approx(0.5)
    lo, hi = rep["gold_kappa_ci"]
    assert -1 <= lo <= 0.5 <= hi <= 1 and lo < hi
    assert rep["gold_confusion"] == {
        "A": {"A": 2, "B": 1, "tie": 1},
        "B": {"A": 0, "B": 1, "tie": 0},
        "tie": {"A": 0, "B": 0, "tie": 1},
    }
    text = " ".join(r.output.split())
    assert (
        "Cohen's kappa" in text
        and "0.500 (bootstrap 95% CI" in text
        and "gold A: A=2 B=1 tie=1" in text
    )


def test_export_prefer_human_overrides_the_judge_and_says_how_often(
    run: Any, served: ReviewHandle
) -> None:
    run_dir, pairs, revisions = run
    _label_for_gold(served.url)
    out = run_dir.parent / "dpo"
    r = CliRunner().invoke(app, ["export", "dpo", str(run_dir), "--out", str(out)])
    assert r.exit_code == 0 and "Wrote 6 train" in r.output, r.output
    r = CliRunner().invoke(
        app, ["export", "dpo", str(run_dir), "--out", str(out), "--prefer-human"]
    )
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "Wrote 7 train" in text and "2 failed, 2 tie, 1 both bad (human label)" in text
    assert (
        "Human labels: 8 used, 4 overrode the judge (1 B -> A, 1 B -> both-bad, 1 failed -> B, 1 tie -> A)"
        in text
    )
    assert "Reviewers split with no majority on 1 rows" in text
    got = {
        json.loads(x)["chosen"][0]["content"]
        for x in (out / "train.jsonl").read_text().splitlines()
    }
    assert pairs[1].response_a in got and pairs[3].response_b in got and pairs[6].response_a in got
    assert pairs[1].response_b not in got
    assert "8 used, 4 overrode" in (out / "README.md").read_text()
    r = CliRunner().invoke(
        app, ["export", "sft", str(run_dir), "--out", str(out / "sft"), "--prefer-human"]
    )
    assert (
        r.exit_code == 0
        and "Wrote 2 train" in r.output
        and "1 revision worse (human label)" in r.output
    ), r.output
    # prefs from revisions: the person found revision 0 worse, so its pair is turned round
    r = CliRunner().invoke(
        app, ["export", "prefs", str(run_dir), "--out", str(out / "p"), "--prefer-human"]
    )
    assert r.exit_code == 0 and "1 used, 1 overrode the judge (1 better -> worse)" in r.output
    rows = [json.loads(x) for x in (out / "p" / "train.jsonl").read_text().splitlines()]
    rev0 = [x for x in rows if "Revision prompt 0" in x["prompt"][0]["content"]]
    assert rev0[0]["chosen"][0]["content"] == revisions[0].initial_response


@pytest.mark.parametrize(
    ("host", "local", "ok"),
    [
        ("127.0.0.1:8001", ("127.0.0.1", 8001), True),
        ("localhost:8001", ("127.0.0.1", 8001), True),
        ("[::1]:8001", ("::1", 8001), True),
        ("127.0.0.1:9999", ("127.0.0.1", 8001), False),  # another port
        ("attacker.example:8001", ("127.0.0.1", 8001), False),  # DNS rebinding
        ("localhost:8001", ("192.168.1.5", 8001), False),  # a loopback name for a LAN bind
    ],
)
def test_guard_lets_only_this_servers_host_in(host: str, local: tuple[str, int], ok: bool) -> None:
    """The review page shares serve's guard (Origin and Content-Type: the HTTP tests above)."""
    from cai_kit.web.guard import host_allowed

    assert host_allowed(host, local, ()) is ok


def test_both_local_pages_and_their_answers_say_they_may_not_be_framed(
    served: ReviewHandle, fault_server: Any, tmp_path: Path
) -> None:
    """Issue 29: review's page and serve's chat page (and their API answers) refuse framing;
    the browser test in test_review_page.py shows a framing page gets nothing."""
    from tests.fixtures.serve_server import start_serve

    chat = start_serve("openai/m", api_base=fault_server.base_url, db=tmp_path / "f.db")
    try:
        for url in (
            served.url + "/",
            served.url + "/api/summary",
            chat.url + "/",
            chat.url + "/v1/models",
        ):
            with urllib.request.urlopen(url, timeout=30) as r:
                csp = r.headers.get_all("Content-Security-Policy") or []
                assert any("frame-ancestors 'none'" in c for c in csp), (url, csp)
                assert r.headers["X-Frame-Options"] == "DENY", url
        with urllib.request.urlopen(served.url + "/", timeout=30) as r:  # the page's own CSP kept
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    finally:
        chat.stop()


def test_both_apps_answer_every_error_in_one_shape(
    served: ReviewHandle, fault_server: Any, tmp_path: Path
) -> None:
    """One error middleware (web/errors.py) for review and serve: every error, whoever raised
    it (a handler, the guard, aiohttp's router, the body limit), is one sentence in
    `{"error": {"message", "type", "code"}}` with `code` its status."""
    from tests.fixtures.serve_server import start_serve

    chat = start_serve("openai/m", api_base=fault_server.base_url, db=tmp_path / "f.db")
    try:
        answers = {
            "review: no such row": _call(served.url + "/api/row?kind=pair&id=nope"),
            "review: no such route": _call(served.url + "/api/nowhere"),
            "review: too large": _call(served.url + "/api/label", raw=b"x" * 100_000),
            "review: a foreign Host": _call(served.url + "/", headers={"Host": "evil.example"}),
            "serve: no such route": _call(chat.url + "/v1/nowhere"),
            "serve: no such completion": _call(
                chat.url + "/v1/feedback", {"completion_id": "nope", "rating": 1}
            ),
        }
    finally:
        chat.stop()
    statuses = {what: status for what, (status, _) in answers.items()}
    assert statuses == {
        "review: no such row": 404,
        "review: no such route": 404,
        "review: too large": 413,
        "review: a foreign Host": 403,
        "serve: no such route": 404,
        "serve: no such completion": 404,
    }
    for what, (status, body) in answers.items():
        error = body["error"]
        assert set(error) == {"message", "type", "code"} and error["code"] == status, (what, body)
        assert error["message"].endswith(".") or "/" in error["message"], (what, body)


async def test_a_bug_in_review_is_logged_and_answered_with_one_sentence(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug (here the labels store closed under the app) is a 500 sentence for the page and a
    traceback in the app's log, never a traceback on the wire."""
    from aiohttp.test_utils import TestClient, TestServer

    from cai_kit.review.app import ReviewConfig, create_review_app
    from cai_kit.review.index import RunIndex
    from cai_kit.review.labels import FILENAME, LabelStore

    index, labels = RunIndex.open(run[0]), LabelStore(run[0] / FILENAME)
    labels.close()
    async with TestClient(TestServer(create_review_app(index, labels, ReviewConfig()))) as client:
        body = {"reviewer": "ana", "kind": "pair", "id": "pair0001", "label": "A"}
        resp = await client.post("/api/label", json=body)
        answer = await resp.json()
    index.close()
    assert resp.status == 500 and answer["error"] == {
        "message": "Internal server error; the server's log has the details.",
        "type": "server_error",
        "code": 500,
    }
    bug = [r for r in caplog.records if r.name == "cai_kit.review" and r.exc_info]
    assert bug and "bug while serving POST /api/label" in bug[0].getMessage()
