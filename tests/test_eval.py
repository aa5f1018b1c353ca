"""Win-rate statistics by hand, and `cai-kit eval winrate` end to end against a scripted server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tests.fixtures.fault_server as fs
from cai_kit.cli.main import app
from cai_kit.eval import bootstrap_ci, win_rate
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
    from cai_kit.harmlessness import parse_yes_no

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
