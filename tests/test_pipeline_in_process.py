"""The pipeline's data stages are library calls in its own process (training stays a
subprocess): no `python -m cai_kit` is spawned for them, their output still goes to their log,
a stage's error stops the pipeline with the command's exit code, and --max-cost (the whole
pipeline's and a stage's own) holds through them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cai_kit.pipeline.recipe import load_recipe
from cai_kit.pipeline.run import stages
from tests.fixtures.fault_server import FaultServer
from tests.test_pipeline import _expand_infer_recipe, _invoke, _teacher

DATA_STAGES = ("expand", "revise", "export-prefs", "infer")


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The argv of every process the pipeline starts (they still run)."""
    seen: list[list[str]] = []
    real = subprocess.Popen

    def record(argv: list[str], *args: Any, **kwargs: Any) -> Any:
        seen.append([str(a) for a in argv])
        return real(argv, *args, **kwargs)

    monkeypatch.setattr("cai_kit.pipeline.run.subprocess.Popen", record)
    return seen


def test_data_stages_spawn_no_cli_process_and_keep_their_logs(
    fault_server: FaultServer, tmp_path: Path, spawned: list[list[str]]
) -> None:
    fault_server.responder = _teacher
    recipe, run = _expand_infer_recipe(tmp_path, fault_server.base_url), tmp_path / "run"
    for stage in DATA_STAGES:
        r = _invoke(str(recipe), "--out", str(run), "--only", stage)
        assert r.exit_code == 0, r.output
    assert spawned == []  # the old pipeline ran `python -m cai_kit ...` for each of them
    for stage in DATA_STAGES:  # the command a user would type, then the command's own lines
        log = (run / "logs" / f"{stage}.log").read_text()
        assert log.startswith("$ cai-kit "), log
        assert " done; " in log or "Wrote " in log, log
    # the manifest keeps the equivalent command: `cai-kit retry-failed RUN/revise` replays it
    manifest = json.loads((run / "revise" / "manifest.json").read_text())
    assert manifest["argv"][:2] == ["cai-kit", "revise"]
    assert (run / "infer" / "inferred.yaml").is_file()


def test_only_training_and_implicit_reward_stay_subprocesses(tmp_path: Path) -> None:
    recipe = load_recipe(Path(__file__).parent.parent / "examples" / "recipes" / "local_tiny.yaml")
    plan = {s.name: s.call is not None for s in stages(recipe, tmp_path, 4, 2)}
    assert {name for name, here in plan.items() if not here} == {
        n for n in plan if n.startswith("train-") or n == "implicit-reward"
    }
    assert plan["revise"] and plan["eval"]


@pytest.mark.slow  # (several seconds: the full run's, not the fast tier's)
def test_a_stage_whose_call_crashes_stops_the_pipeline_and_touches_no_other_stage(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_process(*args: Any, **kwargs: Any) -> Any:  # train-sft must never start
        raise AssertionError(f"a process was started: {args[0]}")

    monkeypatch.setattr("cai_kit.pipeline.run.subprocess.Popen", no_process)
    fault_server.responder = _teacher
    recipe, run = _expand_infer_recipe(tmp_path, fault_server.base_url), tmp_path / "run"
    for stage in ("expand", "revise"):
        assert _invoke(str(recipe), "--out", str(run), "--only", stage).exit_code == 0
    revisions = (run / "revise" / "revisions.jsonl").read_bytes()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in export")

    monkeypatch.setattr("cai_kit.stages.export.export", broken)
    r = _invoke(str(recipe), "--out", str(run))
    assert r.exit_code == 1, r.output
    assert "Stage export-sft failed (exit 1; log: " in r.output
    assert "skip expand (done)" in r.output and "skip revise (done)" in r.output
    log = (run / "logs" / "export-sft.log").read_text()
    assert "RuntimeError: a bug in export" in log  # its traceback in its log, as a crash leaves
    assert "a bug in export" in r.output  # the end of the log, shown under the FAILED line
    assert not (run / ".stages" / "export-sft.done").exists()
    assert not (run / "logs" / "train-sft.log").exists()  # no later stage started
    assert (run / "revise" / "revisions.jsonl").read_bytes() == revisions


@pytest.mark.parametrize("stage_cap", [None, 0.3])
def test_the_pipelines_cap_and_a_stages_own_hold_for_an_in_process_stage(
    fault_server: FaultServer, tmp_path: Path, stage_cap: float | None
) -> None:
    """--max-cost 0.3 for the whole pipeline, or $5 with `stage_max_cost: {revise: 0.3}`: revise,
    run in the pipeline's process, is stopped under $0.3 and RUN/budget.json holds what it spent."""
    fault_server.responder, fault_server.usage_by_length = _teacher, True
    recipe, run = _expand_infer_recipe(tmp_path, fault_server.base_url), tmp_path / "run"
    text = recipe.read_text().replace("expand: {n: 6, per_call: 3, shots: 2}\n", "")
    text = text.replace("api_base: '", "price: '1000,1000', api_base: '")
    recipe.write_text(text + (f"stage_max_cost: {{revise: {stage_cap}}}\n" if stage_cap else ""))
    cap = "5" if stage_cap else "0.3"
    r = _invoke(str(recipe), "--out", str(run), "--max-cost", cap, "--only", "revise")
    billed = fault_server.billed_usd(1000, 1000)
    assert r.exit_code == 4, r.output
    assert "Stage revise was stopped by the cap" in r.output and "in this command" in r.output
    reached = "the stage's --max-cost $0.3 reached" if stage_cap else "--max-cost $0.3 reached"
    assert reached in r.output, r.output
    assert 0 < billed <= 0.3 + 1e-9
    ledger = json.loads((run / "budget.json").read_text())  # the pipeline's: all it spent
    assert ledger["cap"] == float(cap) and ledger["spent"] == pytest.approx(billed)
    assert ledger["stopped_by"] == (None if stage_cap else "revise")
    assert not (run / ".stages" / "revise.done").exists()
