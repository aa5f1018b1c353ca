"""Model string -> backend.

Built-in backends and third-party plugins register the same way: a `BackendSpec` that
says which model strings it claims and how to build the backend (a lazy "module:attr"
path, so listing backends never imports torch or litellm). Plugins publish specs under
the `cai_kit.backends` entry-point group.

Resolution order for a model string (first match wins):
  local, local:llama, local:transformers     the embedded SmolLM2-135M-Instruct
  hf:PATH                                     a transformers checkpoint on disk
  litellm:PROVIDER/MODEL                      force litellm (any provider it knows)
  NAME with --api-base                        any OpenAI-compatible server (aiohttp)
  openai/NAME with --api-base                 the same; the prefix is dropped
  PROVIDER/MODEL, OpenAI-compatible provider  the same client at the provider's base URL
                                              (openai/, groq/, together_ai/, ...: providers.py)
  PROVIDER/MODEL, any other                   litellm (anthropic/, gemini/, bedrock/, ...)
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from cai_kit.errors import ConfigError
from cai_kit.llm import specs  # the built-ins
from cai_kit.llm.base import Backend, BackendSpec
from cai_kit.llm.providers import lookup

__all__ = [
    "BackendSpec",
    "get_backend",
    "get_interactive_backend",
    "list_backends",
    "register",
    "resolve",
    "route",
]

_SPECS: dict[str, BackendSpec] = {}
_PLUGINS_LOADED = False


def register(spec: BackendSpec) -> BackendSpec:
    """Register a backend kind. Built-ins and plugins both come through here."""
    _SPECS[spec.name] = spec
    return spec


def _load() -> None:
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for spec in specs.BUILTINS:
        register(spec)
    for ep in entry_points(group="cai_kit.backends"):
        obj = ep.load()
        for spec in obj if isinstance(obj, list | tuple) else [obj]:
            register(spec)


def list_backends() -> list[BackendSpec]:
    _load()
    return sorted(_SPECS.values(), key=lambda s: s.priority)


def resolve(model: str, api_base: str | None = None) -> BackendSpec:
    for spec in list_backends():
        if spec.claims(model, api_base):
            return spec
    raise ConfigError(
        f"Unknown model string {model!r}. Use 'local', 'hf:PATH', 'PROVIDER/MODEL' "
        "(e.g. openai/gpt-4o-mini), or a model name with --api-base; `cai-kit models` lists them."
    )


def get_backend(model: str | None = None, api_base: str | None = None, **options: Any) -> Backend:
    """Build the backend for a model string (default: the embedded local model)."""
    model = (model or "local").strip()
    return resolve(model, api_base).build(model, api_base=api_base, **options)


def get_interactive_backend(model: str | None = None, api_base: str | None = None) -> Backend:
    """The backend for a person waiting on each answer (`chat`, `serve`): for the embedded
    model, the low-latency one-at-a-time llama.cpp path (jobs take the batched one). It is the
    path `serve` streams from, so a seed gives the same text streamed or not."""
    model = (model or "local").strip()
    one = {"parallel": 1} if model in ("local", "local:llama") else {}
    return get_backend(model, api_base=api_base, **one)


def _reasoning_note(model: str) -> str:
    """`; reasoning: efforts ... (default ...)` for a reasoning model, else nothing."""
    from cai_kit.llm.reasoning import reasoning_rules

    rules = reasoning_rules(model)
    if rules is None or not rules.reasons:
        return ""
    default = f", default {rules.default_effort}" if rules.default_effort else ""
    return f"; reasoning: efforts {', '.join(rules.efforts)}{default}"


def _thinking_note(model: str) -> str:
    """`; reasoning: efforts ..., thinking budget ...` for a model whose thinking the litellm
    route maps (Claude, Gemini: `thinking.py`), else nothing."""
    from cai_kit.llm.thinking import capabilities

    caps = capabilities(model)
    if caps is None or not caps.reasons:
        return ""
    if caps.budget is not None:
        how = f", thinking budget {caps.budget[0]:,}-{caps.budget[1]:,} tokens"
    else:
        how = ", a thinking level" if caps.levels else ""
    return f"; reasoning: efforts {', '.join(caps.efforts)}{how}"


def route(model: str, api_base: str | None = None) -> str:
    """One line saying which path a model string takes (for `cai-kit models MODEL`)."""
    spec = resolve(model, api_base)
    provider = lookup(model)
    if spec.name == "provider" and provider is not None:
        var, key = provider.key()
        return (
            f"{model}: fast aiohttp client -> {provider.resolved_base_url()} "
            f"(key {var}{'' if key else ', not set'}; "
            f"log-probs {'yes' if provider.logprobs_for(model.split('/', 1)[1]) else 'no'}; "
            f"price: {provider.price}{_reasoning_note(model)})"
        )
    if spec.name in ("hosted", "litellm"):
        where = f" -> {api_base}" if api_base else ""
        var = f" (key {provider.key_vars[0]})" if provider else ""
        return f"{model}: litellm{where}{var}{_thinking_note(model.removeprefix('litellm:'))}"
    if spec.name == "openai-compat":
        return f"{model}: fast aiohttp client -> {api_base} (price: --price, or usage.cost if reported)"
    return f"{model}: {spec.name} backend ({spec.description})"
