"""Every billed token is counted at its rate: cached input tokens at the provider's cached rate
(shown as "N cached"), hidden reasoning tokens as output ("N reasoning"), a service tier at its
own price, and the `--dry-run` preview says it is an estimate of the cap each call sends.

The scripted server (tests/fixtures/fault_server.py) bills as OpenAI does: an automatic prompt
cache for prefixes of 1,024 tokens or more in 128-token steps, reasoning tokens inside
`completion_tokens`; `server.billed` is what it charged. The tests compare what the CLI reports
(summary line, manifest) with that bill priced at the model's list rates.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.engine.pricing import parse_price, price_for
from tests.fixtures.fault_server import FaultServer

FIXTURES = Path(__file__).parent / "fixtures"
LONG = FIXTURES / "constitution_long_fewshot.yaml"  # ~1,500 tokens of few-shot turns
# gpt-5-mini in the pinned litellm cost map (1.109.1), USD per million tokens
MINI = {"in": 0.25, "out": 2.0, "cached": 0.025, "batch_in": 0.125, "batch_out": 1.0,
        "batch_cached": 0.0125, "flex_in": 0.125, "flex_out": 1.0, "flex_cached": 0.0125}  # fmt: skip


def _bill(billed: list[dict[str, Any]], i: float, o: float, c: float) -> float:
    """What the server's bill costs at input / output / cached-input rates per million."""
    total = 0.0
    for u in billed:
        cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        total += (u["prompt_tokens"] - cached) * i + cached * c + u["completion_tokens"] * o
    return total / 1e6


def _prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Question {i}: how do I fix a leaking tap?"})
                            + "\n" for i in range(n)))  # fmt: skip
    return path


def _cli(*args: str, code: int = 0) -> str:
    r = CliRunner().invoke(app, [*args, "-q"])
    assert r.exit_code == code, r.output + repr(r.exception)
    return r.output


def _stats(run: Path) -> dict[str, Any]:
    return json.loads((run / "manifest.json").read_text())["stats"]


@pytest.fixture
def openai_at_server(fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> FaultServer:
    """`openai/...` model strings (their list prices) answered by the scripted server."""
    monkeypatch.setenv("OPENAI_BASE_URL", fault_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    fault_server.usage_by_length = True
    return fault_server


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    import asyncio

    async def go() -> dict[str, Any]:
        async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
            return dict(await r.json())

    return asyncio.run(go())


def test_fault_server_caches_a_prefix_of_1024_tokens_or_more_in_128_token_steps(
    fault_server: FaultServer,
) -> None:
    fault_server.prompt_cache = True
    url = fault_server.base_url + "/chat/completions"
    stable = "x" * 4 * 1300  # 1,300 tokens of the server's tokenizer

    def usage(tail: str, stem: str = stable, model: str = "m") -> dict[str, Any]:
        msgs = [{"role": "system", "content": stem}, {"role": "user", "content": tail}]
        return _post(url, {"model": model, "messages": msgs, "max_tokens": 8})["usage"]

    assert usage("first")["prompt_tokens_details"]["cached_tokens"] == 0  # nothing seen yet
    second = usage("second question")
    cached = second["prompt_tokens_details"]["cached_tokens"]
    assert cached == 1280 and cached % 128 == 0 and cached <= second["prompt_tokens"]
    assert usage("other", model="n")["prompt_tokens_details"]["cached_tokens"] == 0  # per model
    short = "y" * 4 * 900  # below OpenAI's 1,024-token minimum: never cached
    usage("a", short), usage("b", short)
    assert fault_server.billed[-1]["prompt_tokens_details"]["cached_tokens"] == 0


def test_revise_reports_cached_tokens_and_prices_them_at_the_cached_rate(
    openai_at_server: FaultServer, tmp_path: Path
) -> None:
    """A real-sized few-shot block is a stable prefix the provider caches: the run's cost and
    tokens equal the server's bill, cached input at gpt-5-mini's cached rate (0.1x input)."""
    server = openai_at_server
    server.prompt_cache = True
    run = tmp_path / "r"
    out = _cli("revise", str(_prompts(tmp_path / "p.jsonl", 6)), "--model", "openai/gpt-5-mini",
               "--constitution", str(LONG), "--rounds", "2", "--principles", "sequence",
               "--out", str(run))  # fmt: skip
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in server.billed)
    assert cached > 0, "the few-shot prefix was never cached"
    stats = _stats(run)
    assert stats["cached_tokens"] == cached
    assert stats["prompt_tokens"] == sum(u["prompt_tokens"] for u in server.billed)
    assert stats["completion_tokens"] == sum(u["completion_tokens"] for u in server.billed)
    billed = _bill(server.billed, MINI["in"], MINI["out"], MINI["cached"])
    assert stats["cost"] == pytest.approx(billed, abs=2e-6)
    full = _bill(server.billed, MINI["in"], MINI["out"], MINI["in"])
    assert billed < full  # (the old code charged every cached token at the input rate)
    assert f"({cached} cached" in out and f"${billed:.4f}" in out


def test_batch_lines_count_cached_tokens_at_the_batch_cached_rate(
    openai_at_server: FaultServer, tmp_path: Path
) -> None:
    server = openai_at_server
    server.prompt_cache = True
    run = tmp_path / "r"
    _cli("revise", str(_prompts(tmp_path / "p.jsonl", 4)), "--model", "openai/gpt-5-mini",
         "--constitution", str(LONG), "--rounds", "1", "--principles", "sequence",
         "--out", str(run), "--batch-api")  # fmt: skip
    stats = _stats(run)
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in server.billed)
    assert cached > 0 and stats["cached_tokens"] == cached
    billed = _bill(server.billed, MINI["batch_in"], MINI["batch_out"], MINI["batch_cached"])
    assert stats["cost"] == pytest.approx(billed, abs=2e-6)


