"""The critique→revise loop end to end on real models, resume, and exports accepted by TRL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.constitution import load_constitution
from cai_kit.engine import EngineConfig
from cai_kit.llm import GenParams, get_backend
from cai_kit.prompts import load_prompts
from cai_kit.records import RevisionRecord
from cai_kit.stages.revise import ReviseConfig, critic_found_no_problem, run_revise
from tests.fixtures.fault_server import FaultServer

EXAMPLES = Path(__file__).parent.parent / "examples"
SHORT = GenParams(temperature=0, max_tokens=24)


def _records(run: Path) -> list[RevisionRecord]:
    return [
        RevisionRecord.model_validate_json(x)
        for x in (run / "revisions.jsonl").read_text().splitlines()
    ]


def _cfg(rounds: int = 1, **kw: object) -> ReviseConfig:
    return ReviseConfig(constitution=load_constitution("harmless"), rounds=rounds, response_params=SHORT,
                        critique_params=SHORT, revision_params=SHORT, **kw)  # type: ignore[arg-type]  # fmt: skip


def _revise(
    model: str, out: Path, n: int = 2, cfg: ReviseConfig | None = None, api_base: str | None = None
):  # type: ignore[no-untyped-def]
    backend = get_backend(model, api_base=api_base)
    prompts = load_prompts(str(EXAMPLES / "red_team_prompts.jsonl"), limit=n).records
    return run_revise(prompts, cfg or _cfg(), responder=backend, critic=backend, models={"responder": model, "critic": model},
                      out_dir=out, engine_config=EngineConfig(quiet=True, cache_path=out / "cache.sqlite"))  # fmt: skip


def _check_structure(records: list[RevisionRecord], rounds: int) -> None:
    c = load_constitution("harmless")
    for r in records:
        assert r.status == "ok" and r.initial_response and r.final_response
        assert (
            r.provenance.constitution == "harmless"
            and r.provenance.constitution_hash == c.content_hash
        )
        assert len(r.steps) == rounds == len(r.provenance.principle_ids)
        for step in r.steps:
            # the CAI paper's shape: the critique request continues the conversation
            assert step.critique_messages[-1].content.startswith("Critique request: ")
            assert step.critique_messages[-2].role == "assistant"
            assert step.revision_messages and step.revision_messages[-1].content.startswith(
                "Revision request: "
            )
            assert step.revision_messages[-2].content == step.critique
            assert step.principle_id in {p.id for p in c.principles}


@pytest.mark.slow
def test_revise_end_to_end_on_the_embedded_model(tmp_path: Path) -> None:
    summary = _revise("local", tmp_path, n=2, cfg=_cfg(rounds=2))
    assert summary.done == 2
    _check_structure(_records(tmp_path), rounds=2)


@pytest.mark.slow
def test_revise_through_the_llama_cpp_server(tmp_path: Path, llama_server) -> None:  # type: ignore[no-untyped-def]
    summary = _revise(llama_server.model, tmp_path, n=2, api_base=llama_server.base_url)
    assert summary.done == 2
    _check_structure(_records(tmp_path), rounds=1)


def test_resume_after_interruption_finishes_only_what_is_missing(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    first = _revise("m", tmp_path, n=4, api_base=fault_server.base_url)
    paid = fault_server.paid
    assert first.done == 4 and paid == 4 * 3  # response, critique, revision
    lines = (tmp_path / "revisions.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "revisions.jsonl").write_text(
        "".join(lines[:2]) + lines[2][:40]
    )  # 2 kept + a torn line
    with pytest.warns(UserWarning, match="torn"):
        second = _revise("m", tmp_path, n=4, api_base=fault_server.base_url)
    assert second.already_done == 2 and second.done == 2
    assert fault_server.paid == paid  # the lost rows came from the call cache: nothing paid twice
    assert len({r.id for r in _records(tmp_path)}) == len(_records(tmp_path)) == 4


def test_rounds_zero_keeps_the_initial_response(fault_server: FaultServer, tmp_path: Path) -> None:
    _revise("m", tmp_path, n=2, cfg=_cfg(rounds=0), api_base=fault_server.base_url)
    for r in _records(tmp_path):
        assert r.steps == [] and r.final_response == r.initial_response
    assert fault_server.paid == 2


def test_all_mode_visits_every_principle_and_responses_from_input_are_used(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "q", "response": "given answer"}) + "\n")
    result = CliRunner().invoke(app, ["revise", str(prompts), "--model", "m", "--api-base", fault_server.base_url,
                                      "--principles", "all", "--out", str(tmp_path / "o"), "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    (r,) = _records(tmp_path / "o")
    n = len(load_constitution("harmless").principles)
    assert r.initial_response == "given answer" and len(r.steps) == n
    assert fault_server.paid == 2 * n  # no call for the initial response


def test_early_stop_skips_the_revision_when_the_critic_finds_no_problem(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tests.fixtures.fault_server as fs

    monkeypatch.setattr(fs, "reply_text", lambda body: "Looks fine.\nProblem: no")
    _revise("m", tmp_path, n=1, cfg=_cfg(rounds=2, early_stop=True), api_base=fault_server.base_url)
    (r,) = _records(tmp_path)
    assert all(s.revision is None and "no problem" in (s.skipped_reason or "") for s in r.steps)
    assert r.final_response == r.initial_response
    assert critic_found_no_problem("bad stuff.\n**Problem:** yes") is False
    assert critic_found_no_problem("no verdict here") is None


def test_failed_calls_make_failed_records_not_empty_rows(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.default = "404"
    summary = _revise("m", tmp_path, n=2, api_base=fault_server.base_url)
    assert summary.failed == 2
    assert all(
        r.status == "failed" and "does not exist" in (r.error or "") for r in _records(tmp_path)
    )


def test_cli_readme_example_and_exports(fault_server: FaultServer, tmp_path: Path) -> None:
    runner = CliRunner()
    run = tmp_path / "run"
    args = ["revise", str(EXAMPLES / "red_team_prompts.jsonl"), "--constitution", "harmless", "--rounds", "1",
            "--limit", "3", "--model", "m", "--api-base", fault_server.base_url, "--out", str(run)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 done" in result.output
    for kind in ("sft", "prefs"):
        r = runner.invoke(app, ["export", kind, str(run), "--out", str(tmp_path / kind)])
        assert r.exit_code == 0, r.output
    sft = [json.loads(x) for x in (tmp_path / "sft" / "train.jsonl").read_text().splitlines()]
    assert len(sft) == 3 and sft[0]["messages"][-1]["role"] == "assistant"
    card = (tmp_path / "sft" / "README.md").read_text()
    assert "harmless" in card and load_constitution("harmless").content_hash in card
