"""Reasoning effort through litellm (Anthropic, Gemini) and Anthropic's Message Batches, against
the scripted provider, which refuses what the real APIs refuse and bills thinking as output
(`tests/fixtures/thinking_rules.py`)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from cai_kit.engine import Engine, EngineConfig
from cai_kit.errors import ConfigError
from cai_kit.llm import GenParams, get_backend
from cai_kit.llm.thinking import check_reasoning_effort, reasoning_request
from tests.fixtures import thinking_rules
from tests.fixtures.fault_server import FaultServer, billed_tokens

MSGS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Why is the sky blue?"},
]
KEY = "sk-ant-test-000000000000"


async def _call(backend: Any, tmp_path: Path, params: GenParams):  # type: ignore[no-untyped-def]
    engine = Engine(EngineConfig(quiet=True, backoff_base_s=0.01, cache_path=tmp_path / "c.sqlite"))
    try:
        return await engine.call(backend, MSGS, params), engine.stats
    finally:
        await backend.aclose()
        await engine.aclose()


@pytest.fixture
def anthropic(provider_server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> FaultServer:
    monkeypatch.setenv("ANTHROPIC_API_BASE", provider_server.base_url.removesuffix("/v1"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    return provider_server


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, json.dumps(body).encode(), method="POST", headers={
        "content-type": "application/json", "x-api-key": KEY, "anthropic-version": "2023-06-01"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_scripted_anthropic_server_refuses_what_anthropic_refuses(
    anthropic: FaultServer,
) -> None:
    """The server's own rules, checked apart from cai-kit: each bad body gets Anthropic's 400."""
    url = anthropic.base_url + "/messages"
    base = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}
    thinking = {"type": "enabled", "budget_tokens": 1024}
    cases = [
        ({"max_tokens": 2000, "thinking": {"type": "enabled", "budget_tokens": 512}},
         thinking_rules.BUDGET_TOO_SMALL),
        ({"max_tokens": 1024, "thinking": thinking}, thinking_rules.BUDGET_OVER_MAX),
        ({"max_tokens": 2000, "thinking": thinking, "temperature": 0.7},
         thinking_rules.TEMPERATURE_WITH_THINKING),
        ({"model": "claude-opus-4-7", "max_tokens": 2000, "thinking": thinking},
         thinking_rules.ENABLED_REFUSED),
        ({"model": "claude-opus-4-7", "max_tokens": 20, "temperature": 0.2},
         "`temperature` is deprecated for this model."),
    ]  # fmt: skip
    for extra, message in cases:
        status, body = _post(url, base | extra)
        assert status == 400 and body["error"] == {"type": "invalid_request_error",
                                                   "message": message}, extra  # fmt: skip
    status, body = _post(url, base | {"max_tokens": 2000, "thinking": thinking})
    assert status == 200 and [c["type"] for c in body["content"]] == ["thinking", "text"]
    assert body["usage"]["output_tokens"] == 700 + 10  # thinking is billed as output
    assert anthropic.paid == 1


def test_anthropic_effort_sends_a_thinking_budget_above_the_answer_and_no_temperature(
    anthropic: FaultServer, tmp_path: Path
) -> None:
    """Extended thinking needs budget_tokens >= 1024 and below max_tokens, with temperature
    left unset: the output cap grows by the budget, so the answer keeps its 256 tokens."""
    params = GenParams(temperature=0.7, max_tokens=256, reasoning_effort="low")
    completion, stats = asyncio.run(
        _call(get_backend("anthropic/claude-sonnet-4-5"), tmp_path, params)
    )
    assert stats.failures == 0 and completion.text.startswith("echo ")
    body = anthropic.bodies[-1]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert body["max_tokens"] == 1024 + 256 and "temperature" not in body
    usage = completion.usage  # as billed: thinking tokens among the output tokens
    assert (usage.completion_tokens, usage.reasoning_tokens) == (700 + 10, 700)


@pytest.mark.parametrize(
    ("model", "effort", "sent"),
    [("claude-opus-4-6", "max", {"thinking": {"type": "adaptive"}, "output_config": {"effort": "max"}}),
     ("claude-opus-4-7", "xhigh", {"thinking": {"type": "adaptive"},
                                   "output_config": {"effort": "xhigh"}}),
     ("claude-opus-4-7", None, {})],
)  # fmt: skip
def test_newest_claude_models_get_adaptive_thinking_and_no_sampling_fields(
    anthropic: FaultServer, tmp_path: Path, model: str, effort: str | None, sent: dict[str, Any]
) -> None:
    """Opus/Sonnet 4.6 take adaptive thinking with an effort (budget_tokens is deprecated
    there); Opus 4.7 takes nothing else, and refuses temperature even without thinking."""
    params = GenParams(temperature=0.3, max_tokens=64, reasoning_effort=effort)
    completion, stats = asyncio.run(_call(get_backend(f"anthropic/{model}"), tmp_path, params))
    assert stats.failures == 0 and completion.text
    body = anthropic.bodies[-1]
    assert {k: body[k] for k in sent} == sent and "temperature" not in body
    thought = thinking_rules.THINK_BY_EFFORT.get(effort or "", 0)
    assert completion.usage.reasoning_tokens == thought
    assert body["max_tokens"] >= 64 + thought  # room to think and still answer


def test_an_effort_a_model_does_not_take_is_one_sentence_before_any_call(
    anthropic: FaultServer, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"claude-opus-4-6 takes the reasoning effort none, "
                                          r"low, medium, high or max, not 'minimal'\."):  # fmt: skip
        asyncio.run(_call(get_backend("anthropic/claude-opus-4-6"), tmp_path,
                          GenParams(reasoning_effort="minimal")))  # fmt: skip
    with pytest.raises(ConfigError, match="claude-3-5-haiku-latest does not reason"):
        check_reasoning_effort("anthropic/claude-3-5-haiku-latest", "low")
    with pytest.raises(ConfigError, match=r"gemini-2.5-pro takes .* not 'none'"):
        check_reasoning_effort("gemini/gemini-2.5-pro", "none")
    with pytest.raises(ConfigError, match=r"gemini-3-pro-preview takes the reasoning effort "
                                          r"low or high, not 'medium'"):  # fmt: skip
        check_reasoning_effort("gemini/gemini-3-pro-preview", "medium")
    assert anthropic.requests == 0


def test_the_judge_asks_anthropic_for_no_logprobs_and_gets_its_letter(
    anthropic: FaultServer, tmp_path: Path
) -> None:
    """Anthropic returns no log-probs: the judge's request (top_logprobs > 0) must still be
    answered, with the letter, instead of failing every call."""
    anthropic.responder = lambda body, rng: "A"
    backend = get_backend("anthropic/claude-haiku-4-5")
    assert not backend.supports_logprobs
    params = GenParams(temperature=0.0, max_tokens=4, top_logprobs=10)
    completion, stats = asyncio.run(_call(backend, tmp_path, params))
    assert stats.failures == 0 and completion.text == "A" and completion.logprobs is None


def test_anthropic_cache_reads_are_read_into_cached_tokens(
    anthropic: FaultServer, tmp_path: Path
) -> None:
    anthropic.usage_by_length, anthropic.cache_read = True, 5
    completion, _ = asyncio.run(_call(get_backend("anthropic/claude-sonnet-4-5"), tmp_path,
                                      GenParams(max_tokens=16)))  # fmt: skip
    billed = anthropic.bodies[-1]
    assert completion.usage.cached_tokens == 5
    assert completion.usage.prompt_tokens > 5 and completion.usage.completion_tokens == 16
    assert billed["max_tokens"] == 16


# --- Gemini through litellm, pointed at the scripted server --------------------------------


@pytest.fixture
def gemini(provider_server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-test-key")
    return provider_server.base_url.removesuffix("/v1") + "/v1beta"


def test_gemini_2_5_thinks_within_a_budget_that_leaves_room_to_answer(
    provider_server: FaultServer, gemini: str, tmp_path: Path
) -> None:
    """Thinking tokens count against maxOutputTokens: the cap grows by the budget, and the
    thought tokens come back as reasoning tokens billed as output."""
    provider_server.cache_read = 3  # cachedContentTokenCount: read as cached tokens
    backend = get_backend("litellm:gemini/gemini-2.5-flash", api_base=gemini)
    params = GenParams(temperature=0.5, max_tokens=128, reasoning_effort="medium")
    completion, stats = asyncio.run(_call(backend, tmp_path, params))
    assert completion.usage.cached_tokens == 3
    assert stats.failures == 0 and completion.text.startswith("echo ")
    config = thinking_rules.gemini_config(provider_server.bodies[-1])
    assert config["thinkingConfig"]["thinkingBudget"] == 2048
    assert config["maxOutputTokens"] == 2048 + 128
    assert (completion.usage.completion_tokens, completion.usage.reasoning_tokens) == (710, 700)


def test_gemini_2_5_is_asked_for_no_logprobs(
    provider_server: FaultServer, gemini: str, tmp_path: Path
) -> None:
    """The Gemini API answers 2.5's log-probs requests with 400 "Logprobs is not enabled".
    (Its effort is set: left to its dynamic default, 2.5 Pro thinks past a 4-token cap.)"""
    backend = get_backend("litellm:gemini/gemini-2.5-pro", api_base=gemini)
    assert not backend.supports_logprobs
    params = GenParams(temperature=0.0, max_tokens=4, top_logprobs=5, reasoning_effort="minimal")
    completion, stats = asyncio.run(_call(backend, tmp_path, params))
    sent = thinking_rules.gemini_config(provider_server.bodies[-1])
    assert stats.failures == 0 and "responseLogprobs" not in sent and completion.text


def test_gemini_3_gets_a_thinking_level(
    provider_server: FaultServer, gemini: str, tmp_path: Path
) -> None:
    backend = get_backend("litellm:gemini/gemini-3-pro-preview", api_base=gemini)
    completion, stats = asyncio.run(
        _call(backend, tmp_path, GenParams(max_tokens=64, reasoning_effort="low"))
    )
    config = thinking_rules.gemini_config(provider_server.bodies[-1])
    assert stats.failures == 0 and config["thinkingConfig"]["thinkingLevel"] == "low"
    assert "thinkingBudget" not in config["thinkingConfig"]
    assert completion.usage.reasoning_tokens == 300 and config["maxOutputTokens"] == 64 + 1024


def test_reasoning_request_keeps_an_unset_effort_as_it_was() -> None:
    """No effort: the request is today's (the cap unchanged, nothing added), on every route."""
    for model in ("anthropic/claude-sonnet-4-5", "gemini/gemini-2.5-flash", "openai/gpt-4o"):
        req = reasoning_request(model, GenParams(max_tokens=99))
        assert (req.max_tokens, req.fields, req.drop) == (99, {}, frozenset())


