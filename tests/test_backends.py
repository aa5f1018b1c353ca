"""Backends answer real prompts: embedded llama.cpp, transformers (batched), the llama.cpp
server through our aiohttp client and through litellm; errors are one clear sentence."""

from __future__ import annotations

import asyncio

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.errors import ConfigError, FatalBackendError, RetryableError
from cai_kit.llm import GenParams, get_backend
from cai_kit.llm.registry import resolve

HELLO = [{"role": "user", "content": "Reply with one word: hello."}]
GREEDY = GenParams(temperature=0, max_tokens=12, seed=0)


async def _chat(model: str, params: GenParams = GREEDY, **kw):  # type: ignore[no-untyped-def]
    backend = get_backend(model, **kw)
    try:
        return await backend.chat(HELLO, params)
    finally:
        await backend.aclose()


def test_model_strings_resolve_to_the_right_backend() -> None:
    assert resolve("local").name == "local"
    assert resolve("hf:./x").name == "hf"
    assert resolve("anthropic/claude-3-5-haiku-latest").name == "hosted"
    assert resolve("smollm2", "http://127.0.0.1:1/v1").name == "openai-compat"
    assert resolve("litellm:openai/x", "http://127.0.0.1:1/v1").name == "litellm"
    with pytest.raises(ConfigError, match="Unknown model string"):
        resolve("gpt4")


@pytest.mark.slow
def test_embedded_llama_cpp_answers_with_top_logprobs() -> None:
    c = asyncio.run(_chat("local", GREEDY.replace(top_logprobs=5)))
    assert c.text.strip() and c.usage.completion_tokens > 0
    assert c.logprobs and len(c.logprobs[0].top) == 5
    assert c.logprobs[0].logprob <= 0


@pytest.mark.slow
def test_transformers_backend_batches_and_matches_sequential_greedy_output() -> None:
    prompts = [[{"role": "user", "content": f"Name a colour number {i}."}] for i in range(4)]

    async def go() -> tuple[list[str], list[str]]:
        b = get_backend("local:transformers")
        try:
            batched = await asyncio.gather(*[b.chat(p, GREEDY) for p in prompts])
            one_by_one = [await b.chat(p, GREEDY) for p in prompts]
            return [c.text for c in batched], [c.text for c in one_by_one]
        finally:
            await b.aclose()

    batched, sequential = asyncio.run(go())
    assert len(batched) == 4 and all(batched)
    assert batched == sequential


@pytest.mark.slow
def test_hf_checkpoint_backend_loads_the_converted_embedded_model() -> None:
    from cai_kit.llm.embedded import trainable_checkpoint

    c = asyncio.run(_chat(f"hf:{trainable_checkpoint()}", GREEDY.replace(top_logprobs=2)))
    assert c.text.strip() and c.logprobs and len(c.logprobs[0].top) == 2


@pytest.mark.slow
def test_openai_compat_backend_talks_to_a_real_llama_cpp_server(llama_server) -> None:  # type: ignore[no-untyped-def]
    c = asyncio.run(
        _chat(llama_server.model, GREEDY.replace(top_logprobs=3), api_base=llama_server.base_url)
    )
    assert c.text.strip() and c.usage.prompt_tokens > 0
    assert c.logprobs and len(c.logprobs[0].top) == 3


@pytest.mark.slow
def test_litellm_routed_to_the_llama_cpp_server_returns_top_logprobs(llama_server) -> None:  # type: ignore[no-untyped-def]
    c = asyncio.run(
        _chat(
            f"litellm:openai/{llama_server.model}",
            GREEDY.replace(top_logprobs=3),
            api_base=llama_server.base_url,
        )
    )
    assert c.text.strip()
    assert c.logprobs and len(c.logprobs[0].top) == 3


def test_missing_key_is_one_sentence_naming_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="Set ANTHROPIC_API_KEY"):
        get_backend("anthropic/claude-3-5-haiku-latest")


def test_unreachable_server_says_so() -> None:
    from tests.fixtures.llama_server import free_port

    with pytest.raises(RetryableError, match="unreachable"):
        asyncio.run(_chat("m", api_base=f"http://127.0.0.1:{free_port()}/v1"))


@pytest.mark.slow
def test_real_llama_cpp_server_serves_any_model_name_and_a_wrong_path_is_a_fatal_404(
    llama_server,  # type: ignore[no-untyped-def]
) -> None:
    # llama.cpp's server serves its one model whatever name it is asked for ...
    c = asyncio.run(_chat("nope", api_base=llama_server.base_url))
    assert c.text.strip() and c.usage.completion_tokens > 0
    # ... and answers a path it doesn't have with a real 404: fatal at once, one sentence.
    with pytest.raises(FatalBackendError, match="does not exist") as err:
        asyncio.run(_chat(llama_server.model, api_base=llama_server.base_url + "/nope"))
    assert err.value.status == 404


def test_key_never_appears_in_error_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-DO-NOT-LEAK-1234567890"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    from cai_kit.llm.openai_compat import _status_error

    err = _status_error(400, f"bad key {secret}".encode(), "http://x/v1", "m", None)
    assert secret not in str(err)


def test_cli_models_lists_every_backend() -> None:
    out = CliRunner().invoke(app, ["models"]).output
    for name in ("local", "hf", "openai-compat", "hosted", "OPENAI_API_KEY"):
        assert name in out


@pytest.mark.slow
def test_cli_chat_answers_on_the_embedded_model() -> None:
    result = CliRunner().invoke(app, ["chat", "Say hi.", "--max-tokens", "8", "--temperature", "0"])
    assert result.exit_code == 0, result.output
    assert result.output.strip()