def test_reasoning_tokens_are_billed_as_output_and_shown(
    openai_at_server: FaultServer, tmp_path: Path
) -> None:
    server = openai_at_server
    # gpt-5-mini thinks 40 tokens at any effort before it answers (of its completion tokens)
    server.reasoning_tokens = dict.fromkeys(server.reasoning_tokens, 40)
    run = tmp_path / "g"
    out = _cli("generate", str(_prompts(tmp_path / "p.jsonl", 3)), "--model", "openai/gpt-5-mini",
               "--max-tokens", "100", "--out", str(run))  # fmt: skip
    stats = _stats(run)
    assert stats["reasoning_tokens"] == 120
    assert stats["completion_tokens"] == sum(u["completion_tokens"] for u in server.billed)
    assert stats["cost"] == pytest.approx(_bill(server.billed, 0.25, 2.0, 0.025), abs=2e-6)
    assert "(120 reasoning)" in out


def test_price_flag_takes_an_optional_cached_rate(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    p = parse_price("1,2,0.1")
    assert p.cost(1_000_000, 0, cached_tokens=400_000) == pytest.approx(0.6 + 0.04)
    assert parse_price("1,2").cost(10, 0, cached_tokens=10) == parse_price("1,2").cost(10, 0)
    fault_server.prompt_cache = True
    run = tmp_path / "r"
    _cli("revise", str(_prompts(tmp_path / "p.jsonl", 3)), "--model", "m", "--api-base",
         fault_server.base_url, "--price", "100,200,10", "--constitution", str(LONG),
         "--principles", "sequence", "--out", str(run))  # fmt: skip
    assert _stats(run)["cost"] == pytest.approx(_bill(fault_server.billed, 100, 200, 10))
    out = _cli("generate", str(tmp_path / "p.jsonl"), "--model", "m", "--api-base",
               fault_server.base_url, "--price", "1,2,3,4", "--out", str(tmp_path / "g"), code=1)  # fmt: skip
    assert "optionally a third for cached input tokens" in out


def test_current_model_names_have_prices_with_a_cached_rate() -> None:
    for model in ("openai/gpt-5", "openai/gpt-5-mini", "openai/gpt-5-nano", "openai/gpt-5.1",
                  "openai/o3", "openai/o4-mini", "anthropic/claude-sonnet-4-5",
                  "anthropic/claude-opus-4-5", "anthropic/claude-haiku-4-5",
                  "anthropic/claude-sonnet-5", "anthropic/claude-opus-5",
                  "gemini/gemini-2.5-flash", "gemini/gemini-2.5-pro",
                  "gemini/gemini-3.1-pro-preview", "gemini/gemini-3-flash-preview"):  # fmt: skip
        price = price_for(model, "litellm")
        assert price is not None and price.input_per_m > 0, model
        assert (
            price.cached_input_per_m is not None and price.cached_input_per_m < price.input_per_m
        ), model
    mini = price_for("openai/gpt-5-mini", "litellm")
    assert mini is not None and mini.cached_input_per_m == pytest.approx(0.025)
    sonnet = price_for("anthropic/claude-sonnet-4-5", "litellm")
    assert sonnet is not None and sonnet.cache_write_per_m == pytest.approx(3.75)
    # an Anthropic cache write costs 1.25x input: the worst case a reservation holds
    assert sonnet.worst_case(1_000_000, 0) == pytest.approx(3.75)


def test_service_tier_flex_is_sent_and_priced_at_the_flex_rate(
    openai_at_server: FaultServer, tmp_path: Path
) -> None:
    server = openai_at_server
    run = tmp_path / "g"
    _cli("generate", str(_prompts(tmp_path / "p.jsonl", 3)), "--model", "openai/gpt-5-mini",
         "--service-tier", "flex", "--out", str(run))  # fmt: skip
    assert [b.get("service_tier") for b in server.bodies] == ["flex"] * 3
    flex = _bill(server.billed, MINI["flex_in"], MINI["flex_out"], MINI["flex_cached"])
    assert _stats(run)["cost"] == pytest.approx(flex, abs=2e-6)
    assert flex == pytest.approx(_bill(server.billed, 0.25, 2.0, 0.025) / 2)
    # one sentence at start, never failed rows: no flex price at a user's server, or batched
    for extra in (["--model", "m", "--api-base", server.base_url],
                  ["--model", "openai/gpt-5-mini", "--batch-api"]):  # fmt: skip
        out = _cli("generate", str(tmp_path / "p.jsonl"), *extra, "--service-tier", "flex",
                   "--out", str(tmp_path / "x"), code=1)  # fmt: skip
        assert "--service-tier flex" in out and len(server.bodies) == 3


def test_dry_run_prices_the_cap_each_call_sends_and_says_it_is_an_estimate(
    openai_at_server: FaultServer, tmp_path: Path
) -> None:
    """The preview's output tokens are the caps the real run then sends (a reasoning model's
    cap holds its reasoning allowance), and the line says how the figures were made."""
    server = openai_at_server
    prompts = str(_prompts(tmp_path / "p.jsonl", 3))
    cmd = ["revise", prompts, "--model", "openai/gpt-5-mini", "--rounds", "1",
           "--out", str(tmp_path / "r")]  # fmt: skip
    out = _cli(*cmd, "--dry-run")
    m = re.search(r"about ([\d,]+) tokens in, ([\d,]+) out: \$([\d.]+)", out)
    assert m, out
    assert "An estimate, the worst case" in out and "full output cap" in out
    assert "hidden reasoning included" in out
    _cli(*cmd)
    sent = sum(int(b.get("max_completion_tokens") or b["max_tokens"]) for b in server.bodies)
    assert int(m[2].replace(",", "")) == sent


def test_anthropic_stable_prefix_is_marked_for_its_prompt_cache_unless_turned_off(
    provider_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through litellm to an Anthropic-shaped Messages API: the few-shot prefix and each
    revise conversation so far are marked with cache_control once an earlier call began with
    them, so later calls read them (billed at 0.1x); --no-prompt-cache marks nothing."""
    monkeypatch.setenv("ANTHROPIC_API_BASE", provider_server.base_url.removesuffix("/v1"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    server = provider_server
    server.usage_by_length = server.prompt_cache = True
    prompts = str(_prompts(tmp_path / "p.jsonl", 4))

    def marks(body: dict[str, Any]) -> int:
        blocks = [*(body.get("system") or [])] if isinstance(body.get("system"), list) else []
        for m in body["messages"]:
            blocks += m["content"] if isinstance(m["content"], list) else []
        return sum(bool(b.get("cache_control")) for b in blocks)

    cmd = ["revise", prompts, "--model", "anthropic/claude-sonnet-4-5", "--constitution",
           str(LONG), "--rounds", "2", "--principles", "sequence", "--temperature", "0"]  # fmt: skip
    _cli(*cmd, "--out", str(tmp_path / "r"))
    assert any(marks(b) for b in server.bodies)
    assert all(marks(b) <= 4 for b in server.bodies)  # Anthropic allows four breakpoints
    read = sum(u.get("cache_read_input_tokens", 0) for u in server.billed)
    written = sum(u.get("cache_creation_input_tokens", 0) for u in server.billed)
    assert read > 2 * written > 0  # each write is read more than twice over
    # litellm prices what the server billed: plain input, reads at 0.1x, writes at 1.25x
    stats = _stats(tmp_path / "r")
    billed = sum(u["input_tokens"] * 3.0 + u.get("cache_read_input_tokens", 0) * 0.3
                 + u.get("cache_creation_input_tokens", 0) * 3.75 + u["output_tokens"] * 15.0
                 for u in server.billed) / 1e6  # fmt: skip
    assert stats["cost"] == pytest.approx(billed, abs=2e-6)
    assert stats["prompt_tokens"] == sum(
        u["input_tokens"] + u.get("cache_read_input_tokens", 0)
        + u.get("cache_creation_input_tokens", 0) for u in server.billed
    )  # fmt: skip
    server.bodies.clear()
    _cli(*cmd, "--out", str(tmp_path / "r2"), "--no-prompt-cache", "--no-cache")
    assert server.bodies and not any(marks(b) for b in server.bodies)


def test_an_empty_batch_answer_is_still_counted_as_billed(
    openai_at_server: FaultServer, tmp_path: Path
) -> None:
    """A reasoning model that spends its whole cap thinking answers nothing, and is billed for
    it: the batch line's tokens and cost count even though the row fails (as synchronously)."""
    server = openai_at_server
    server.script = ["empty", "ok", "ok"]
    run = tmp_path / "g"
    out = _cli("generate", str(_prompts(tmp_path / "p.jsonl", 3)), "--model", "openai/gpt-5-mini",
               "--max-tokens", "64", "--out", str(run), "--batch-api", code=3)  # fmt: skip
    assert "2 done; 1 failed" in out
    stats = _stats(run)
    assert len(server.billed) == 3
    assert stats["completion_tokens"] == sum(u["completion_tokens"] for u in server.billed)
    batch = _bill(server.billed, MINI["batch_in"], MINI["batch_out"], MINI["batch_cached"])
    assert stats["cost"] == pytest.approx(batch, abs=2e-6)


def test_a_reasoning_judge_run_reports_what_the_server_billed_and_judge_report_divides_it(
    openai_at_server: FaultServer, tmp_path: Path
) -> None:
    """`judge` with a reasoning model: every answer bills hidden reasoning as output; the
    manifest's cost equals the server's bill at gpt-5-mini's rates, and `judge-report`'s cost
    per labelled pair is that bill over the labelled pairs."""
    server = openai_at_server
    server.usage_by_length = False  # 10 tokens in, 30 reasoning + 10 out per answer
    server.reasoning_tokens = dict.fromkeys(server.reasoning_tokens, 30)
    # a consistent judge: the response that says yes, in either order
    server.responder = lambda body, rng: (
        "A" if re.search(r"RESPONSE-A-\w+>>>\nyes", str(body["messages"][-1]["content"])) else "B"
    )
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"})
                             + "\n" for i in range(4)))  # fmt: skip
    run = tmp_path / "j"
    out = _cli("judge", str(pairs), "-j", "openai/gpt-5-mini", "--mode", "letter",
               "--out", str(run))  # fmt: skip
    billed = _bill(server.billed, MINI["in"], MINI["out"], MINI["cached"])
    stats = _stats(run)
    assert stats["reasoning_tokens"] == 30 * len(server.billed) == 30 * 8  # both orders
    assert stats["cost"] == pytest.approx(billed, abs=2e-6)
    assert f"({30 * 8} reasoning)" in out
    r = CliRunner().invoke(app, ["judge-report", str(run)])
    assert r.exit_code == 0, r.output
    rep = json.loads((run / "judge_report.json").read_text())
    labelled = rep["labels"].get("A", 0) + rep["labels"].get("B", 0)
    assert labelled and rep["cost_per_labelled_pair"] == pytest.approx(billed / labelled, abs=1e-6)
    assert "cost / labelled pair" in r.output


def test_anthropic_batch_usage_counts_cache_reads_and_writes_as_input() -> None:
    """Anthropic's `input_tokens` excludes cache reads and writes: every billed input token is
    the sum, each priced at its rate."""
    from cai_kit.engine.batch_providers import anthropic_usage

    u = anthropic_usage({"input_tokens": 50, "cache_read_input_tokens": 1000,
                         "cache_creation_input_tokens": 200, "output_tokens": 7})  # fmt: skip
    assert (u.prompt_tokens, u.cached_tokens, u.cache_write_tokens) == (1250, 1000, 200)
    sonnet = price_for("anthropic/claude-sonnet-4-5", "litellm")
    assert sonnet is not None
    expected = (50 * 3.0 + 1000 * 0.3 + 200 * 3.75 + 7 * 15.0) / 1e6
    assert sonnet.cost_of(u) == pytest.approx(expected)
    assert sonnet.cost_of(u, batch=True) == pytest.approx(expected / 2)
