"""Prices: what a call costs before and after it is made.

One place answers "how much per million tokens?" for every user of prices: the budget cap
(`--max-cost` reserves the worst case of each call before sending it), cost previews
(`--dry-run`, `pipeline --dry-run`) and Batch API jobs (about half the synchronous price).

Where a price comes from, first match wins:
  1. `--price IN,OUT` (USD per million input / output tokens) given by the user;
  2. litellm's bundled cost map (read offline: LITELLM_LOCAL_MODEL_COST_MAP=True), looked up
     by the model string with and without its provider prefix;
  3. nothing: the backend is free (local models: price 0) or its price is unknown (None).

    >>> p = parse_price("0.15,0.60")
    >>> round(p.cost(1_000_000, 1_000_000), 2)
    0.75
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cai_kit.errors import ConfigError
from cai_kit.llm.cost_map import cost_table as _cost_table

BATCH_DISCOUNT = 0.5  # OpenAI, Anthropic: batch jobs cost half (others: providers.batch_price)
FREE_KINDS = ("local", "hf")  # backends that run on this machine
# Output tokens cost up to ~5x input tokens at hosted providers (gpt-4o-mini 4x, Claude 5x):
# the bound used when a price must be inferred from a reported cost alone.
OUTPUT_RATIO_BOUND = 5.0


@dataclass(frozen=True)
class Price:
    """USD per million tokens, and where the figure came from."""

    input_per_m: float
    output_per_m: float
    source: str = "--price"
    batch_input_per_m: float | None = None  # when the provider publishes a batch price
    batch_output_per_m: float | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int, *, batch: bool = False) -> float:
        i, o = self.input_per_m, self.output_per_m
        if batch:
            i = self.batch_input_per_m if self.batch_input_per_m is not None else i * BATCH_DISCOUNT
            o = (
                self.batch_output_per_m
                if self.batch_output_per_m is not None
                else o * BATCH_DISCOUNT
            )
        return (prompt_tokens * i + completion_tokens * o) / 1_000_000


def implied_price(cost: float, prompt_tokens: int, completion_tokens: int) -> Price | None:
    """A cautious price inferred from one answer's reported cost: the split between input and
    output is unknown, so output tokens are assumed to cost OUTPUT_RATIO_BOUND x input ones
    (which over-states output when they cost less). None when the answer had no token counts."""
    weighted = prompt_tokens + OUTPUT_RATIO_BOUND * completion_tokens
    if cost < 0 or weighted <= 0:
        return None
    i = cost / weighted * 1_000_000
    return Price(i, i * OUTPUT_RATIO_BOUND, source="inferred from reported costs")


def prompt_tokens_upper(messages: list[dict[str, Any]]) -> int:
    """A generous estimate of a conversation's prompt tokens without a tokenizer: UTF-8 bytes / 3
    (English runs ~4 bytes a token, CJK ~3) plus the chat template's few tokens per message."""
    return sum(len(str(m.get("content") or "").encode()) // 3 + 8 for m in messages)


FREE = Price(0.0, 0.0, source="runs locally", batch_input_per_m=0.0, batch_output_per_m=0.0)


def parse_price(value: str) -> Price:
    """`--price IN,OUT` in USD per million input and output tokens, e.g. `0.15,0.60`."""
    try:
        i, o = (float(x) for x in value.split(","))
    except ValueError:
        raise ConfigError(
            f"--price takes two numbers, USD per million input and output tokens, such as "
            f"0.15,0.60; not {value!r}."
        ) from None
    if i < 0 or o < 0:
        raise ConfigError(f"--price {value}: prices cannot be negative.")
    return Price(i, o, source="--price")


@lru_cache(maxsize=256)
def _from_cost_map(model: str) -> Price | None:
    table = _cost_table()
    name = model.removeprefix("litellm:")
    for key in (name, name.split("/", 1)[-1]):
        entry = table.get(key)
        if not entry or entry.get("input_cost_per_token") is None:
            continue
        per_m = 1_000_000
        bi = entry.get("input_cost_per_token_batches")
        bo = entry.get("output_cost_per_token_batches")
        return Price(
            float(entry["input_cost_per_token"]) * per_m,
            float(entry.get("output_cost_per_token") or 0.0) * per_m,
            source="litellm cost map",
            batch_input_per_m=float(bi) * per_m if bi is not None else None,
            batch_output_per_m=float(bo) * per_m if bo is not None else None,
        )
    return None


def price_for(model: str, backend_kind: str, explicit: Price | None = None) -> Price | None:
    """The price of one model: `explicit` (from --price) wins; local backends are free;
    else litellm's cost map; None when unknown (say so to the user when a cap depends on it)."""
    if explicit is not None:
        return explicit
    if backend_kind in FREE_KINDS:
        return FREE
    return _from_cost_map(model)


def price_for_backend(backend: Any, explicit: Price | None = None) -> Price | None:
    """The price of a built backend. A server reached by a user's --api-base (vLLM, Ollama, a
    gateway) has no list price: its model name says nothing about what it costs, so only
    `--price` or a cost the server reports can count. Hosted providers are looked up by their
    full model string (`price_model`, e.g. openai/gpt-4o-mini)."""
    kind = getattr(backend, "kind", "")
    if explicit is not None:
        return explicit if kind in FREE_KINDS else _explicit_with_batch_rate(explicit, backend)
    if kind in FREE_KINDS:
        return FREE
    model = getattr(backend, "price_model", None)
    if model is None and kind == "openai-compat":
        return None
    return _with_batch_price(_from_cost_map(model or backend.model), model or backend.model)


def _with_batch_price(price: Price | None, model: str) -> Price | None:
    """A hosted provider's documented batch discount, where the cost map has no batch price
    (Groq's batch jobs cost 75% of the synchronous price, DeepInfra's 80%, not half)."""
    from cai_kit.llm.providers import lookup

    provider = lookup(model)
    if price is None or provider is None or provider.batch_price == BATCH_DISCOUNT:
        return price
    factor = provider.batch_price
    return dataclasses.replace(
        price,
        batch_input_per_m=price.batch_input_per_m
        if price.batch_input_per_m is not None
        else price.input_per_m * factor,
        batch_output_per_m=price.batch_output_per_m
        if price.batch_output_per_m is not None
        else price.output_per_m * factor,
    )


def batch_factor(backend: Any) -> float | None:
    """A Batch API job's price as a fraction of the synchronous one for this backend's
    provider (OpenAI, Anthropic 0.5; Groq 0.75; DeepInfra 0.8), or None where none is known:
    a server at the user's --api-base (vLLM, a gateway) may charge anything for a batch."""
    from cai_kit.llm.providers import lookup

    kind = getattr(backend, "kind", "")
    if kind == "openai-compat":
        provider = getattr(backend, "provider", None)
        return provider.batch_price if provider is not None else None
    if kind != "litellm" or getattr(backend, "api_base", None):
        return None
    provider = lookup(backend.model)
    return provider.batch_price if provider is not None else None


def _explicit_with_batch_rate(price: Price, backend: Any) -> Price:
    """`--price` is the synchronous price; a batch costs the provider's own fraction of it
    (no discount where none is known)."""
    factor = batch_factor(backend)
    f = 1.0 if factor is None else factor
    return dataclasses.replace(
        price, batch_input_per_m=price.input_per_m * f, batch_output_per_m=price.output_per_m * f
    )