# --- Anthropic Message Batches: the same request as the synchronous route ---------------------


async def _batch_round_trip(client: Any, tmp_path: Path, params: GenParams) -> dict[str, Any]:
    path = tmp_path / "wave.jsonl"
    lines = [client.line(f"key{i}", MSGS, params) for i in range(2)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    try:
        state = await client.poll(await client.submit(path, "wave"))
        while not state.done:
            state = await client.poll(state.batch_id)
        return {key: result async for key, result in client.results(state)} | {"_lines": lines}
    finally:
        await client.aclose()


def test_anthropic_batch_lines_think_like_the_synchronous_call_and_count_thinking(
    anthropic: FaultServer, tmp_path: Path
) -> None:
    """A Message Batches request is the synchronous body: thinking budget, raised cap, no
    temperature; its result's thinking tokens are output tokens, and a cut answer reads
    finish_reason "length" as on the synchronous route."""
    from cai_kit.engine.batch_providers import AnthropicBatchClient

    client = AnthropicBatchClient("anthropic/claude-sonnet-4-5")
    params = GenParams(temperature=0.7, max_tokens=200, reasoning_effort="medium")
    got = asyncio.run(_batch_round_trip(client, tmp_path, params))
    sent = got["_lines"][0]["params"]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert sent["max_tokens"] == 2048 + 200 and "temperature" not in sent
    done = got["key0"]
    assert not isinstance(done, str) and done.text.startswith("echo ")
    assert (done.usage.completion_tokens, done.usage.reasoning_tokens) == (710, 700)
    assert done.finish_reason == "stop" and anthropic.paid == 2


def test_anthropic_batch_results_count_cache_reads_among_the_prompt(
    anthropic: FaultServer, tmp_path: Path
) -> None:
    """Anthropic's input_tokens leaves out cache reads; the prompt total puts them back."""
    from cai_kit.engine.batch_providers import AnthropicBatchClient

    anthropic.cache_read = 4
    got = asyncio.run(_batch_round_trip(AnthropicBatchClient("anthropic/claude-haiku-4-5"),
                                        tmp_path, GenParams(max_tokens=32)))  # fmt: skip
    usage = got["key1"].usage
    assert (usage.prompt_tokens, usage.cached_tokens) == (10, 4)


# --- whole stages against the thinking provider --------------------------------------------


def test_revise_with_a_thinking_claude_teacher_fails_no_row_and_counts_what_was_billed(
    anthropic: FaultServer, tmp_path: Path
) -> None:
    """The library's revise with reasoning_effort on every step (the CLI flag sets these
    params): Sonnet 4.5's rules enforced (no temperature next to thinking, no temperature with
    top_p), and the run's tokens are exactly the server's bills, thinking included."""
    from cai_kit.constitution import load_constitution
    from cai_kit.prompts import load_prompts
    from cai_kit.stages.revise import ReviseConfig, run_revise

    anthropic.exclusive_sampling, anthropic.usage_by_length = True, True
    step = GenParams(temperature=0.3, max_tokens=48, reasoning_effort="low")
    cfg = ReviseConfig(constitution=load_constitution("harmless"), rounds=1,
                       response_params=step, critique_params=step, revision_params=step)  # fmt: skip
    model = "anthropic/claude-sonnet-4-5"
    backend = get_backend(model)
    prompts = load_prompts(str(Path(__file__).parent.parent / "examples" / "red_team_prompts.jsonl"),
                           limit=3).records  # fmt: skip
    summary = run_revise(prompts, cfg, responder=backend, critic=backend,
                         models={"responder": model, "critic": model}, out_dir=tmp_path / "r",
                         engine_config=EngineConfig(quiet=True, cache_path=tmp_path / "c"))  # fmt: skip
    assert (summary.done, summary.failed) == (3, 0)
    assert len(anthropic.billed) == 9  # response, critique, revision per prompt
    assert summary.stats["prompt_tokens"] == sum(billed_tokens(u)[0] for u in anthropic.billed)
    assert summary.stats["completion_tokens"] == sum(billed_tokens(u)[1] for u in anthropic.billed)
    assert all(b["thinking"]["budget_tokens"] == 1024 for b in anthropic.bodies)
    assert summary.stats["cost"] > 0


def test_cli_revise_with_claude_through_litellm_reports_the_tokens_the_server_billed(
    anthropic: FaultServer, tmp_path: Path
) -> None:
    """`revise --model anthropic/claude-sonnet-4-5` (no effort: no thinking) against the
    server that enforces Sonnet 4.5's rules: 0 failed rows, and the tokens printed and kept in
    the manifest are the server's bills."""
    from typer.testing import CliRunner

    from cai_kit.cli.main import app

    anthropic.exclusive_sampling, anthropic.usage_by_length = True, True
    prompts = Path(__file__).parent.parent / "examples" / "red_team_prompts.jsonl"
    r = CliRunner().invoke(app, ["revise", str(prompts), "--limit", "3", "--rounds", "1",
                                 "--model", "anthropic/claude-sonnet-4-5", "--out",
                                 str(tmp_path / "r"), "--cache-path", str(tmp_path / "c")])  # fmt: skip
    billed_in, billed_out = (
        sum(billed_tokens(u)[0] for u in anthropic.billed),
        sum(billed_tokens(u)[1] for u in anthropic.billed),
    )
    assert "3 done; 0 failed" in r.output, r.output
    assert f"{billed_in + billed_out} tokens" in r.output
    stats = json.loads((tmp_path / "r" / "manifest.json").read_text())["stats"]
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (billed_in, billed_out)


def test_openrouter_through_litellm_gets_its_reasoning_object(
    provider_server: FaultServer, tmp_path: Path
) -> None:
    """OpenRouter's own control is `reasoning: {effort}` (it sizes the thinking for the model
    behind it); `max` is not one of its values."""
    backend = get_backend(
        "litellm:openrouter/anthropic/claude-sonnet-4.5", api_base=provider_server.base_url
    )
    params = GenParams(max_tokens=64, reasoning_effort="low")
    _, stats = asyncio.run(_call(backend, tmp_path, params))
    assert stats.failures == 0 and provider_server.bodies[-1]["reasoning"] == {"effort": "low"}
    with pytest.raises(ConfigError, match=r"takes the reasoning effort none, minimal, low, medium, "
                                          r"high or xhigh, not 'max'"):  # fmt: skip
        check_reasoning_effort("litellm:openrouter/openai/gpt-5", "max")


def test_the_output_cap_a_reservation_must_price_is_the_one_sent(anthropic: FaultServer) -> None:
    backend = get_backend("anthropic/claude-sonnet-4-5")
    params = GenParams(max_tokens=100, reasoning_effort="high")
    assert backend.output_cap(params) == 100 + 4096
    assert backend.output_cap(params.replace(reasoning_effort=None)) == 100


def test_max_cost_reserves_the_thinking_budget_the_call_really_asks_for(
    anthropic: FaultServer, tmp_path: Path
) -> None:
    """A thinking call's output cap is the answer's max_tokens plus the thinking budget, and
    all of it may be billed as output: --max-cost must reserve that, not the answer alone.
    Sonnet 4.5 at $15 per million output tokens: 48 + 1,024 tokens are about $0.016, more than
    the cap, so the call is not sent (reserving 48 tokens, $0.0007, it was)."""
    from cai_kit.errors import BudgetExceeded

    backend = get_backend("anthropic/claude-sonnet-4-5")
    params = GenParams(max_tokens=48, reasoning_effort="low")
    assert backend.output_cap(params) == 48 + 1024
    engine = Engine(EngineConfig(quiet=True, max_cost=0.01, use_cache=False))

    async def go() -> None:
        try:
            await engine.call(backend, MSGS, params)
        finally:
            await backend.aclose()
            await engine.aclose()

    with pytest.raises(BudgetExceeded):
        asyncio.run(go())
    assert anthropic.paid == 0 and not anthropic.billed


@pytest.mark.parametrize(
    ("teacher", "response_cap", "verdict_cap"),
    [
        # Claude: a budget of 1,024 at low above the answer; a verdict does not think (unasked)
        ("anthropic/claude-sonnet-4-5", 100 + 1024, 4),
        # Gemini 2.5 Pro: 1,024 at low; a verdict thinks its least budget, 128 (it cannot not)
        ("gemini/gemini-2.5-pro", 100 + 1024, 4 + 128),
    ],
)
def test_the_pipeline_estimate_prices_the_thinking_the_litellm_route_sends(
    tmp_path: Path, teacher: str, response_cap: int, verdict_cap: int
) -> None:
    """`pipeline --dry-run` prices each call at the output cap the stage really sends (the
    litellm route's thinking budget), not OpenAI's reasoning allowance or none at all."""
    from cai_kit.pipeline.estimate import estimate
    from cai_kit.pipeline.recipe import parse_recipe
    from cai_kit.pipeline.split import split_prompts

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(8)))
    r = parse_recipe(
        f"name: t\nprompts: {prompts}\nstudent: {{model: local}}\npreferences: judge\n"
        f"teacher: {{model: {teacher}, reasoning_effort: low}}\n"
        "revise: {rounds: 1, max_tokens: 100}\nprefs: {max_tokens: 100}\n",
        base=tmp_path,
    )
    rows = {(x.stage, x.role): x for x in estimate(r, split_prompts(r))}
    resp = rows["revise", "responses"]
    assert resp.output_tokens == resp.calls * response_cap
    judged = rows["prefs", "judge"]
    assert judged.output_tokens == judged.calls * verdict_cap
    # what the backend sends for those calls, as the engine fits them
    sent = reasoning_request(teacher, GenParams(max_tokens=100, reasoning_effort="low"))
    assert sent.max_tokens == response_cap


