"""Hosted providers: OpenAI-compatible ones on the fast client, the others through litellm;
keys go only where they should. Every provider here is the scripted server on loopback,
reached through the provider's own base-URL variable (OPENAI_BASE_URL, ...)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.engine import CallFailed, Engine, EngineConfig
from cai_kit.errors import ConfigError
from cai_kit.llm import GenParams, get_backend
from cai_kit.llm import providers as providers_mod
from cai_kit.llm.openai_compat import OpenAICompatBackend
from cai_kit.llm.registry import resolve
from tests.fixtures.fault_server import FaultServer

SECRET = "sk-test-provider-KEY-0123456789"
MSGS = [{"role": "user", "content": "Which is better, A or B?"}]


def _letters(body: dict[str, Any], rng: Any) -> list[dict[str, Any]]:
    return [{"token": "A", "logprob": -0.1, "top_logprobs": [
        {"token": "A", "logprob": -0.1}, {"token": "B", "logprob": -2.4}]}]  # fmt: skip


async def _call(backend: Any, tmp_path: Path, params: GenParams, **cfg: Any):  # type: ignore[no-untyped-def]
    engine = Engine(EngineConfig(quiet=True, backoff_base_s=0.01, cache_path=tmp_path / "c.sqlite",
                                 **cfg))  # fmt: skip
    try:
        return await engine.call(backend, MSGS, params), engine.stats
    finally:
        await backend.aclose()
        await engine.aclose()


def test_openai_string_uses_the_fast_client_at_openai_base_url(
    provider_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", provider_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    provider_server.logprobs = _letters
    assert resolve("openai/gpt-4o-mini").name == "provider"
    backend = get_backend("openai/gpt-4o-mini")
    assert isinstance(backend, OpenAICompatBackend) and SECRET not in repr(backend.identity())
    params = GenParams(temperature=0, max_tokens=1, top_logprobs=5)
    completion, stats = asyncio.run(_call(backend, tmp_path, params))
    body = provider_server.bodies[-1]
    assert provider_server.seen_auth == [f"Bearer {SECRET}"]  # the provider's key, as a header
    assert body["model"] == "gpt-4o-mini" and body["logprobs"] is True and body["top_logprobs"] == 5
    assert completion.logprobs and completion.logprobs[0].top == {"A": -0.1, "B": -2.4}
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (10, 10)
    assert stats.cost > 0  # priced from the cost map by the full model string, from usage


def test_groq_uses_its_own_key_and_base_and_asks_for_no_logprobs(
    provider_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GROQ_BASE_URL", provider_server.base_url)
    monkeypatch.setenv("GROQ_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-for-groq-000000")
    backend = get_backend("groq/llama-3.1-8b-instant")
    assert not backend.supports_logprobs
    asyncio.run(_call(backend, tmp_path, GenParams(temperature=0.5, top_logprobs=5, seed=3)))
    body = provider_server.bodies[-1]
    assert provider_server.seen_auth == [f"Bearer {SECRET}"]
    assert body["model"] == "llama-3.1-8b-instant" and "logprobs" not in body and body["seed"] == 3


def test_mistral_gets_its_seed_field(
    provider_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISTRAL_BASE_URL", provider_server.base_url)
    monkeypatch.setenv("MISTRAL_API_KEY", SECRET)
    asyncio.run(_call(get_backend("mistral/mistral-small"), tmp_path, GenParams(seed=7)))
    body = provider_server.bodies[-1]
    assert body["random_seed"] == 7 and "seed" not in body


def test_missing_provider_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variable named is the one the provider's own SDK and docs use (Together's docs and
    SDK read TOGETHER_API_KEY; litellm's TOGETHERAI_API_KEY is still read second)."""
    for var in ("TOGETHERAI_API_KEY", "TOGETHER_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="Set TOGETHER_API_KEY to use together_ai/"):
        get_backend("together_ai/meta-llama/Llama-3-8b-chat-hf")


@pytest.mark.parametrize(
    ("action", "words"), [("401", "OPENAI_API_KEY"), ("404", "does not exist")]
)
def test_provider_401_and_404_fail_fast_with_a_clear_sentence(
    provider_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    action: str, words: str,
) -> None:  # fmt: skip
    monkeypatch.setenv("OPENAI_BASE_URL", provider_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    provider_server.default = action
    with pytest.raises(CallFailed, match=words) as info:
        asyncio.run(_call(get_backend("openai/gpt-4o-mini"), tmp_path, GenParams()))
    assert provider_server.requests == 1 and SECRET not in str(info.value)


def test_provider_429_honours_retry_after(
    provider_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", provider_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    provider_server.script = ["429"]
    # backoff alone would wait ~0.01 s; the server's Retry-After says 0.2 s
    start = time.monotonic()
    completion, stats = asyncio.run(_call(get_backend("openai/gpt-4o-mini"), tmp_path, GenParams()))
    assert stats.retries == 1 and completion.text
    assert time.monotonic() - start >= 0.2


def test_anthropic_goes_through_litellm_to_a_messages_api(
    provider_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_BASE", provider_server.base_url.removesuffix("/v1"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    assert resolve("anthropic/claude-haiku-4-5").name == "hosted"
    backend = get_backend("anthropic/claude-haiku-4-5")
    assert backend.kind == "litellm"
    completion, stats = asyncio.run(_call(backend, tmp_path, GenParams(temperature=0)))
    assert completion.text.startswith("echo ") and provider_server.seen_auth == [SECRET]
    assert provider_server.bodies[-1]["model"] == "claude-haiku-4-5"
    assert completion.usage.prompt_tokens == 10 and stats.cost > 0  # litellm's cost map


def test_anthropic_through_litellm_sends_no_top_p_next_to_temperature(
    provider_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claude Sonnet 4.5 and later refuse `temperature` and `top_p` together; top_p 1.0 (ours
    unless asked) cuts nothing, so it is not sent: every synchronous call would fail."""
    monkeypatch.setenv("ANTHROPIC_API_BASE", provider_server.base_url.removesuffix("/v1"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    provider_server.exclusive_sampling = True
    backend = get_backend("anthropic/claude-sonnet-4-5")
    completion, stats = asyncio.run(_call(backend, tmp_path, GenParams(temperature=0.7)))
    assert completion.text.startswith("echo ") and stats.failures == 0
    assert "top_p" not in provider_server.bodies[-1]


def test_cli_models_shows_the_path_and_keeps_brackets() -> None:
    runner = CliRunner()
    table = runner.invoke(app, ["models"]).output
    assert "[local] extra" in table and "the  extra" not in table
    for name in ("provider", "hosted", "groq", "OPENAI_BASE_URL", "fast client", "litellm"):
        assert name in table
    fast = runner.invoke(app, ["models", "openai/gpt-4o-mini"]).output
    assert "fast aiohttp client -> https://api.openai.com/v1" in fast and "OPENAI_API_KEY" in fast
    slow = runner.invoke(app, ["models", "anthropic/claude-3-5-haiku-latest"]).output
    assert "litellm" in slow and "ANTHROPIC_API_KEY" in slow
    forced = runner.invoke(app, ["models", "litellm:openai/gpt-4o-mini"]).output
    assert "litellm" in forced


# --- keys go only where they should ------------------------------------------------------------


@pytest.fixture
def lan_host(provider_server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A base URL on a non-loopback host name that still reaches the loopback server."""
    import socket

    real = socket.getaddrinfo

    def fake(host: Any, *args: Any, **kw: Any) -> Any:
        return real("127.0.0.1" if host == "gpu-box.lan" else host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    monkeypatch.setattr(providers_mod, "_SAID", set())
    return provider_server.base_url.replace("127.0.0.1", "gpu-box.lan")


def test_key_is_not_sent_over_plain_http_to_another_machine(
    provider_server: FaultServer, lan_host: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("CAI_KIT_ALLOW_HTTP_KEY", raising=False)
    for seed in (1, 2):
        asyncio.run(_call(get_backend("m", api_base=lan_host), tmp_path, GenParams(seed=seed)))
    assert provider_server.seen_auth == ["", ""]  # the call went out, the key did not
    err = capfd.readouterr().err
    assert err.count("not sending the API key") == 1 and SECRET not in err  # said once


def test_key_over_plain_http_with_opt_in_warns_once(
    provider_server: FaultServer, lan_host: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("CAI_KIT_ALLOW_HTTP_KEY", "1")
    for seed in (1, 2):
        asyncio.run(_call(get_backend("m", api_base=lan_host), tmp_path, GenParams(seed=seed)))
    assert provider_server.seen_auth == [f"Bearer {SECRET}"] * 2
    err = capfd.readouterr().err
    assert err.count("sending the API key to") == 1 and SECRET not in err


def test_key_goes_to_loopback_and_https_without_a_word(capfd: pytest.CaptureFixture[str]) -> None:
    for base in ("http://127.0.0.1:8000/v1", "http://localhost:8000/v1", "http://[::1]:8000/v1",
                 "https://gpu-box.lan/v1"):  # fmt: skip
        assert providers_mod.key_allowed(base)
    assert capfd.readouterr().err == ""


def test_constitution_show_prints_bracketed_text_as_text(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: brackets\nversion: 1\ndescription: Needs the [local] extra.\nprinciples:\n"
        "  - id: a\n    critique: 'Quote [bold]the harm[/bold] and [PROMPT].'\n"
        "    revision: Remove it.\n"
    )
    out = CliRunner().invoke(app, ["constitution", "show", str(path)]).output
    assert "[local] extra" in out and "[bold]the harm[/bold] and [PROMPT]" in out


# --- the provider table's documented differences (see docs/backends.md) ------------------------


def test_fireworks_gets_at_most_its_five_top_logprobs(
    provider_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fireworks documents top_logprobs 0..5: the judge's default 10 would fail every call."""
    monkeypatch.setenv("FIREWORKS_BASE_URL", provider_server.base_url)
    monkeypatch.setenv("FIREWORKS_API_KEY", SECRET)
    provider_server.max_top_logprobs = 5  # as Fireworks validates the body
    provider_server.logprobs = _letters
    backend = get_backend("fireworks_ai/accounts/fireworks/models/llama-v3p1-8b-instruct")
    completion, stats = asyncio.run(_call(backend, tmp_path, GenParams(top_logprobs=10)))
    body = provider_server.bodies[-1]
    assert provider_server.seen_auth == [f"Bearer {SECRET}"]  # FIREWORKS_API_KEY, the SDK's
    assert body["logprobs"] is True and body["top_logprobs"] == 5 and stats.failures == 0
    assert completion.logprobs and completion.logprobs[0].top == {"A": -0.1, "B": -2.4}


def test_deepseek_reasoner_is_asked_for_no_logprobs_and_deepseek_chat_is(
    provider_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DeepSeek: setting logprobs/top_logprobs on deepseek-reasoner is an error (documented)."""
    monkeypatch.setenv("DEEPSEEK_BASE_URL", provider_server.base_url)
    monkeypatch.setenv("DEEPSEEK_API_KEY", SECRET)
    provider_server.refuses["deepseek-reasoner"] = {"logprobs", "top_logprobs"}
    provider_server.logprobs = _letters
    params = GenParams(temperature=0, max_tokens=1, top_logprobs=5)
    reasoner = get_backend("deepseek/deepseek-reasoner")
    assert not reasoner.supports_logprobs
    completion, stats = asyncio.run(_call(reasoner, tmp_path, params))
    assert stats.failures == 0 and "logprobs" not in provider_server.bodies[-1]
    chat = get_backend("deepseek/deepseek-chat")
    completion, _ = asyncio.run(_call(chat, tmp_path / "chat", params))
    assert provider_server.bodies[-1]["top_logprobs"] == 5 and completion.logprobs
    runner = CliRunner()
    assert "log-probs no" in runner.invoke(app, ["models", "deepseek/deepseek-reasoner"]).output
    assert "log-probs yes" in runner.invoke(app, ["models", "deepseek/deepseek-chat"]).output


def test_xai_reasoning_model_gets_no_stop_and_its_text_is_cut_here(
    provider_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """xAI: `stop` sent to a reasoning model (grok-3-mini, grok-4...) is an error; the stop
    sequence is applied to the answer here instead. A non-reasoning model still gets it."""
    monkeypatch.setenv("XAI_BASE_URL", provider_server.base_url)
    monkeypatch.setenv("XAI_API_KEY", SECRET)
    provider_server.refuses["grok-4"] = {"stop"}
    provider_server.responder = lambda body, rng: "The answer is A. END and more words"
    params = GenParams(stop=("END",))
    completion, stats = asyncio.run(_call(get_backend("xai/grok-4"), tmp_path, params))
    assert stats.failures == 0 and "stop" not in provider_server.bodies[-1]
    assert completion.text == "The answer is A. " and completion.finish_reason == "stop"
    asyncio.run(_call(get_backend("xai/grok-4-fast-non-reasoning"), tmp_path / "n", params))
    assert provider_server.bodies[-1]["stop"] == ["END"]


def test_openrouter_reports_cost_without_the_deprecated_usage_flag(
    provider_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenRouter always returns usage.cost; `usage: {include: true}` is deprecated."""
    monkeypatch.setenv("OPENROUTER_BASE_URL", provider_server.base_url)
    monkeypatch.setenv("OPENROUTER_API_KEY", SECRET)
    provider_server.report_cost = 0.0125
    backend = get_backend("openrouter/meta-llama/llama-3.1-8b-instruct")
    completion, stats = asyncio.run(_call(backend, tmp_path, GenParams(seed=3)))
    body = provider_server.bodies[-1]
    assert "usage" not in body and body["seed"] == 3
    assert completion.cost == pytest.approx(0.0125) and stats.cost == pytest.approx(0.0125)


def test_deepinfra_takes_the_deepinfra_token_its_docs_use(
    provider_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEEPINFRA_BASE_URL", provider_server.base_url)
    monkeypatch.delenv("DEEPINFRA_API_KEY", raising=False)
    monkeypatch.setenv("DEEPINFRA_TOKEN", SECRET)
    asyncio.run(_call(get_backend("deepinfra/meta-llama/Llama-3.3-70B"), tmp_path, GenParams()))
    assert provider_server.seen_auth == [f"Bearer {SECRET}"]


def test_batch_api_goes_to_deepinfra_and_not_to_together(
    provider_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DeepInfra's Batch API is OpenAI's (files + batches, metadata); Together's is not (its
    create answers {job, warning}, statuses are upper case, files use purpose batch-api), so a
    together_ai/ job runs synchronously instead of driving an API it does not speak."""
    from cai_kit.engine.batch_providers import OpenAIBatchClient, batch_client_for

    for prefix in ("DEEPINFRA", "TOGETHER"):
        monkeypatch.setenv(f"{prefix}_BASE_URL", provider_server.base_url)
        monkeypatch.setenv(f"{prefix}_API_KEY", SECRET)
    assert isinstance(batch_client_for(get_backend("deepinfra/m")), OpenAIBatchClient)
    assert batch_client_for(get_backend("together_ai/m")) is None
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "q"}\n')
    r = CliRunner().invoke(app, ["generate", str(prompts), "--model", "together_ai/m", "--out",
                                 str(tmp_path / "o"), "--batch-api", "--cache-path",
                                 str(tmp_path / "c"), "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert provider_server.batches_created == 0 and provider_server.paid == 1


def test_groq_batch_list_without_paging_is_read_once_not_forever(
    provider_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Groq's batch list is {object, data}: no has_more, no documented `after`. Looking for a
    wave's batch that was never created must end (the SDK would ask for the same page again)."""
    from cai_kit.engine.batch_providers import batch_client_for

    monkeypatch.setenv("GROQ_BASE_URL", provider_server.base_url)
    monkeypatch.setenv("GROQ_API_KEY", SECRET)
    provider_server.batch_list_unpaged = True
    client = batch_client_for(get_backend("groq/llama-3.1-8b-instant"))
    assert client is not None
    path = tmp_path / "wave.jsonl"
    path.write_text(json.dumps(client.line("k" * 64, MSGS, GenParams(seed=1))) + "\n")

    async def go() -> tuple[str, str | None, str | None]:
        try:
            made = await client.submit(path, "wave-a")
            found = await asyncio.wait_for(client.find("wave-a", since=time.time()), 10)
            never = await asyncio.wait_for(client.find("wave-b", since=time.time()), 10)
            return made, found, never
        finally:
            await client.aclose()

    made, found, never = asyncio.run(go())
    assert found == made and never is None and provider_server.batch_list_pages <= 3


@pytest.mark.parametrize(("name", "model"), [("CEREBRAS", "cerebras/llama3.1-8b"),
                                             ("GROQ", "groq/llama-3.1-8b-instant")])  # fmt: skip
def test_a_base_url_variable_naming_only_the_host_gets_the_api_path(
    provider_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    name: str, model: str,
) -> None:  # fmt: skip
    """The Cerebras and Groq SDKs read CEREBRAS_BASE_URL / GROQ_BASE_URL as the bare host and
    add /v1 or /openai/v1 themselves: the same value works here."""
    monkeypatch.setenv(f"{name}_BASE_URL", provider_server.base_url.removesuffix("/v1"))
    monkeypatch.setenv(f"{name}_API_KEY", SECRET)
    completion, stats = asyncio.run(_call(get_backend(model), tmp_path, GenParams()))
    assert stats.failures == 0 and completion.text and provider_server.paid == 1


def test_cerebras_is_asked_for_openai_shaped_logprobs(
    provider_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cerebras' chat API takes logprobs (bool) + top_logprobs (0..20) and answers OpenAI's
    `logprobs.content`: the judge's soft labels come back."""
    monkeypatch.setenv("CEREBRAS_BASE_URL", provider_server.base_url)
    monkeypatch.setenv("CEREBRAS_API_KEY", SECRET)
    provider_server.logprobs = _letters
    backend = get_backend("cerebras/llama3.1-8b")
    completion, _ = asyncio.run(_call(backend, tmp_path, GenParams(top_logprobs=10)))
    assert provider_server.bodies[-1]["top_logprobs"] == 10
    assert completion.logprobs and completion.logprobs[0].top == {"A": -0.1, "B": -2.4}


def test_a_batch_job_is_priced_at_the_providers_own_discount(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DeepInfra's batch jobs cost 20% less than synchronous calls, not half: --max-cost and
    the dry run must not count them at half price."""
    from cai_kit.engine.pricing import price_for_backend

    monkeypatch.setenv("DEEPINFRA_API_KEY", SECRET)
    price = price_for_backend(get_backend("deepinfra/meta-llama/Meta-Llama-3.1-8B-Instruct"))
    assert price is not None and price.cost(10**6, 10**6) > 0
    assert price.cost(10**6, 10**6, batch=True) == pytest.approx(0.8 * price.cost(10**6, 10**6))
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    openai = price_for_backend(get_backend("openai/gpt-4o-mini"))
    assert openai is not None  # the cost map's own batch price: half
    assert openai.cost(10**6, 10**6, batch=True) == pytest.approx(0.5 * openai.cost(10**6, 10**6))
