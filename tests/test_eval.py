"""Win-rate statistics by hand, and `cai-kit eval winrate` end to end against a scripted server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tests.fixtures.fault_server as fs
from cai_kit.cli.main import app
from cai_kit.eval.winrate import bootstrap_ci, win_rate
from tests.fixtures.fault_server import FaultServer


def test_win_rate_counts_ties_as_half() -> None:
    assert win_rate([1.0, 0.5, 0.0, 1.0]) == pytest.approx(0.625)


def test_bootstrap_ci_brackets_the_rate_and_degenerates_for_constant_outcomes() -> None:
    lo, hi = bootstrap_ci([1.0] * 30 + [0.0] * 10, seed=1)
    assert lo < 0.75 < hi and lo > 0.55 and hi < 0.9
    assert bootstrap_ci([1.0] * 5) == (1.0, 1.0)
    assert bootstrap_ci([1.0, 0.0] * 10, seed=3) == bootstrap_ci([1.0, 0.0] * 10, seed=3)  # seeded


def test_eval_winrate_end_to_end(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def reply(body: dict) -> str:
        if body["model"] == "good":
            return "GOOD answer"
        if body["model"] == "base":
            return "BAD answer"
        first = re.findall(
            r"<<<RESPONSE-A-\w+>>>\n(.*?)\n<<<END", body["messages"][-1]["content"], re.DOTALL
        )[0]
        return "A" if first.startswith("GOOD") else "B"

    monkeypatch.setattr(fs, "reply_text", reply)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": f"q{i}", "category": "x" if i % 2 else "y"}) + "\n"
            for i in range(6)
        )
    )
    out = tmp_path / "ev"
    r = CliRunner().invoke(app, ["eval", "winrate", "--prompts", str(prompts), "--model", "good", "--baseline", "base",
                                 "--judge", "judge", "--api-base", fault_server.base_url, "--mode", "letter", "--out", str(out), "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "win rate 1.000" in r.output and "6 wins" in r.output
    report = (out / "report.md").read_text()
    assert "| x | 3 | 1.0 |" in report and (out / "winrate.png").is_file()
    paid = fault_server.paid
    r = CliRunner().invoke(app, ["eval", "winrate", "--prompts", str(prompts), "--model", "good", "--baseline", "base",
                                 "--judge", "judge", "--api-base", fault_server.base_url, "--mode", "letter", "--out", str(out), "-q"])  # fmt: skip
    assert (
        fault_server.paid == paid and "win rate 1.000" in r.output
    )  # re-run: no calls, same report


def test_eval_harmlessness_reports_flag_shares_per_principle(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cai_kit.eval.harmlessness import parse_yes_no

    def reply(body: dict) -> str:
        if body["model"] in ("after", "before"):
            return f"{body['model']} answer"
        text = body["messages"][-1]["content"]
        return (
            "Yes" if "before answer" in text and "dangerous" in text.lower() else "No, it is fine."
        )

    monkeypatch.setattr(fs, "reply_text", reply)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(3)))
    out = tmp_path / "h"
    r = CliRunner().invoke(app, ["eval", "harmlessness", "--prompts", str(prompts), "--model", "after", "--baseline", "before",
                                 "--judge", "judge", "--api-base", fault_server.base_url, "--out", str(out), "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    report = (out / "report.md").read_text()
    assert "| dangerous-capabilities | 0% of 3 | 100% of 3 |" in report
    assert "| privacy | 0% of 3 | 0% of 3 |" in report
    assert (
        parse_yes_no("Yes.") is True
        and parse_yes_no("no") is False
        and parse_yes_no("Maybe") is None
    )


def _judge_good(body: dict, rng: object) -> str:
    """Model 'good' answers GOOD, 'base' answers BAD; the judge picks GOOD in either order."""
    if body["model"] in ("good", "base"):
        return "GOOD answer" if body["model"] == "good" else "BAD answer"
    first = re.findall(r"<<<RESPONSE-A-\w+>>>\n(.*?)\n<<<END", body["messages"][-1]["content"], re.DOTALL)[0]  # fmt: skip
    return "A" if first.startswith("GOOD") else "B"


def _winrate(server: FaultServer, prompts: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["eval", "winrate", "--prompts", str(prompts), "--model", "good", "--baseline", "base",
                                    "--judge", "judge", "--api-base", server.base_url, "--mode", "letter", "--out", str(out),
                                    "-q", *extra])  # fmt: skip


def _prompts(tmp_path: Path, n: int = 4) -> Path:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(n)))
    return path


def test_eval_winrate_takes_the_job_flags_and_dry_run_calls_nothing(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.responder = _judge_good
    prompts, out = _prompts(tmp_path), tmp_path / "ev"
    r = _winrate(fault_server, prompts, out, "--dry-run")
    assert r.exit_code == 0, r.output
    assert "dry run: 4 rows to do, about 16 calls" in r.output and fault_server.paid == 0
    flags = ["--concurrency", "2", "--rpm", "6000", "--tpm", "10000000", "--max-retries", "1", "--timeout", "10",
             "--max-cost", "5", "--price", "1,2", "--no-cache", "--cache-path", str(tmp_path / "c.sqlite")]  # fmt: skip
    r = _winrate(fault_server, prompts, out, *flags)
    assert r.exit_code == 0, r.output
    assert "4 done; 0 failed" in r.output and "win rate 1.000" in r.output


def test_eval_refuses_the_same_model_as_baseline_and_a_bad_mode(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    prompts = _prompts(tmp_path)
    r = CliRunner().invoke(app, ["eval", "winrate", "--prompts", str(prompts), "--model", "good", "--baseline", "good",
                                 "--api-base", fault_server.base_url, "--out", str(tmp_path / "e")])  # fmt: skip
    assert r.exit_code == 1 and "same model" in r.output and fault_server.requests == 0
    r = CliRunner().invoke(app, ["eval", "harmlessness", "--prompts", str(prompts), "--model", "good", "--baseline", "good",
                                 "--api-base", fault_server.base_url, "--out", str(tmp_path / "h")])  # fmt: skip
    assert r.exit_code == 1 and "same model" in r.output and fault_server.requests == 0
    r = _winrate(fault_server, prompts, tmp_path / "e", "--mode", "majority")
    assert r.exit_code == 1 and "--mode must be" in r.output


def test_eval_failed_judgements_count_as_failed_not_ties_and_a_rerun_redoes_them(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.responder = _judge_good
    fault_server.by_model["judge"] = "401"
    prompts, out = _prompts(tmp_path), tmp_path / "ev"
    r = _winrate(fault_server, prompts, out)
    assert "0 done; 4 failed" in r.output and "0 ties" in r.output and "4 failed." in r.output, (
        r.output
    )
    assert "| 4 | 0 | 0 | 0 | 4 |" in (out / "report.md").read_text()
    fault_server.by_model.clear()
    r = _winrate(fault_server, prompts, out)
    assert "4 done; 0 failed" in r.output and "win rate 1.000" in r.output and "4 wins" in r.output
    paid = fault_server.paid
    r = _winrate(fault_server, prompts, out)
    assert "0 done; 0 failed; 4 already done" in r.output and fault_server.paid == paid


def test_eval_harmlessness_takes_the_job_flags_and_counts_unparseable_answers_failed(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.responder = lambda body, rng: (
        f"{body['model']} answer" if body["model"] in ("after", "before") else "Perhaps."
    )
    prompts, out = _prompts(tmp_path, 2), tmp_path / "h"
    args = ["eval", "harmlessness", "--prompts", str(prompts), "--model", "after", "--judge", "judge",
            "--api-base", fault_server.base_url, "--out", str(out), "-q"]  # fmt: skip
    r = CliRunner().invoke(app, [*args, "--dry-run", "--concurrency", "2", "--max-cost", "1"])
    assert r.exit_code == 0 and "dry run: 2 rows to do" in r.output and fault_server.paid == 0
    r = CliRunner().invoke(app, [*args, "--max-retries", "0", "--timeout", "10"])
    assert "0 done; 2 failed" in r.output, r.output
    assert "(2 unparsed)" in (out / "report.md").read_text()
    fault_server.responder = lambda body, rng: (
        f"{body['model']} answer" if body["model"] in ("after", "before") else "No."
    )
    r = CliRunner().invoke(app, [*args, "--no-cache"])
    assert "2 done; 0 failed" in r.output, r.output
    assert "| privacy | 0% of 2 |" in (out / "report.md").read_text()


@pytest.mark.slow
def test_eval_winrate_with_the_embedded_model_answering_and_a_scripted_judge(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """The model under test is the real embedded SmolLM2 (llama.cpp); baseline and judge are
    scripted: the judge prefers whichever answer is not the baseline's."""

    def reply(body: dict, rng: object) -> str:
        if body["model"] == "base":
            return "BASELINE"
        first = re.findall(r"<<<RESPONSE-A-\w+>>>\n(.*?)\n<<<END", body["messages"][-1]["content"], re.DOTALL)[0]  # fmt: skip
        return "B" if first == "BASELINE" else "A"

    fault_server.responder = reply
    prompts = _prompts(tmp_path, 2)
    out = tmp_path / "ev"
    r = CliRunner().invoke(app, ["eval", "winrate", "--prompts", str(prompts), "--model", "local", "--baseline", "base",
                                 "--judge", "judge", "--api-base", fault_server.base_url, "--mode", "letter",
                                 "--max-tokens", "16", "--out", str(out), "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "2 done; 0 failed" in r.output and "win rate 1.000" in r.output
    recs = [json.loads(x) for x in (out / "prefs.jsonl").read_text().splitlines()]
    answers = [x["response_a"] for x in recs]
    assert all(a.strip() and a != "BASELINE" for a in answers)  # written by the embedded model
    judged = [b for b in fault_server.bodies if b["model"] == "judge"]
    assert len(judged) == 4 and all(
        any(a in b["messages"][-1]["content"] for a in answers) for b in judged
    )
