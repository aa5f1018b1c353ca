"""`cai-kit judge-report` shows the known judge biases (first-shown and longer-response shares)
and reads gold labels in both layouts, with judges scripted on the provider test server."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from tests.fixtures.fault_server import FaultServer


def _shown(body: dict[str, Any]) -> tuple[str, str]:
    text = body["messages"][-1]["content"]
    a, b = re.findall(r"<<<RESPONSE-[AB]-\w+>>>\n(.*?)\n<<<END-RESPONSE", text, re.DOTALL)
    return a, b


def _judge_run(server: FaultServer, tmp_path: Path, rows: list[dict[str, str]]) -> Path:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["judge", str(pairs), "--judge-model", "j", "--api-base", server.base_url,
                                 "--mode", "letter", "--out", str(out), "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    return out


# Half the pairs have the longer answer first, half second; the short one is the better one.
ROWS = [
    {"prompt": f"q{i}", "response_a": "No." if i % 2 else "No, and here is a long padded reason " * 3,
     "response_b": "No, and here is a long padded reason " * 3 if i % 2 else "No."}
    for i in range(6)
]  # fmt: skip


def test_a_judge_that_always_picks_the_longer_answer_shows_a_100_percent_longer_share(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.responder = lambda body, rng: (
        "A" if len(_shown(body)[0]) > len(_shown(body)[1]) else "B"
    )
    out = _judge_run(fault_server, tmp_path, ROWS)
    r = CliRunner().invoke(app, ["judge-report", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "judge_report.json").read_text())
    assert rep["longer_share"] == 1.0 and rep["longer_decisive"] == 6
    assert rep["first_shown_share"] == 0.5 and rep["first_shown_decisive"] == 12
    assert rep["position_consistency"] == 1.0  # consistent, and still length-biased
    assert "won by the longer response" in r.output and "100.0% of 6" in r.output
    assert "68%" in r.output  # the reference value is printed next to it
    assert "may reward length" in " ".join(r.output.split())


def test_a_judge_that_always_answers_a_shows_a_100_percent_first_shown_share(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.responder = lambda body, rng: "A"
    out = _judge_run(fault_server, tmp_path, ROWS)
    r = CliRunner().invoke(app, ["judge-report", str(out)])
    rep = json.loads((out / "judge_report.json").read_text())
    assert rep["first_shown_share"] == 1.0 and rep["longer_share"] is None  # all ties
    assert "first-shown response won 100%" in " ".join(r.output.split())


@pytest.mark.parametrize("conversational", [False, True])
def test_gold_accepts_trl_prompt_chosen_rejected(
    fault_server: FaultServer, tmp_path: Path, conversational: bool
) -> None:
    fault_server.responder = lambda body, rng: (
        "A" if len(_shown(body)[0]) < len(_shown(body)[1]) else "B"
    )
    out = _judge_run(fault_server, tmp_path, ROWS)  # a judge that prefers the short answer
    gold = tmp_path / "gold.jsonl"
    with open(gold, "w") as fh:
        for i, row in enumerate(ROWS[:4]):
            short, long = sorted((row["response_a"], row["response_b"]), key=len)
            chosen, rejected = (short, long) if i < 3 else (long, short)  # gold disagrees once
            if conversational:
                fh.write(json.dumps({"prompt": [{"role": "user", "content": row["prompt"]}],
                                     "chosen": [{"role": "assistant", "content": chosen}],
                                     "rejected": [{"role": "assistant", "content": rejected}]}) + "\n")  # fmt: skip
            else:
                fh.write(
                    json.dumps({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected})
                    + "\n"
                )
    r = CliRunner().invoke(app, ["judge-report", str(out), "--gold", str(gold)])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "judge_report.json").read_text())
    assert rep["gold_matched"] == 4 and rep["gold_agreement"] == pytest.approx(0.75)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "chosen": "x"}) + "\n")
    r = CliRunner().invoke(app, ["judge-report", str(out), "--gold", str(bad)])
    assert r.exit_code == 1 and "bad.jsonl:1" in r.output and "chosen and rejected" in r.output


def _no_none(output: str) -> None:
    words = set(re.findall(r"\w+", output))
    assert not words & {"None", "nan", "NaN"}, output


def test_judge_report_says_n_a_and_why_instead_of_none(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """Issue 25: tokens and cost per labelled pair printed a bare `None`."""
    fault_server.default = "401"  # every judgement fails: no labelled pair
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:2]))
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["judge", str(pairs), "--judge-model", "j", "--api-base", fault_server.base_url,
                                 "--mode", "letter", "--out", str(out), "-q"])  # fmt: skip
    assert "0 done; 2 failed" in r.output, r.output
    r = CliRunner().invoke(app, ["judge-report", str(out)])
    assert r.exit_code == 0, r.output
    _no_none(r.output)
    text = " ".join(r.output.split())
    assert "tokens / labelled pair │ n/a (no pair labelled A or B)" in text, r.output
    assert "cost / labelled pair (USD) │ n/a (no pair labelled A or B)" in text, r.output
    assert "tie rate │ n/a" in text, r.output  # not 0.0%: no verdict to count ties among

    fault_server.default = "ok"
    fault_server.responder = lambda body, rng: "A" if len(_shown(body)[0]) > len(_shown(body)[1]) else "B"  # fmt: skip
    r = CliRunner().invoke(app, ["judge", str(pairs), "--judge-model", "j", "--api-base", fault_server.base_url,
                                 "--mode", "letter", "--out", str(out), "-q"])  # fmt: skip
    assert "2 done; 0 failed" in r.output, r.output
    r = CliRunner().invoke(app, ["judge-report", str(out)])
    assert "tokens / labelled pair │ 40 " in " ".join(r.output.split()), r.output  # 2 calls of 20
    r = CliRunner().invoke(app, ["judge", str(pairs), "--judge-model", "j", "--api-base", fault_server.base_url,
                                 "--mode", "letter", "--out", str(out), "-q"])  # fmt: skip
    assert "0 done; 0 failed; 2 already done" in r.output, r.output  # the manifest: this run's
    r = CliRunner().invoke(app, ["judge-report", str(out)])
    _no_none(r.output)
    assert "n/a (the last run reused earlier work" in " ".join(r.output.split()), r.output
    (out / "manifest.json").unlink()  # records alone (e.g. copied from elsewhere)
    r = CliRunner().invoke(app, ["judge-report", str(out)])
    assert r.exit_code == 0, r.output
    _no_none(r.output)
    assert "n/a (no usage recorded)" in " ".join(r.output.split()), r.output
