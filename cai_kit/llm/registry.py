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

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from cai_kit.errors import ConfigError

if TYPE_CHECKING:
    from cai_kit.llm.base import Backend


@dataclass(frozen=True)
class BackendSpec:
    name: str
    description: str
    needs: str  # what the user must provide (env vars, extras, a server)
    example: str
    factory: str  # "module:callable"; callable(model_string, api_base=..., **options) -> Backend
    claims: Callable[[str, str | None], bool]
    priority: int = 100  # lower is tried first

    def build(self, model: str, api_base: str | None = None, **options: Any) -> Backend:
        module, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module), attr)(model, api_base=api_base, **options)


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
    from cai_kit.llm import specs  # the built-ins

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
