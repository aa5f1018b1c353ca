"""The built-in backend specs (registered like any plugin's)."""

from __future__ import annotations

from cai_kit.llm.base import BackendSpec
from cai_kit.llm.providers import lookup


def _is_local(model: str, api_base: str | None) -> bool:
    return model in ("local", "local:llama", "local:transformers")


def _is_hf(model: str, api_base: str | None) -> bool:
    return model.startswith("hf:")


def _is_forced_litellm(model: str, api_base: str | None) -> bool:
    return model.startswith("litellm:")


def _is_openai_compat(model: str, api_base: str | None) -> bool:
    return api_base is not None


def _is_fast_provider(model: str, api_base: str | None) -> bool:
    provider = lookup(model)
    return api_base is None and provider is not None and provider.fast


def _is_litellm(model: str, api_base: str | None) -> bool:
    provider, sep, name = model.partition("/")
    return bool(sep and provider and name)


BUILTINS = [
    BackendSpec(
        name="local",
        description="The embedded SmolLM2-135M-Instruct (llama.cpp, or transformers with local:transformers).",
        needs="the [local] extra; no key, no network",
        example="local",
        factory="cai_kit.llm.local:make_local_backend",
        claims=_is_local,
        priority=10,
    ),
    BackendSpec(
        name="hf",
        description="A transformers checkpoint on disk (e.g. one you trained), loaded with safetensors.",
        needs="the [local] extra",
        example="hf:./runs/dpo/model",
        factory="cai_kit.llm.local:make_hf_backend",
        claims=_is_hf,
        priority=20,
    ),
    BackendSpec(
        name="litellm",
        description="Forced litellm routing: litellm:PROVIDER/MODEL (works with --api-base too).",
        needs="the provider's key env var, e.g. OPENAI_API_KEY",
        example="litellm:openai/gpt-4o-mini",
        factory="cai_kit.llm.litellm_backend:make_litellm_backend",
        claims=_is_forced_litellm,
        priority=30,
    ),
    BackendSpec(
        name="openai-compat",
        description="Any OpenAI-compatible server by base URL (vLLM, llama.cpp server, Ollama, gateways).",
        needs="--api-base URL; OPENAI_API_KEY if the server wants one",
        example="openai/qwen2.5-7b --api-base http://localhost:8000/v1",
        factory="cai_kit.llm.openai_compat:make_openai_compat_backend",
        claims=_is_openai_compat,
        priority=40,
    ),
    BackendSpec(
        name="provider",
        description="Hosted OpenAI-compatible providers on the fast client (openai/, openrouter/, "
        "together_ai/, groq/, fireworks_ai/, deepseek/, mistral/, ...).",
        needs="the provider's key env var (OPENAI_API_KEY, GROQ_API_KEY, ...); OPENAI_BASE_URL "
        "overrides OpenAI's address",
        example="openai/gpt-4o-mini",
        factory="cai_kit.llm.openai_compat:make_provider_backend",
        claims=_is_fast_provider,
        priority=45,
    ),
    BackendSpec(
        name="hosted",
        description="Other hosted providers through litellm (anthropic/, gemini/, bedrock/, "
        "vertex_ai/, ...).",
        needs="the provider's key env var: ANTHROPIC_API_KEY, GEMINI_API_KEY, ...",
        example="anthropic/claude-3-5-haiku-latest",
        factory="cai_kit.llm.litellm_backend:make_litellm_backend",
        claims=_is_litellm,
        priority=50,
    ),
]
