"""Hosted providers: the one table of where each `PROVIDER/MODEL` string goes.

Providers whose API speaks OpenAI's `/chat/completions` (OpenAI, OpenRouter, Together, Groq,
Fireworks, DeepSeek, Mistral, xAI, ...) are called with cai-kit's own aiohttp client
(`openai_compat.py`), at several times litellm's throughput. The others (Anthropic's native
API, Gemini, Bedrock, Vertex, Cohere, Azure deployments) and any `litellm:` string go through
litellm. Either way litellm's bundled cost map can supply prices (`cai_kit.engine.pricing`).

    >>> p = lookup("groq/llama-3.1-8b-instant")
    >>> (p.name, p.base_url, p.logprobs)
    ('groq', 'https://api.groq.com/openai/v1', False)

Keys come from the environment only. `key_allowed(api_base)` decides whether a key may be sent
to a base URL: https anywhere, plain http only to this machine (loopback) unless the user opts
in with CAI_KIT_ALLOW_HTTP_KEY=1; either case is said once on stderr.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from cai_kit.notices import warn

ALLOW_HTTP_KEY_VAR = "CAI_KIT_ALLOW_HTTP_KEY"


@dataclass(frozen=True)
class Provider:
    name: str  # the model-string prefix: openai/gpt-4o-mini -> openai
    key_vars: tuple[str, ...]  # where its key is read from, the usual one first
    base_url: str | None = None  # None: not OpenAI-compatible, litellm handles it
    base_vars: tuple[str, ...] = ()  # env vars that override base_url (like the openai SDK)
    logprobs: bool = False  # returns OpenAI-style top log-probs (the judge's soft labels)
    price: str = "litellm cost map"  # where --max-cost and cost figures get the price
    seed_field: str = "seed"  # the request field that takes a sampling seed
    extra_body: dict[str, Any] = field(default_factory=dict)  # sent with every request
    max_top_logprobs: int = 20  # the most `top_logprobs` it accepts (OpenAI: 20)
    # (model-name regex, request fields its models refuse with an error): not sent to them
    refuses: tuple[tuple[str, frozenset[str]], ...] = ()
    # the API path under the host: added to a base-URL variable that names only the host, as
    # the provider's own SDK reads it (GROQ_BASE_URL=https://api.groq.com -> .../openai/v1)
    base_path: str = "/v1"
    # a Batch API job's price as a fraction of the synchronous one, where the cost map has no
    # batch price (OpenAI, Anthropic: half; Groq documents 25% off, DeepInfra 20% off)
    batch_price: float = 0.5
    # the field that caps the answer: None is `max_tokens`, or `max_completion_tokens` for a
    # model that refuses `max_tokens` (OpenAI: max_tokens "is deprecated in favor of
    # max_completion_tokens, and is not compatible with o-series models"; sent for all its models)
    max_tokens_field: str | None = None
    # how a reasoning effort is asked for: OpenAI's top-level `reasoning_effort`, or OpenRouter's
    # `reasoning: {"effort": ...}` object (its API reference, "Reasoning Tokens")
    effort_field: str = "reasoning_effort"

    def refused(self, model: str, effort: str | None = None) -> frozenset[str]:
        """The request fields this provider documents as an error for `model` (bare name) at
        reasoning `effort` (None: the model's default): this table's own rows, and the model's
        reasoning rules (`cai_kit.llm.reasoning`: OpenAI's reasoning models refuse max_tokens,
        temperature, top_p and log-probs, the gpt-5.1 family takes temperature/top_p at none)."""
        from cai_kit.llm.reasoning import reasoning_rules

        out: frozenset[str] = frozenset()
        for pattern, fields in self.refuses:
            if re.match(pattern, model):
                out |= fields
        rules = reasoning_rules(f"{self.name}/{model}")
        return out | rules.refuses(effort) if rules is not None else out

    def logprobs_for(self, model: str, effort: str | None = None) -> bool:
        """Whether top log-probs are asked for (and come back) for this model."""
        return self.logprobs and not {"logprobs", "top_logprobs"} & self.refused(model, effort)

    def logprobs_note(self) -> str:
        """The table's log-probs column: yes / no, with a provider's limits."""
        if not self.logprobs:
            return "no"
        notes = [f"top {self.max_top_logprobs}"] if self.max_top_logprobs < 20 else []
        notes += [
            f"not {p.strip('^$').replace(chr(92), '')}" for p, f in self.refuses if {"logprobs"} & f
        ]
        return "yes" + (f" ({'; '.join(notes)})" if notes else "")

    @property
    def fast(self) -> bool:
        """Called with cai-kit's aiohttp client (else through litellm)."""
        return self.base_url is not None

    def key(self) -> tuple[str, str | None]:
        """(the variable the key came from, or should come from; the key or None)."""
        for var in self.key_vars:
            if os.environ.get(var):
                return var, os.environ[var]
        return self.key_vars[0], None

    def resolved_base_url(self) -> str | None:
        for var in self.base_vars:
            if os.environ.get(var):
                url = os.environ[var].rstrip("/")
                return url + self.base_path if urlparse(url).path in ("", "/") else url
        return self.base_url


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in [
        # OpenAI-compatible: the fast client. Each fact is from the provider's own API reference
        # (docs/backends.md lists them with their sources); keys: the provider's SDK's variable
        # first, litellm's name second.
        Provider("openai", ("OPENAI_API_KEY",), "https://api.openai.com/v1",
                 ("OPENAI_BASE_URL",), logprobs=True, max_tokens_field="max_completion_tokens"),
        # usage.cost comes back on every response (`usage: {include: true}` is deprecated)
        Provider("openrouter", ("OPENROUTER_API_KEY",), "https://openrouter.ai/api/v1",
                 ("OPENROUTER_BASE_URL",), logprobs=True, base_path="/api/v1",
                 max_tokens_field="max_tokens", effort_field="reasoning",
                 price="reported per call (usage.cost), else litellm cost map"),
        # chat `logprobs` is an integer 0..20 with its own response shape (tokens /
        # token_logprobs), not OpenAI's boolean + top_logprobs: none are asked for
        Provider("together_ai", ("TOGETHER_API_KEY", "TOGETHERAI_API_KEY"),
                 "https://api.together.xyz/v1", ("TOGETHER_BASE_URL",)),
        # logprobs, top_logprobs and n > 1 are refused with a 400
        Provider("groq", ("GROQ_API_KEY",), "https://api.groq.com/openai/v1",
                 ("GROQ_BASE_URL",), base_path="/openai/v1", batch_price=0.75),
        Provider("fireworks_ai", ("FIREWORKS_API_KEY", "FIREWORKS_AI_API_KEY"),
                 "https://api.fireworks.ai/inference/v1", ("FIREWORKS_BASE_URL",), logprobs=True,
                 max_top_logprobs=5, base_path="/inference/v1"),
        # deepseek-reasoner: "setting logprobs, top_logprobs will trigger an error"
        Provider("deepseek", ("DEEPSEEK_API_KEY",), "https://api.deepseek.com",
                 ("DEEPSEEK_BASE_URL",), logprobs=True, base_path="",
                 refuses=(("^deepseek-reasoner", frozenset({"logprobs", "top_logprobs"})),)),
        Provider("mistral", ("MISTRAL_API_KEY",), "https://api.mistral.ai/v1",
                 ("MISTRAL_BASE_URL",), seed_field="random_seed"),
        # reasoning models (grok-3-mini, grok-4*, grok-code-fast*): `stop` is an error; the stop
        # sequences are applied to their answers here instead
        Provider("xai", ("XAI_API_KEY",), "https://api.x.ai/v1", ("XAI_BASE_URL",),
                 logprobs=True,
                 refuses=((r"^grok-(3-mini|4|code-fast)(?!.*non-reasoning)",
                           frozenset({"stop"})),)),
        Provider("deepinfra", ("DEEPINFRA_API_KEY", "DEEPINFRA_TOKEN"),
                 "https://api.deepinfra.com/v1/openai", ("DEEPINFRA_BASE_URL",),
                 base_path="/v1/openai", batch_price=0.8),
        # OpenAI-shaped logprobs + top_logprobs (0..20); CEREBRAS_BASE_URL is the bare host
        Provider("cerebras", ("CEREBRAS_API_KEY",), "https://api.cerebras.ai/v1",
                 ("CEREBRAS_BASE_URL",), logprobs=True),
        # Not OpenAI-compatible (or not without per-deployment setup): litellm
        Provider("anthropic", ("ANTHROPIC_API_KEY",), logprobs=False),
        # Gemini API (AI Studio): 2.5 and later answer a log-probs request with 400 "Logprobs
        # is not enabled for models/gemini-2.5-pro" (users' reports: googleapis/python-genai
        # #1921, mscraftsman/generative-ai #135); Vertex AI serves them on 2.5
        Provider("gemini", ("GEMINI_API_KEY",), logprobs=True,
                 refuses=((r"^gemini-(2\.5|[3-9])", frozenset({"logprobs", "top_logprobs"})),)),
        Provider("cohere", ("COHERE_API_KEY",)),
        Provider("azure", ("AZURE_API_KEY",), logprobs=True),
        Provider("bedrock", ("AWS_ACCESS_KEY_ID",)),
        Provider("vertex_ai", ("GOOGLE_APPLICATION_CREDENTIALS",), logprobs=True),
    ]
}  # fmt: skip