def test_cai_kit_models_names_what_a_thinking_model_takes_on_the_litellm_route() -> None:
    """`cai-kit models MODEL` says which efforts the litellm route maps for Claude and Gemini
    (thinking.py's table, the one the calls use), and nothing for a model that does not think."""
    from typer.testing import CliRunner

    from cai_kit.cli.main import app

    def line(model: str) -> str:
        return CliRunner().invoke(app, ["models", model]).output

    claude = line("anthropic/claude-sonnet-4-5")
    assert "reasoning: efforts none, minimal, low, medium, high, xhigh" in claude
    assert "thinking budget 1,024-64,000 tokens" in claude
    assert "a thinking level" in line("gemini/gemini-3-pro-preview")
    assert "reasoning" not in line("anthropic/claude-3-5-haiku-latest")


def test_a_models_thinking_controls_are_read_without_importing_litellm() -> None:
    """Claude's and Gemini's controls come from litellm's model map read as a file (`cost_map`),
    as prices and OpenAI's rules are: `cai-kit models`, `pipeline --dry-run` and an effort check
    stay fast, and a model litellm does not know prints no "Provider List" line."""
    import subprocess
    import sys

    code = ("import sys; from cai_kit.llm.thinking import capabilities; "
            "print(capabilities('anthropic/claude-sonnet-4-5').budget, "
            "capabilities('gemini/gemini-2.5-pro').budget, capabilities('anthropic/claude-new-9').levels); "
            "assert 'litellm' not in sys.modules")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "(1024, 64000) (128, 32768) True"
