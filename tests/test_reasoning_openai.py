"""OpenAI's reasoning models (gpt-5, gpt-5-mini, gpt-5.1, the o-series) through the CLI, against
the scripted server enforcing OpenAI's rules for them (`fixtures/openai_rules.py`: refused
fields with the real status and error body, hidden reasoning billed as output and counted
against `max_completion_tokens`, an empty answer when it eats the cap)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.engine.pricing import price_for
from cai_kit.llm.openai_compat import _status_error
from cai_kit.stages.expand import KEEP_SYSTEM
from tests.fixtures.fault_server import FaultServer, default_reply
from tests.test_expand import scripted_generator


def _prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(n)))
    return path


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _cli(*args: str, code: int | tuple[int, ...] = 0) -> Any:
    r = CliRunner().invoke(app, [*args, "-q"])
    codes = code if isinstance(code, tuple) else (code,)
    assert r.exit_code in codes, r.output + repr(r.exception)
    return r


def teacher(body: dict[str, Any], rng: random.Random) -> str:
    """A judge's letter for a verdict, else a drawn answer."""
    if "<<<RESPONSE-A-" in body["messages"][-1]["content"]:
        return rng.choice("AB")
    return default_reply(body, rng)


@pytest.fixture
def openai(fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> FaultServer:
    monkeypatch.setenv("OPENAI_BASE_URL", fault_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    fault_server.responder = teacher
    return fault_server


def _billed(server: FaultServer, model: str) -> tuple[int, float]:
    """(tokens, USD) the server billed, at the model's list price."""
    price = price_for(model, "openai-compat")
    assert price is not None
    p = sum(u["prompt_tokens"] for u in server.billed)
    c = sum(u["completion_tokens"] for u in server.billed)
    return p + c, price.cost(p, c)


def _reported(output: str) -> tuple[int, float]:
    m = re.search(r"(\d+) tokens(?: \([^)]*\))?, \$(\d+\.\d+)", output)
    assert m, output
    return int(m[1]), float(m[2])


def test_revise_with_gpt5_mini_makes_no_failed_rows_and_reports_what_was_billed(
    openai: FaultServer, tmp_path: Path
) -> None:
    """Old code: every row failed with 400 "Unsupported parameter: 'max_tokens' ..."."""
    out = tmp_path / "r"
    r = _cli("revise", str(_prompts(tmp_path / "p.jsonl", 3)), "--model", "openai/gpt-5-mini",
             "--rounds", "1", "--out", str(out))  # fmt: skip
    assert "3 done; 0 failed" in r.output
    assert all(x["status"] == "ok" for x in _rows(out / "revisions.jsonl"))
    for body in openai.bodies:  # what OpenAI takes: its cap field, the effort, no sampling
        assert "max_tokens" not in body and "temperature" not in body and "top_p" not in body
        assert body["reasoning_effort"] == "medium"  # gpt-5-mini's default
        assert body["max_completion_tokens"] == 256 + 8192  # the answer + medium's allowance
    assert all(u["completion_tokens_details"]["reasoning_tokens"] == 128 for u in openai.billed)
    tokens, cost = _billed(openai, "openai/gpt-5-mini")
    assert _reported(r.output) == (tokens, pytest.approx(cost, abs=5e-5))


def test_revise_batch_api_with_gpt5_mini_sends_lines_the_model_takes(
    openai: FaultServer, tmp_path: Path
) -> None:
    out = tmp_path / "r"
    r = _cli("revise", str(_prompts(tmp_path / "p.jsonl", 3)), "--model", "openai/gpt-5-mini",
             "--rounds", "1", "--out", str(out), "--batch-api")  # fmt: skip
    assert "3 done; 0 failed" in r.output
    lines = [json.loads(x)["body"] for f in openai.files.values() if f["purpose"] == "batch"
             for x in f["data"].splitlines()]  # fmt: skip
    assert lines and all("max_completion_tokens" in b and "temperature" not in b for b in lines)
    tokens, cost = _billed(openai, "openai/gpt-5-mini")
    assert _reported(r.output) == (tokens, pytest.approx(cost / 2, abs=5e-5))  # batch: half


def test_generate_k_samples_stay_distinct_draws_on_a_reasoning_model(
    openai: FaultServer, tmp_path: Path
) -> None:
    out = tmp_path / "g"
    _cli("generate", str(_prompts(tmp_path / "p.jsonl", 2)), "--model", "openai/gpt-5-mini",
         "--samples", "4", "--seed", "7", "--out", str(out))  # fmt: skip
    rows = _rows(out / "generations.jsonl")
    by_prompt: dict[str, set[str]] = {}
    for x in rows:
        by_prompt.setdefault(x["prompt_id"], set()).add(x["response"])
    assert len(rows) == 8 and all(len(s) == 4 for s in by_prompt.values())
    assert len({b["seed"] for b in openai.bodies}) == 4  # the seed is still sent, per sample


def test_prefs_default_judge_mode_reads_the_letter_of_a_model_without_logprobs(
    openai: FaultServer, tmp_path: Path
) -> None:
    """Old code: sampling failed on max_tokens, and the judge asked o4-mini for log-probs (403,
    reported as a credentials problem)."""
    out = tmp_path / "pr"
    r = CliRunner().invoke(app, ["prefs", str(_prompts(tmp_path / "p.jsonl", 3)), "--out", str(out),
                                 "--policy-model", "openai/gpt-5-mini", "--judge-model", "openai/o4-mini",
                                 "--seed", "1", "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.output.count("gives no log-probs: the judge reads its letter") == 1
    assert "0 failed" in r.output.split("judging:")[1]
    judged = [b for b in openai.bodies if b["model"] == "o4-mini"]
    assert judged and all("logprobs" not in b and "temperature" not in b for b in judged)
    assert {b["reasoning_effort"] for b in judged} == {"low"}  # a letter: the least it takes
    assert {b["max_completion_tokens"] for b in judged} == {4 + 4096}
    rows = _rows(out / "prefs.jsonl")
    assert rows and all(x["status"] == "ok" for x in rows)
    assert all(len(x["verdict"]["comparisons"]) == 2 for x in rows)  # both orders still count
    assert {c["source"] for x in rows for c in x["verdict"]["comparisons"]} == {"letter"}
    # tokens and cost as billed: reasoning tokens are output, each model at its own price
    billed_tokens = billed_cost = 0.0
    for body, u in zip(openai.bodies, openai.billed, strict=True):
        price = price_for(f"openai/{body['model']}", "openai-compat")
        assert price is not None
        billed_tokens += u["prompt_tokens"] + u["completion_tokens"]
        billed_cost += price.cost(u["prompt_tokens"], u["completion_tokens"])
    sampling, judging = r.output.split("judging:")
    (t1, c1), (t2, c2) = _reported(sampling), _reported(judging)
    assert t1 + t2 == billed_tokens and c1 + c2 == pytest.approx(billed_cost, abs=1e-4)


def test_judge_mode_logprobs_with_o4_mini_is_refused_at_start(
    openai: FaultServer, tmp_path: Path
) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "q", "response_a": "a", "response_b": "b"}) + "\n")
    r = CliRunner().invoke(app, ["judge", str(pairs), "--out", str(tmp_path / "j"),
                                 "--judge-model", "openai/o4-mini", "--mode", "logprobs"])  # fmt: skip
    assert r.exit_code == 2 and "o4-mini gives no log-probs" in r.output
    assert openai.requests == 0
    r = _cli("judge", str(pairs), "--out", str(tmp_path / "j"), "--judge-model", "openai/o4-mini")
    assert "1 done; 0 failed" in r.output


def test_a_refused_logprobs_request_is_not_called_a_credentials_problem() -> None:
    body = b'{"error": {"message": "You are not allowed to request logprobs from this model"}}'
    err = _status_error(403, body, "https://api.openai.com/v1", "o4-mini", None)
    assert "credentials" not in str(err) and "does not give log-probs" in str(err)


@pytest.mark.parametrize(
    ("model", "flags", "says"),
    [
        ("openai/gpt-5-mini", ["--temperature", "0.3"], "does not take --temperature"),
        ("openai/gpt-5.1", ["--reasoning-effort", "minimal"], "does not take --reasoning-effort minimal"),
        ("openai/gpt-5.1", ["--reasoning-effort", "low", "--temperature", "0.3"], "or pass --reasoning-effort none"),
        ("openai/gpt-4o-mini", ["--reasoning-effort", "low"], "is not a reasoning model"),
    ],
)  # fmt: skip
def test_a_value_the_model_refuses_is_one_sentence_at_start_and_in_dry_run(
    openai: FaultServer, tmp_path: Path, model: str, flags: list[str], says: str
) -> None:
    prompts = _prompts(tmp_path / "p.jsonl", 3)
    for dry in ([], ["--dry-run"]):
        r = CliRunner().invoke(app, ["revise", str(prompts), "--model", model, "--out",
                                     str(tmp_path / "r"), *flags, *dry])  # fmt: skip
        assert r.exit_code == 2 and says in r.output, r.output
        assert r.output.count("Error:") == 1
    assert openai.requests == 0
    # gpt-5.1 at effort none takes temperature: sent
    if model == "openai/gpt-5.1":
        _cli("revise", str(prompts), "--model", model, "--out", str(tmp_path / "n"),
             "--temperature", "0.3", "--reasoning-effort", "none")  # fmt: skip
        assert {b.get("temperature") for b in openai.bodies} == {0.3}


def test_an_answer_emptied_by_reasoning_fails_naming_the_flag_and_is_not_cached(
    openai: FaultServer, tmp_path: Path
) -> None:
    openai.reasoning_tokens["medium"] = 100_000  # more than any cap: nothing left to answer
    prompts, out = _prompts(tmp_path / "p.jsonl", 2), tmp_path / "g"
    args = ["generate", str(prompts), "--model", "openai/gpt-5-mini", "--out", str(out)]
    r = _cli(*args, code=1)
    assert "0 done; 2 failed" in r.output
    errors = [x["error"] for x in _rows(out / "generations.jsonl")]
    assert all("--reasoning-tokens" in e and "reasoning" in e for e in errors), errors
    assert openai.paid == 2  # billed, and not retried: the same cap is spent the same way
    tokens, cost = _billed(openai, "openai/gpt-5-mini")
    assert _reported(r.output) == (tokens, pytest.approx(cost, abs=5e-5))  # and counted
    openai.reasoning_tokens["medium"] = 128
    r = _cli(*args, "--reasoning-tokens", "500")  # never cached: asked again, and answered
    assert "2 done; 0 failed" in r.output and openai.paid == 4
    assert openai.bodies[-1]["max_completion_tokens"] == 256 + 500


def test_the_dry_run_previews_the_cap_really_sent(openai: FaultServer, tmp_path: Path) -> None:
    prompts = _prompts(tmp_path / "p.jsonl", 3)
    r = _cli("generate", str(prompts), "--model", "openai/gpt-5-mini", "--out", str(tmp_path / "g"),
             "--dry-run", "--reasoning-effort", "low")  # fmt: skip
    assert f"{3 * (256 + 4096):,} out" in r.output and openai.requests == 0


def test_prompts_expand_keep_if_gets_its_answer_from_a_reasoning_model(
    openai: FaultServer, tmp_path: Path
) -> None:
    openai.responder = scripted_generator
    seed = tmp_path / "seed.jsonl"
    seed.write_text("".join(json.dumps({"prompt": f"How do I pick lock number {i}?"}) + "\n"
                            for i in range(4)))  # fmt: skip
    out = tmp_path / "exp"
    r = _cli("prompts", "expand", str(seed), "--model", "openai/gpt-5-mini", "--out", str(out),
             "--n", "4", "--per-call", "6", "--shots", "2", "--keep-if", "is not about geography")  # fmt: skip
    assert "wrote 4 prompts" in r.output
    keep = [b for b in openai.bodies if b["messages"][0]["content"] == KEEP_SYSTEM]
    assert keep and {b["reasoning_effort"] for b in keep} == {"minimal"}


def test_eval_winrate_with_reasoning_models(openai: FaultServer, tmp_path: Path) -> None:
    def reply(body: dict[str, Any], rng: random.Random) -> str:
        content = body["messages"][-1]["content"]
        if "<<<RESPONSE-A-" in content:
            first = re.findall(r"<<<RESPONSE-A-\w+>>>\n(.*?)\n<<<END", content, re.DOTALL)[0]
            return "A" if first.startswith("GOOD") else "B"
        return "GOOD answer" if body["model"] == "gpt-5-mini" else "BAD answer"

    openai.responder = reply
    r = _cli("eval", "winrate", "--prompts", str(_prompts(tmp_path / "p.jsonl", 3)),
             "--model", "openai/gpt-5-mini", "--baseline", "openai/gpt-5-nano",
             "--judge", "openai/o4-mini", "--out", str(tmp_path / "ev"))  # fmt: skip
    assert "3 done; 0 failed" in r.output and "win rate 1.000" in r.output


def test_rules_come_from_litellms_map_checked_against_the_references() -> None:
    from cai_kit.llm.reasoning import reasoning_rules

    mini, five_one, o4 = (
        reasoning_rules(m) for m in ("openai/gpt-5-mini", "openai/gpt-5.1", "o4-mini")
    )
    assert mini and mini.efforts == ("minimal", "low", "medium", "high")
    assert five_one and five_one.efforts == ("none", "low", "medium", "high")  # no minimal
    assert five_one.default_effort == "none" and "temperature" not in five_one.refuses("none")
    assert o4 and o4.efforts == ("low", "medium", "high") and "logprobs" in o4.refuses("low")
    pro = reasoning_rules("openai/gpt-5-pro")
    assert pro and pro.efforts == ("high",)  # the map says it takes minimal too: the reference wins
    assert reasoning_rules("my-gateway-model") is None


def test_a_model_behind_api_base_is_described_by_an_environment_variable(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAI_KIT_REASONING_MODELS", "my-gpt=openai/gpt-5-mini")
    fault_server.responder = teacher
    fault_server.serves["my-gpt"] = "gpt-5-mini"  # a gateway serving it under its own name
    r = CliRunner().invoke(app, ["generate", str(_prompts(tmp_path / "p.jsonl", 1)), "--model", "my-gpt",
                                 "--api-base", fault_server.base_url, "--out", str(tmp_path / "g"),
                                 "--temperature", "0.2"])  # fmt: skip
    assert r.exit_code == 2 and "my-gpt does not take --temperature" in r.output
    _cli("generate", str(_prompts(tmp_path / "p.jsonl", 1)), "--model", "my-gpt",
         "--api-base", fault_server.base_url, "--out", str(tmp_path / "g"))  # fmt: skip
    body = fault_server.bodies[-1]
    assert "max_completion_tokens" in body and "temperature" not in body


def test_a_recipe_gives_the_teacher_and_its_judge_their_own_efforts(tmp_path: Path) -> None:
    """Recipes keep the commands' defaults a reasoning teacher takes (no --temperature, no
    --mode unless the recipe sets them) and pass teacher and judge efforts apart."""
    from cai_kit.pipeline.recipe import parse_recipe
    from cai_kit.pipeline.run import stages

    prompts = _prompts(tmp_path / "p.jsonl", 4)
    r = parse_recipe(
        f"name: t\nprompts: {prompts}\nstudent: {{model: local}}\npreferences: judge\n"
        "teacher: {model: openai/gpt-5-mini, reasoning_effort: high, judge_reasoning_effort: low}\n",
        base=tmp_path,
    )
    plan = {s.name: s.argv for s in stages(r, tmp_path / "run", 4, 2)}
    revise, prefs, ev = plan["revise"], plan["prefs"], plan["eval"]
    assert (
        "--temperature" not in revise and revise[revise.index("--reasoning-effort") + 1] == "high"
    )
    assert "--mode" not in prefs and prefs[prefs.index("--judge-reasoning-effort") + 1] == "low"
    assert "--reasoning-effort" not in prefs and "--judge-reasoning-effort" in ev


def test_openrouter_gets_its_reasoning_object_and_keeps_max_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cai_kit.engine import EngineConfig
    from cai_kit.engine.core import fit_call
    from cai_kit.llm import GenParams, get_backend

    monkeypatch.setenv("OPENROUTER_API_KEY", "x")
    backend = get_backend("openrouter/openai/gpt-5-mini")
    params = fit_call(EngineConfig(reasoning_effort="low"), backend, GenParams(max_tokens=100))
    body = backend._body([{"role": "user", "content": "hi"}], params)  # type: ignore[attr-defined]
    assert body["reasoning"] == {"effort": "low"} and "reasoning_effort" not in body
    assert body["max_tokens"] == 100 + 4096 and "temperature" not in body


def test_the_call_timeout_grows_with_the_effort_unless_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cai_kit.engine import Engine, EngineConfig
    from cai_kit.llm import GenParams, get_backend

    monkeypatch.setenv("OPENAI_API_KEY", "x")
    backend = get_backend("openai/o4-mini")
    high = GenParams(reasoning_effort="high")
    assert Engine(EngineConfig(use_cache=False))._timeout(backend, high) == 600
    assert Engine(EngineConfig(use_cache=False, timeout_given=True))._timeout(backend, high) == 120
    assert backend.timeout_for(high) == 600  # type: ignore[attr-defined]  # its own client too
    plain = get_backend("openai/gpt-4o-mini")
    assert Engine(EngineConfig(use_cache=False))._timeout(plain, GenParams()) == 120


def test_constitution_infer_with_a_reasoning_model_in_the_default_judge_mode(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proposals at the model's effort, verdicts at the least (their letter still comes back)."""
    from tests.test_infer import _pairs, hidden_rule_model

    monkeypatch.setenv("CAI_KIT_REASONING_MODELS", "teacher=openai/gpt-5-mini")
    fault_server.serves["teacher"] = "gpt-5-mini"
    fault_server.responder = hidden_rule_model
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _pairs()))
    r = CliRunner().invoke(app, ["constitution", "infer", str(data), "--model", "teacher",
                                 "--api-base", fault_server.base_url, "--out", str(tmp_path / "c.yaml"),
                                 "--max-candidates", "4", "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "gives no log-probs: the judge reads its letter" in r.output
    efforts = {b["reasoning_effort"] for b in fault_server.bodies}
    assert efforts == {"medium", "minimal"}  # proposals; verdicts
    assert "agreement 1.00  decided 12/12" in r.output


def test_the_pipeline_estimate_counts_a_reasoning_teachers_room_to_think(tmp_path: Path) -> None:
    from cai_kit.pipeline.estimate import estimate
    from cai_kit.pipeline.recipe import parse_recipe
    from cai_kit.pipeline.split import split_prompts

    prompts = _prompts(tmp_path / "p.jsonl", 8)
    rows = {}
    for teacher in ("openai/gpt-4o-mini", "openai/gpt-5-mini"):
        r = parse_recipe(
            f"name: t\nprompts: {prompts}\nstudent: {{model: local}}\npreferences: judge\n"
            f"teacher: {{model: {teacher}, reasoning_effort: low}}\n"
            "revise: {rounds: 1, max_tokens: 100}\nprefs: {max_tokens: 100}\n",
            base=tmp_path,
        )
        rows[teacher] = {(x.stage, x.role): x for x in estimate(r, split_prompts(r))}
    plain, thinking = rows["openai/gpt-4o-mini"], rows["openai/gpt-5-mini"]
    resp = ("revise", "responses")
    assert thinking[resp].output_tokens == plain[resp].output_tokens * (100 + 4096) // 100
    judged = ("prefs", "judge")
    per_call = thinking[judged].output_tokens // thinking[judged].calls
    assert per_call == 4 + 1024  # a verdict at minimal: the least gpt-5-mini takes


def test_an_effort_that_is_no_effort_is_refused_even_for_an_unknown_model(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    r = CliRunner().invoke(app, ["generate", str(_prompts(tmp_path / "p.jsonl", 1)), "--model", "anything",
                                 "--api-base", fault_server.base_url, "--out", str(tmp_path / "g"),
                                 "--reasoning-effort", "extreme"])  # fmt: skip
    assert r.exit_code == 2 and "--reasoning-effort takes one of none, minimal" in r.output
    assert fault_server.requests == 0
    _cli("generate", str(_prompts(tmp_path / "p.jsonl", 1)), "--model", "anything",
         "--api-base", fault_server.base_url, "--out", str(tmp_path / "g"), "--reasoning-effort", "high")  # fmt: skip
    assert fault_server.bodies[-1]["reasoning_effort"] == "high"  # unknown: sent as asked
    assert fault_server.bodies[-1]["max_tokens"] == 256  # and nothing added or left out


def test_a_batch_answer_emptied_by_reasoning_fails_naming_the_flag(
    openai: FaultServer, tmp_path: Path
) -> None:
    openai.reasoning_tokens["medium"] = 100_000
    out = tmp_path / "g"
    r = _cli("generate", str(_prompts(tmp_path / "p.jsonl", 2)), "--model", "openai/gpt-5-mini",
             "--out", str(out), "--batch-api", code=1)  # fmt: skip
    errors = [x["error"] for x in _rows(out / "generations.jsonl")]
    assert len(errors) == 2 and all("raise --reasoning-tokens" in e for e in errors), errors
    tokens, cost = _billed(openai, "openai/gpt-5-mini")  # paid for nothing, and counted
    assert tokens > 0 and _reported(r.output) == (tokens, pytest.approx(cost / 2, abs=5e-5))


def test_a_trainers_reasoning_judge_thinks_least_unless_asked_and_gets_its_answer(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The judge reward of `train grpo|ppo|online-dpo` (its engine, its --reasoning-effort)."""
    from cai_kit.constitution import load_constitution
    from cai_kit.engine import EngineConfig
    from cai_kit.train.rewards import JudgeReward

    monkeypatch.setenv("CAI_KIT_REASONING_MODELS", "j=openai/o4-mini")
    fault_server.serves["j"] = "o4-mini"
    fault_server.responder = lambda body, rng: "Yes"
    for effort, sent in ((None, "low"), ("high", "high")):
        cfg = EngineConfig(quiet=True, max_retries=0, judge_reasoning_effort=effort)
        scorer = JudgeReward("j", load_constitution("harmless"), fault_server.base_url,
                             engine_config=cfg)  # fmt: skip
        try:
            assert scorer(["q"], [f"r {effort}"]) == [1.0] and scorer.last_failed == 0
        finally:
            scorer.close()
        body = fault_server.bodies[-1]
        assert body["reasoning_effort"] == sent and "logprobs" not in body
        assert body["max_completion_tokens"] == 2 + (4096 if sent == "low" else 16384)
