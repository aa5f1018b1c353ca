"""Reasoning teachers and judges on the paths issue 30's first tests left out, through the CLI
against the scripted providers (`fixtures/openai_rules.py`, `fixtures/thinking_rules.py`): the
litellm route's start-time checks, a Gemini 2.5 Pro judge that cannot stop thinking, `eval
rubric`, the trainers' judges and the pipeline's teacher. Each asserts 0 failed rows or steps
and the tokens and cost reported equal to what the server billed."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.engine.pricing import price_for
from tests.fixtures.fault_server import FaultServer, billed_tokens
from tests.test_reasoning_openai import _billed, _prompts, _reported, _rows, teacher


def _pairs(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"question {i}", "response_a": f"a {i}",
                                        "response_b": f"b {i}"}) + "\n" for i in range(n)))  # fmt: skip
    return path


# --- the litellm route: an effort the model does not take is refused at start ----------------


@pytest.mark.parametrize("dry", [[], ["--dry-run"]])
def test_an_effort_claude_does_not_take_is_one_sentence_at_start_on_the_litellm_route(
    provider_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dry: list[str]
) -> None:
    """Old code: `backend.reasoning` is None for litellm, so the check passed and every row
    failed at its first call (ConfigError per row)."""
    monkeypatch.setenv("ANTHROPIC_API_BASE", provider_server.base_url.removesuffix("/v1"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-000000000000")
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-test-key")
    r = CliRunner().invoke(app, ["generate", str(_prompts(tmp_path / "p.jsonl", 3)), "--model",
                                 "anthropic/claude-opus-4-6", "--out", str(tmp_path / "g"),
                                 "--reasoning-effort", "minimal", *dry])  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "claude-opus-4-6 takes the reasoning effort none, low, medium, high or max, not " \
        "'minimal'." in r.output  # fmt: skip
    assert r.output.count("Error:") == 1 and provider_server.requests == 0
    r = CliRunner().invoke(app, ["judge", str(_pairs(tmp_path / "pairs.jsonl", 1)), "--out",
                                 str(tmp_path / "j"), "--judge-model", "gemini/gemini-2.5-pro",
                                 "--reasoning-effort", "none", *dry])  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "gemini-2.5-pro takes the reasoning effort minimal" in r.output
    assert provider_server.requests == 0


def test_claudes_own_max_effort_is_taken_on_the_litellm_route(
    provider_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old code: `--reasoning-effort max` (Opus/Sonnet 4.6's highest, docs/backends.md) was
    refused at start as not one of OpenAI's values; it is sent as adaptive thinking."""
    monkeypatch.setenv("ANTHROPIC_API_BASE", provider_server.base_url.removesuffix("/v1"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-000000000000")
    r = CliRunner().invoke(app, ["generate", str(_prompts(tmp_path / "p.jsonl", 2)), "--model",
                                 "anthropic/claude-opus-4-6", "--out", str(tmp_path / "g"),
                                 "--reasoning-effort", "max", "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "2 done; 0 failed" in r.output
    assert {json.dumps(b["output_config"]) for b in provider_server.bodies} == {'{"effort": "max"}'}
    tokens = sum(sum(billed_tokens(u)) for u in provider_server.billed)
    assert _reported(r.output)[0] == tokens


@pytest.mark.parametrize(("kind", "flag"), [("grpo", "--reward-judge"), ("ppo", "--reward-judge"),
                                           ("online-dpo", "--judge")])  # fmt: skip
def test_a_trainers_litellm_judge_is_checked_by_the_litellm_routes_own_rules(
    provider_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str,
    flag: str,
) -> None:  # fmt: skip
    """Old code: the trainers asked OpenAI's table (`reasoning_rules`), which reads litellm's
    map as "low, medium, high" for Opus 4.6, and so refused the `none` and `max` the litellm
    route sends, in a sentence that disagreed with every other command's."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-000000000000")
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi\n")
    r = CliRunner().invoke(app, ["train", kind, str(prompts), flag, "anthropic/claude-opus-4-6",
                                 "--reasoning-effort", "minimal", "--out", str(tmp_path / "o")])  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "claude-opus-4-6 takes the reasoning effort none, low, medium, high or max, not " \
        "'minimal'." in r.output  # fmt: skip
    assert provider_server.requests == 0


# --- a judge that cannot stop thinking gets room for its letter --------------------------------


def test_a_gemini_2_5_pro_judge_thinks_its_least_budget_and_still_answers(
    provider_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gemini 2.5 Pro cannot turn thinking off and thinks dynamically by default; a verdict's
    4-token cap was spent thinking (old code: the judge's LOWEST effort became None on the
    litellm route, so no budget was sent and every verdict came back empty)."""
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-test-key")
    provider_server.responder = lambda body, rng: "A"
    api_base = provider_server.base_url.removesuffix("/v1") + "/v1beta"
    out = tmp_path / "j"
    args = ["judge", str(_pairs(tmp_path / "pairs.jsonl", 2)), "--out", str(out), "--judge-model",
            "litellm:gemini/gemini-2.5-pro", "--api-base", api_base, "-q"]  # fmt: skip
    dry = CliRunner().invoke(app, [*args, "--dry-run"])  # the preview prices the cap sent
    assert dry.exit_code == 0 and f"{4 * (4 + 128)} out" in dry.output, dry.output
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "2 done; 0 failed" in r.output
    assert all(x["status"] == "ok" for x in _rows(out / "prefs.jsonl"))
    from tests.fixtures.thinking_rules import gemini_config

    for body in provider_server.bodies:  # 2.5 Pro's least budget, and the letter's room on top
        config = gemini_config(body)
        assert config["thinkingConfig"]["thinkingBudget"] == 128
        assert config["maxOutputTokens"] > 128
    price = price_for("gemini/gemini-2.5-pro", "litellm")
    assert price is not None and len(provider_server.billed) == 4
    billed = [billed_tokens(u) for u in provider_server.billed]
    tokens, cost = sum(p + c for p, c in billed), sum(price.cost(p, c) for p, c in billed)
    assert _reported(r.output) == (tokens, pytest.approx(cost, abs=5e-5))


# --- eval rubric and winrate with reasoning judges ----------------------------------------


def _billed_per_model(server: FaultServer) -> tuple[int, float]:
    """(tokens, USD) the server billed, each call at its own model's list price."""
    tokens, cost = 0, 0.0
    for body, u in zip(server.bodies, server.billed, strict=True):
        price = price_for(f"openai/{body['model']}", "openai-compat")
        assert price is not None
        tokens += u["prompt_tokens"] + u["completion_tokens"]
        cost += price.cost(u["prompt_tokens"], u["completion_tokens"])
    return tokens, cost


@pytest.fixture
def openai(fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> FaultServer:
    monkeypatch.setenv("OPENAI_BASE_URL", fault_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    fault_server.responder = teacher
    return fault_server


def test_eval_rubric_with_a_reasoning_judge_fails_no_score_and_reports_the_bill(
    openai: FaultServer, tmp_path: Path
) -> None:
    openai.responder = lambda body, rng: "Yes" if body["model"] == "o4-mini" else teacher(body, rng)
    r = CliRunner().invoke(app, ["eval", "rubric", "--prompts", str(_prompts(tmp_path / "p.jsonl", 3)),
                                 "--model", "openai/gpt-5-mini", "--judge", "openai/o4-mini",
                                 "--out", str(tmp_path / "ev"), "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "3 done; 0 failed" in r.output and "pass rate 1.000" in r.output
    judged = [b for b in openai.bodies if b["model"] == "o4-mini"]
    assert judged and all("logprobs" not in b and "temperature" not in b for b in judged)
    assert {b["reasoning_effort"] for b in judged} == {"low"}  # a Yes/No: the least it takes
    assert {b["max_completion_tokens"] for b in judged} == {2 + 4096}  # its answer + low's room
    tokens, cost = _billed_per_model(openai)
    assert _reported(r.output) == (tokens, pytest.approx(cost, abs=1e-4))
    reasoning = sum(u["completion_tokens_details"]["reasoning_tokens"] for u in openai.billed)
    assert f"({reasoning} reasoning)" in r.output


def test_eval_winrate_with_a_reasoning_judge_reports_what_was_billed(
    openai: FaultServer, tmp_path: Path
) -> None:
    """test_reasoning_openai.py checks its verdicts; here the bill of all three models."""
    r = CliRunner().invoke(app, ["eval", "winrate", "--prompts", str(_prompts(tmp_path / "p.jsonl", 3)),
                                 "--model", "openai/gpt-5-mini", "--baseline", "openai/gpt-5-nano",
                                 "--judge", "openai/o4-mini", "--out", str(tmp_path / "ev"), "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "3 done; 0 failed" in r.output
    tokens, cost = _billed_per_model(openai)
    assert _reported(r.output) == (tokens, pytest.approx(cost, abs=1e-4))


# --- the trainers' judges: a reasoning model, a tiny policy, two steps ---------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cai_kit.train.common import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def judge_reply(body: dict[str, Any], rng: random.Random) -> str:
    """A pairwise verdict's letter, else a score's Yes."""
    return rng.choice("AB") if "<<<RESPONSE-A-" in body["messages"][-1]["content"] else "Yes"


def _judged_like_a_reasoning_model(server: FaultServer, history: list[dict[str, Any]]) -> None:
    """Every judge call at gpt-5-mini's least effort with room for its answer, none failed, and
    the run's judge_calls and judge_cost equal to the server's bills."""
    assert server.bodies and len(server.bodies) == len(server.billed)
    for body in server.bodies:
        assert body["reasoning_effort"] == "minimal" and "max_tokens" not in body
        assert body["max_completion_tokens"] > 1024 and "temperature" not in body
        assert "logprobs" not in body and "top_p" not in body
    logged = [h for h in history if "judge_calls" in h]
    assert logged and all(h.get("judge_failed", h.get("failed")) == 0 for h in logged)
    tokens, cost = _billed(server, "openai/gpt-5-mini")
    assert tokens > 0 and logged[-1]["judge_calls"] == len(server.billed)
    assert logged[-1]["judge_cost"] == pytest.approx(cost, rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["grpo", "ppo", "online-dpo"])
def test_a_trainer_with_a_reasoning_judge_fails_no_step_and_counts_what_was_billed(
    tiny: Path, tmp_path: Path, openai: FaultServer, kind: str
) -> None:
    openai.responder = judge_reply
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi\nSay bye\n")
    out = tmp_path / kind
    common = ["train", kind, str(prompts), "--model", f"hf:{tiny}", "--out", str(out),
              "--max-retries", "0"]  # fmt: skip
    args = {
        "grpo": ["--reward-judge", "openai/gpt-5-mini", "--max-steps", "2", "--num-generations",
                 "2", "--batch-size", "2", "--max-completion-length", "4"],
        "ppo": ["--reward-judge", "openai/gpt-5-mini", "--steps", "2", "--batch-size", "2",
                "--mini-batch-size", "2", "--max-new-tokens", "4"],
        "online-dpo": ["--judge", "openai/gpt-5-mini", "--steps", "2", "--batch-size", "2",
                       "--max-new-tokens", "4", "--lr", "1e-3"],
    }[kind]  # fmt: skip
    r = CliRunner().invoke(app, [*common, *args])
    assert r.exit_code == 0, r.output
    name = "ppo_history.json" if kind == "ppo" else "log_history.json"
    history = json.loads((out / name).read_text())
    _judged_like_a_reasoning_model(openai, history)
    if kind == "online-dpo":
        assert all(h["failed"] == 0 and h["decisive"] + h["ties"] == 2 for h in history)


# --- the pipeline with a reasoning teacher ---------------------------------------------------


@pytest.mark.slow
def test_the_pipeline_with_a_gpt5_mini_teacher_finishes_with_no_failed_row(
    tiny: Path, tmp_path: Path, openai: FaultServer
) -> None:
    """A recipe whose teacher is a reasoning model (responses, critiques, judging, eval
    judging) and whose student is a tiny model trained here: every stage runs, no row fails,
    and every teacher call is one gpt-5-mini takes (its cap field, no sampling fields)."""
    prompts = _prompts(tmp_path / "p.jsonl", 6)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: reasoning\nprompts: {prompts}\neval_fraction: 0.34\nlimit: 4\n"
        f"student: {{model: 'hf:{tiny}'}}\nteacher: {{model: openai/gpt-5-mini}}\n"
        "preferences: judge\nrevise: {rounds: 1, max_tokens: 16}\n"
        "sft: {max_steps: 1, batch_size: 2, max_length: 64}\n"
        "prefs: {k: 2, max_tokens: 8}\n"
        "dpo: {max_steps: 1, batch_size: 2, max_length: 64}\n"
        "eval: {limit: 2, max_tokens: 8}\n"
    )
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["pipeline", str(recipe), "--out", str(run)])
    assert r.exit_code == 0, r.output
    assert "Some rows failed" not in r.output
    for rows in ("revise/revisions.jsonl", "prefs/prefs.jsonl", "eval/prefs.jsonl"):
        got = _rows(run / rows)
        assert got and all(x["status"] == "ok" for x in got), rows
    assert openai.bodies and all(b["model"] == "gpt-5-mini" for b in openai.bodies)
    for body in openai.bodies:
        assert "max_completion_tokens" in body and "max_tokens" not in body
        assert "temperature" not in body and "top_p" not in body and "logprobs" not in body
    efforts = {b["reasoning_effort"] for b in openai.bodies}
    assert efforts == {"medium", "minimal"}  # the teacher's default; its verdicts' least
    # what the stages kept is what the server billed (the student's calls cost nothing)
    stats = [json.loads(m.read_text())["stats"] for m in run.glob("**/manifest.json")]
    _, cost = _billed(openai, "openai/gpt-5-mini")
    assert sum(s["cost"] for s in stats) == pytest.approx(cost, abs=1e-5)
    reasoning = sum(u["completion_tokens_details"]["reasoning_tokens"] for u in openai.billed)
    assert sum(s["reasoning_tokens"] for s in stats) == reasoning


@pytest.mark.slow
def test_two_hf_models_load_at_once_in_a_fresh_process(tiny: Path) -> None:
    """`eval winrate --model hf:A --baseline hf:B` (the pipeline's eval) loads both models on
    worker threads at once; transformers' lazy first import is not thread-safe ("cannot import
    name 'AutoModelForCausalLM'"), so the first import is made under one process-wide lock.
    In a subprocess: in this one transformers is already imported."""
    import subprocess
    import sys

    code = f"""
import threading
from pathlib import Path
from cai_kit.llm.local import TransformersBackend
errors = []
def load(b):
    try:
        b._load()
    except Exception as exc:
        errors.append(repr(exc))
backends = [TransformersBackend(Path({str(tiny)!r}), f"hf:{{i}}") for i in range(2)]
threads = [threading.Thread(target=load, args=(b,)) for b in backends]
[t.start() for t in threads]
[t.join() for t in threads]
assert not errors, errors
assert all(b._model is not None for b in backends)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
