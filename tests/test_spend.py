"""Money is never silently zero: a run on a server with no price and no reported cost says
"cost unknown" (summary line, progress line, manifest.json, judge-report, the pipeline report),
while a priced run, a run whose provider reports its cost, and a local model say what they cost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from tests.fixtures.fault_server import FaultServer


def _generate(server: FaultServer, tmp_path: Path, name: str, *extra: str) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """`cai-kit generate` of 2 prompts on the scripted server: (output, manifest stats)."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(2)))
    out = tmp_path / name
    r = CliRunner().invoke(app, ["generate", str(prompts), "--model", "m", "--api-base", server.base_url,
                                 "--out", str(out), *extra])  # fmt: skip
    assert r.exit_code == 0, r.output
    return " ".join(r.output.split()), json.loads((out / "manifest.json").read_text())["stats"]


def test_an_unpriced_run_says_cost_unknown_in_its_summary_progress_and_manifest(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    out, stats = _generate(fault_server, tmp_path, "unpriced")  # no --price, no usage.cost
    assert fault_server.paid == 2 and "$0.0000" not in out, out
    assert "tokens, cost unknown (2 calls with no price: pass --price IN,OUT" in out  # summary
    assert "tok | cost unknown (2 calls with no price) |" in out  # the progress line
    assert stats["cost"] is None and stats["cost_known"] is False
    assert stats["unpriced_calls"] == 2 and stats["priced_cost"] == 0.0
    assert stats["calls"] == 2  # the rest of the manifest reads as before


@pytest.mark.parametrize(
    ("extra", "report_cost"), [(("--price", "1000,1000"), None), ((), 0.01)], ids=["price", "reported"]
)  # fmt: skip
def test_a_priced_or_reported_run_says_what_it_cost(
    fault_server: FaultServer, tmp_path: Path, extra: tuple[str, ...], report_cost: float | None
) -> None:
    fault_server.report_cost = report_cost  # $0.01 a call, or 20 tokens x $1000 per million
    out, stats = _generate(fault_server, tmp_path, "priced", *extra)
    spent = 0.02 if report_cost else 0.04
    assert f"tokens, ${spent:.4f}" in out and f"tok | ${spent:.4f} |" in out, out
    assert "cost unknown" not in out
    assert stats["cost"] == pytest.approx(spent) and stats["cost_known"] is True
    assert stats["unpriced_calls"] == 0 and "priced_cost" not in stats


def test_a_local_model_stays_free(tmp_path: Path) -> None:
    """A model on this machine costs nothing: $0.0000, known (not "cost unknown")."""
    from cai_kit.engine.core import Engine, EngineConfig, _Budget
    from cai_kit.engine.pricing import price_for_backend
    from cai_kit.llm.base import Completion, Usage

    class Local:
        kind, model = "local", "local"

    engine = Engine(EngineConfig(use_cache=False))
    state = _Budget(price_for_backend(Local()))
    engine._account(state, Completion(text="hi", usage=Usage(5, 3)), 0.0)  # no cost field
    stats = engine.stats.as_dict()
    assert stats["cost"] == 0.0 and stats["cost_known"] is True and stats["unpriced_calls"] == 0


def test_judge_report_and_the_pipeline_report_say_cost_unknown_for_an_unpriced_judge(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    from cai_kit.pipeline.report import spend

    def prefers_yes(body: dict[str, Any], rng: object) -> str:  # in either order: decisive
        text = body["messages"][-1]["content"]
        return "A" if text.find("Yes.") < text.find("No.") else "B"

    fault_server.responder = prefers_yes
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"q{i}", "response_a": "Yes.", "response_b": "No."}) + "\n"
                             for i in range(2)))  # fmt: skip
    run = tmp_path / "run"
    for name, extra in (("unpriced", ()), ("priced", ("--price", "1000,1000"))):
        r = CliRunner().invoke(app, ["judge", str(pairs), "--judge-model", "j", "--api-base", fault_server.base_url,
                                     "--mode", "letter", "--out", str(run / name), "-q", "--no-cache", *extra])  # fmt: skip
        assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["judge-report", str(run / "unpriced")])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert "cost unknown (4 calls with no price" in said and "0.000000" not in said, said
    rep = json.loads((run / "unpriced" / "judge_report.json").read_text())
    assert rep["cost_per_labelled_pair"] is None and "cost unknown" in rep["cost_note"]
    r = CliRunner().invoke(app, ["judge-report", str(run / "priced")])
    assert r.exit_code == 0 and "0.040000" in r.output, r.output  # 2 calls x $0.02 a pair

    table = "\n".join(spend(run))
    assert "| `priced/` | judge | 4 | $0.0800 |" in table, table
    assert "| `unpriced/` | judge | 4 | cost unknown (4 calls with no price) |" in table, table
    assert "| **total** | | | $0.0800 + cost unknown (4 calls with no price: pass --price" in table
