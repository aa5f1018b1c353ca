"""The backend contract: `await backend.chat(messages, params) -> Completion`.

Every model (hosted API, OpenAI-compatible server, the embedded local model, a trained
checkpoint) is reached through this one async method, so the engine, the revise loop and
the judge never care which kind they talk to. `BackendSpec` says how a kind of backend is
found and built (`registry.py` keeps them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cai_kit.llm.reasoning import ReasoningRules

ChatMessages = list[dict[str, str]]  # OpenAI shape: [{"role": "user", "content": "..."}]


@dataclass(frozen=True)
class GenParams:
    """Sampling parameters. Part of the call-cache key, so keep them plain values."""

    temperature: float = 0.7
    max_tokens: int = 256
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # >0 asks for the top-k log-probs of each generated token (the judge uses the first one).
    top_logprobs: int = 0
    # How hard a reasoning model thinks (none/minimal/low/medium/high/xhigh); None: the
    # provider's default. Each backend maps it to its provider's own control.
    reasoning_effort: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict, which deep-copies: this runs several times per call on the
        # engine's hot path (cache key, record ids). Every field is a plain value but `stop`.
        d = {name: getattr(self, name) for name in self.__dataclass_fields__}
        d["stop"] = list(self.stop)
        if d["reasoning_effort"] is None:  # absent when unset: earlier cache keys and ids hold
            del d["reasoning_effort"]
        return d

    def replace(self, **changes: Any) -> GenParams:
        return dataclasses.replace(self, **changes)  # (not asdict: it deep-copies, per call)

    def for_sample(self, index: int) -> GenParams:
        """The parameters of sample `index`: its own draw, reproducible for a fixed seed.

        Sample 0 keeps `seed`; sample i > 0 gets a seed derived from (seed, i), so k samples
        of one prompt are k different draws on every backend that honours seeds, and a re-run
        with the same seed gives the same k samples. Without a seed the provider draws anew
        and the call cache (whose key holds the index) keeps the samples apart.
        """
        if index == 0 or self.seed is None:
            return self
        digest = hashlib.sha256(f"cai-kit-sample:{self.seed}:{index}".encode()).hexdigest()
        return self.replace(seed=int(digest[:8], 16) & 0x7FFFFFFF)  # 31 bits: every API takes it


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)  # candidate token -> log-prob


@dataclass
class Usage:
    prompt_tokens: int = 0  # every input token, the cached ones included
    completion_tokens: int = 0  # every output token, hidden reasoning included (as billed)
    cached_tokens: int = 0  # of prompt_tokens, read from the provider's prompt cache
    reasoning_tokens: int = 0  # of completion_tokens, hidden reasoning
    cache_write_tokens: int = 0  # of prompt_tokens, written to the prompt cache (Anthropic)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Completion:
    text: str
    logprobs: list[TokenLogprob] | None = None
    usage: Usage = field(default_factory=Usage)
    cost: float | None = None  # USD, when the provider's price is known
    model: str = ""
    finish_reason: str | None = None
    cached: bool = False  # served from the call cache (no model call was paid)

    def to_dict(self) -> dict[str, Any]:
        """The cached form (spelled out: `asdict` is slow on the cache's hot path)."""
        lps = self.logprobs
        return {
            "text": self.text,
            "logprobs": None
            if lps is None
            else [{"token": t.token, "logprob": t.logprob, "top": dict(t.top)} for t in lps],
            "usage": {
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
                "cached_tokens": self.usage.cached_tokens,
                "reasoning_tokens": self.usage.reasoning_tokens,
                "cache_write_tokens": self.usage.cache_write_tokens,
            },
            "cost": self.cost,
            "model": self.model,
            "finish_reason": self.finish_reason,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Completion:
        lps = d.get("logprobs")
        return cls(
            text=d["text"],
            logprobs=[TokenLogprob(**t) for t in lps] if lps is not None else None,
            usage=Usage(**d.get("usage", {})),
            cost=d.get("cost"),
            model=d.get("model", ""),
            finish_reason=d.get("finish_reason"),
        )


class Backend(ABC):
    """One model behind one async call. Subclasses keep secrets out of `identity()`."""

    kind: str = "base"  # registry name of the backend kind
    default_concurrency: int = 8
    supports_logprobs: bool = False
    # A provider's cheaper tier (OpenAI "flex", `--service-tier`): sent by the backends whose
    # provider takes it and priced at its rates (engine.pricing); None: the default tier.
    service_tier: str | None = None
    # Mark the stable start of a prompt for a provider's explicit prompt cache (Anthropic's
    # cache_control, where long enough to pay); `--no-prompt-cache` turns it off.
    prompt_cache: bool = True

    # What the model takes when it reasons (llm/reasoning.py): None where nothing is known. Set
    # by the backends of hosted models; `fit` and the request builders read it.
    reasoning: ReasoningRules | None = None

    def __init__(self, model: str) -> None:
        self.model = model

    @abstractmethod
    async def chat(self, messages: ChatMessages, params: GenParams) -> Completion:
        """Send one conversation, return one completion. Raise `BackendError` on failure."""

    def judge_effort(self) -> str | None:
        """The effort of a judge-like call (`reasoning.LOWEST`) where `reasoning` is None: None
        (nothing is sent); a backend whose own map knows the model's least effort says it."""
        return None

    def output_cap(self, params: GenParams) -> int:
        """The output cap actually sent for `params` (a backend that adds a provider's thinking
        budget to it says so): what a --max-cost reservation and a cost preview must price."""
        return params.max_tokens

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release sessions, servers, threads."""

    def identity(self) -> dict[str, Any]:
        """What makes two backends answer the same: the call-cache key part. Never a key."""
        return {"kind": self.kind, "model": self.model}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"


def parse_openai_logprobs(lp: dict[str, Any] | None) -> list[TokenLogprob] | None:
    """OpenAI-shaped `logprobs.content` -> TokenLogprob list (llama.cpp and OpenAI-compatible servers)."""
    if not lp or not lp.get("content"):
        return None
    return [
        TokenLogprob(
            token=t["token"],
            logprob=float(t["logprob"]),
            top={c["token"]: float(c["logprob"]) for c in t.get("top_logprobs") or []},
        )
        for t in lp["content"]
    ]


@dataclass(frozen=True)
class BackendSpec:
    """A kind of backend: which model strings it claims and how to build one. Built-ins
    (`specs.py`) and plugins (the `cai_kit.backends` entry points) register the same way
    (`registry.register`); `factory` is a lazy "module:callable" path, so listing backends
    never imports torch or litellm."""

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
