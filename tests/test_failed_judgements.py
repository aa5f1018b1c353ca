"""A failed judgement is a failure: counted failed, retried by a re-run and by `retry-failed`,
and counted by `export` among the rows it left out. Against the scripted provider server."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.io import latest_by_id
from cai_kit.records import JudgeVerdict, PreferenceRecord
from tests.fixtures.fault_server import FaultServer


def _shown_first(body: dict[str, Any]) -> str:
    text = body["messages"][-1]["content"]
    return re.findall(r"<<<RESPONSE-A-\w+>>>\n(.*?)\n<<<END-RESPONSE", text, re.DOTALL)[0]


def _good_judge(body: dict[str, Any], rng: object) -> str:
    """A judge that picks the GOOD response, in either order."""
    return "A" if _shown_first(body).startswith("GOOD") else "B"


def _pairs(tmp_path: Path, n: int = 3) -> Path:
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": f"q{i}", "response_a": f"GOOD {i}", "response_b": f"BAD {i}"} for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _invoke(monkeypatch: pytest.MonkeyPatch, args: list[str]):  # type: ignore[no-untyped-def]
    """Run the CLI as a shell would (sys.argv set), so the manifest keeps a replayable argv."""
    monkeypatch.setattr(sys, "argv", ["cai-kit", *args])
    return CliRunner().invoke(app, args)


def _statuses(run: Path) -> list[str]:
    return sorted(r.status for r in latest_by_id(run / "prefs.jsonl", PreferenceRecord).values())


def test_a_401_judge_counts_failed_then_retry_failed_redoes_only_those_rows(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:  # fmt: skip
    fault_server.default = "401"
    run = tmp_path / "run"
    args = ["judge", str(_pairs(tmp_path)), "--judge-model", "judge", "--api-base", fault_server.base_url,
            "--mode", "letter", "--out", str(run), "-q"]  # fmt: skip
    r = _invoke(monkeypatch, args)
    assert "0 done; 3 failed" in r.output, r.output
    assert _statuses(run) == ["failed"] * 3
    assert json.loads((run / "manifest.json").read_text())["stats"]["failed"] == 3
    r = CliRunner().invoke(app, ["export", "dpo", str(run), "--out", str(tmp_path / "d")])
    assert r.exit_code == 1 and "3 failed" in r.output

    fault_server.default, fault_server.responder = "ok", _good_judge  # the key is fixed
    capfd.readouterr()
    r = CliRunner().invoke(app, ["retry-failed", str(run)])
    assert r.exit_code == 0, capfd.readouterr()
    assert "3 done; 0 failed; 0 already done" in capfd.readouterr().out
    assert _statuses(run) == ["ok"] * 3
    assert json.loads((run / "manifest.json").read_text())["stats"]["done"] == 3
    r = CliRunner().invoke(app, ["export", "dpo", str(run), "--out", str(tmp_path / "d"), "--format", "standard"])  # fmt: skip
    assert r.exit_code == 0 and "Wrote 3 train" in r.output
    paid = fault_server.paid
    r = _invoke(monkeypatch, args)  # now finished: nothing left to do
    assert "0 done; 0 failed; 3 already done" in r.output and fault_server.paid == paid


def test_prefs_with_a_401_judge_fails_the_pairs_and_a_plain_rerun_redoes_them(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(2)))
    fault_server.by_model["judge"] = "401"
    fault_server.responder = lambda body, rng: (  # policy: distinct drawn texts; judge: longer wins
        f"{rng.random():.6f} " + "x" * rng.randint(1, 30)
        if body["model"] == "pol"
        else ("A" if len(_shown_first(body)) >= 20 else "B")
    )
    run = tmp_path / "pf"
    args = ["prefs", str(prompts), "--policy-model", "pol", "--judge-model", "judge", "--api-base",
            fault_server.base_url, "--k", "2", "--pairs", "all", "--mode", "letter", "--out", str(run), "-q"]  # fmt: skip
    r = _invoke(monkeypatch, args)
    assert "0 done; 2 failed" in r.output, r.output
    assert _statuses(run) == ["failed", "failed"]
    r = CliRunner().invoke(app, ["judge-report", str(run)])
    assert json.loads((run / "judge_report.json").read_text())["failures"] == 2

    fault_server.by_model.clear()
    r = _invoke(monkeypatch, args)
    assert "2 done; 0 failed; 0 already done" in r.output, r.output
    assert _statuses(run) == ["ok", "ok"]


def test_a_record_written_before_status_existed_reads_failed_when_its_verdict_failed() -> None:
    old = {"id": "x", "prompt_id": "p", "messages": [{"role": "user", "content": "q"}], "response_a": "a",
           "response_b": "b", "verdict": JudgeVerdict(label="failed", error="HTTP 401").model_dump()}  # fmt: skip
    rec = PreferenceRecord.model_validate(old)
    assert rec.status == "failed" and rec.error == "HTTP 401"
    ok = PreferenceRecord.model_validate({**old, "verdict": {"label": "A", "p_a": 1.0}})
    assert ok.status == "ok"


def test_best_worst_with_one_failed_judgement_is_a_failed_record(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "question"}) + "\n")
    sampled = judged = 0

    def reply(body: dict[str, Any], rng: Any) -> str:
        nonlocal sampled, judged
        if body["model"] == "pol":
            sampled += 1
            return f"answer number {sampled}"
        judged += 1
        return "I cannot say." if judged == 3 else "A"  # pair 2 of 3, first order: unreadable

    fault_server.responder = reply
    run = tmp_path / "bw"
    r = _invoke(monkeypatch, ["prefs", str(prompts), "--policy-model", "pol", "--judge-model", "judge", "--api-base",
                              fault_server.base_url, "--k", "3", "--pairs", "best-worst", "--mode", "letter",
                              "--out", str(run), "-q"])  # fmt: skip
    assert "judging:  0 done; 1 failed" in r.output, r.output
    (rec,) = latest_by_id(run / "prefs.jsonl", PreferenceRecord).values()
    assert rec.status == "failed" and "1 of 3 judgements failed" in (rec.error or "")


@pytest.mark.parametrize("mode", ["letter", "votes"])
def test_an_unreadable_judge_answer_is_asked_again_on_a_plain_rerun(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    fault_server.responder = lambda body, rng: "Both are fine, really."
    run = tmp_path / "run"
    args = ["judge", str(_pairs(tmp_path, n=2)), "--judge-model", "judge", "--api-base",
            fault_server.base_url, "--mode", mode, "--out", str(run), "-q"]  # fmt: skip
    r = _invoke(monkeypatch, args)
    assert "0 done; 2 failed" in r.output, r.output
    fault_server.responder = _good_judge  # same request, and now a clear answer
    r = _invoke(monkeypatch, args)  # no --no-cache: the unreadable answers were not kept
    assert "2 done; 0 failed" in r.output, r.output
    assert _statuses(run) == ["ok"] * 2


def _longer_wins(body: dict[str, Any], rng: Any) -> str:
    """Policy `pol`: distinct drawn texts; judge: the longer response wins, in either order."""
    if body["model"] == "pol":
        return f"{rng.random():.6f} " + "x" * rng.randint(1, 30)
    text = body["messages"][-1]["content"]
    first, second = re.findall(r"<<<RESPONSE-[AB]-\w+>>>\n(.*?)\n<<<END-RESPONSE", text, re.DOTALL)
    return "A" if len(first) >= len(second) else "B"


def _partial(rec: PreferenceRecord) -> bool:
    return any(c.error or c.p_first is None for c in rec.verdict.comparisons)


def _counts(run: Path) -> dict[str, int]:
    recs = list(latest_by_id(run / "prefs.jsonl", PreferenceRecord).values())
    return {s: sum(r.status == s for r in recs) for s in ("ok", "failed")}


def test_prefs_all_principles_against_a_judge_refusing_some_prompts_fails_partial_verdicts(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21: a verdict that lost comparisons was `ok`, exported and never retried."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(2)))
    fault_server.responder = _longer_wins
    fault_server.refuse_rate = {"judge": 0.15}
    run = tmp_path / "pf"
    args = ["prefs", str(prompts), "--policy-model", "pol", "--judge-model", "judge", "--api-base",
            fault_server.base_url, "--k", "3", "--pairs", "all", "--principles", "all",
            "--mode", "letter", "--out", str(run), "-q"]  # fmt: skip
    r = _invoke(monkeypatch, args)
    recs = list(latest_by_id(run / "prefs.jsonl", PreferenceRecord).values())
    assert len(recs) == 6 and sum(map(_partial, recs)) >= 1  # the server did refuse some
    for rec in recs:  # a record is ok exactly when every comparison it claims succeeded
        assert (rec.status == "ok") == (not _partial(rec)), rec.verdict
        if rec.status == "failed":
            assert rec.chosen is None and rec.error and "comparisons failed" in rec.error
    n = _counts(run)
    assert f"judging:  {n['ok']} done; {n['failed']} failed" in r.output, r.output
    assert n["failed"] >= 1
    assert json.loads((run / "manifest.json").read_text())["stats"]["failed"] == n["failed"]
    r = CliRunner().invoke(app, ["judge-report", str(run)])
    rep = json.loads((run / "judge_report.json").read_text())
    assert rep["failures"] == n["failed"] and sum(rep["labels"].values()) == 6
    assert rep["labels"].get("failed", 0) == n["failed"]
    r = CliRunner().invoke(app, ["export", "dpo", str(run), "--out", str(tmp_path / "d")])
    if n["ok"]:
        assert f"Wrote {n['ok']} train" in r.output and f"{n['failed']} failed" in r.output
    else:
        assert r.exit_code == 1 and f"{n['failed']} failed" in r.output, r.output

    fault_server.refuse_rate.clear()  # the provider stops refusing: a plain re-run mends them
    paid = fault_server.paid
    r = _invoke(monkeypatch, args)
    assert f"judging:  {n['failed']} done; 0 failed; {n['ok']} already done" in r.output, r.output
    assert _counts(run) == {"ok": 6, "failed": 0}
    assert not any(map(_partial, latest_by_id(run / "prefs.jsonl", PreferenceRecord).values()))
    assert fault_server.paid - paid < 6 * 2 * 14  # only the refused calls were asked again
    r = CliRunner().invoke(app, ["export", "dpo", str(run), "--out", str(tmp_path / "d")])
    assert r.exit_code == 0 and "Wrote 6 train" in r.output, r.output


def test_judge_all_principles_with_one_refused_comparison_is_failed_then_retry_failed_mends_it(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:  # fmt: skip
    fault_server.responder = _good_judge
    fault_server.script = ["ok"] * 5 + ["401"]  # the 6th call of the first pair: one order lost
    run = tmp_path / "run"
    args = ["judge", str(_pairs(tmp_path, n=1)), "--judge-model", "judge", "--api-base",
            fault_server.base_url, "--principles", "all", "--mode", "letter", "--out", str(run), "-q"]  # fmt: skip
    r = _invoke(monkeypatch, args)
    assert "0 done; 1 failed" in r.output, r.output
    (rec,) = latest_by_id(run / "prefs.jsonl", PreferenceRecord).values()
    assert rec.status == "failed" and rec.verdict.label == "failed"
    assert "1 of 28 comparisons failed" in (rec.error or ""), rec.error
    capfd.readouterr()
    r = CliRunner().invoke(app, ["retry-failed", str(run)])
    assert r.exit_code == 0 and "1 done; 0 failed" in capfd.readouterr().out
    (rec,) = latest_by_id(run / "prefs.jsonl", PreferenceRecord).values()
    assert rec.status == "ok" and rec.verdict.label == "A" and len(rec.verdict.comparisons) == 28


def test_a_partial_verdict_written_by_an_older_version_reads_failed_and_a_rerun_redoes_it(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault_server.responder = _good_judge
    run = tmp_path / "run"
    args = ["judge", str(_pairs(tmp_path, n=2)), "--judge-model", "judge", "--api-base",
            fault_server.base_url, "--principles", "all", "--mode", "letter", "--out", str(run), "-q"]  # fmt: skip
    assert "2 done; 0 failed" in _invoke(monkeypatch, args).output
    lines = (run / "prefs.jsonl").read_text().splitlines()
    old = json.loads(lines[0])  # as the old code wrote it: `ok`, a label, one comparison lost
    old["verdict"]["comparisons"][3].update(p_first=None, letter=None, error="HTTP 400")
    (run / "prefs.jsonl").write_text("\n".join([json.dumps(old), lines[1]]) + "\n")
    assert _counts(run) == {"ok": 1, "failed": 1}
    r = CliRunner().invoke(app, ["export", "dpo", str(run), "--out", str(tmp_path / "d")])
    assert "Wrote 1 train" in r.output and "1 failed" in r.output, r.output
    r = _invoke(monkeypatch, args)
    assert "1 done; 0 failed; 1 already done" in r.output, r.output
    assert _counts(run) == {"ok": 2, "failed": 0}