def lookup(model: str) -> Provider | None:
    """The provider of a `PROVIDER/MODEL` string (a `litellm:` prefix is ignored), or None."""
    prefix, sep, rest = model.removeprefix("litellm:").partition("/")
    return PROVIDERS.get(prefix) if sep and rest else None


def _is_loopback(api_base: str) -> bool:
    host = (urlparse(api_base).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_SAID: set[str] = set()


def _say_once(base: str, text: str) -> None:
    if base not in _SAID:
        _SAID.add(base)
        warn(text)  # the `cai_kit` logger (cai_kit.notices)


def key_allowed(api_base: str) -> bool:
    """May an API key be sent to this base URL? https: yes; http to loopback: yes; other plain
    http only with CAI_KIT_ALLOW_HTTP_KEY=1 (the key would cross the network readable)."""
    if urlparse(api_base).scheme != "http" or _is_loopback(api_base):
        return True
    if os.environ.get(ALLOW_HTTP_KEY_VAR) == "1":
        _say_once(
            api_base,
            f"sending the API key to {api_base} over plain http:// ({ALLOW_HTTP_KEY_VAR}=1): "
            "anyone on the network path can read it.",
        )
        return True
    _say_once(
        api_base,
        f"not sending the API key to {api_base}: it is plain http:// to another machine, where "
        f"anyone on the network path could read it. Use https://, or set {ALLOW_HTTP_KEY_VAR}=1 "
        "to send it anyway.",
    )
    return False
