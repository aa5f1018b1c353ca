"""Prices: what a call costs before and after it is made.

One place answers "how much per million tokens?" for every user of prices: the budget cap
(`--max-cost` reserves the worst case of each call before sending it), cost previews
(`--dry-run`, `pipeline --dry-run`) and Batch API jobs (about half the synchronous price).

Where a price comes from, first match wins:
  1. `--price IN,OUT[,CACHED]` (USD per million input / output / cached input tokens) given by
     the user;
  2. litellm's bundled cost map (read offline: LITELLM_LOCAL_MODEL_COST_MAP=True), looked up
     by the model string with and without its provider prefix (docs/backends.md lists the
     current models it prices);
  3. nothing: the backend is free (local models: price 0) or its price is unknown (None).

Every billed token is priced at its own rate: input tokens read from the provider's prompt
cache at the cached rate (OpenAI bills them at a fraction, Anthropic at 0.1x), Anthropic cache
writes at their write rate (1.25x), hidden reasoning tokens as output (they are part of
`completion_tokens`). A service tier (`--service-tier flex`) takes the map's `_flex` rates.

    >>> p = parse_price("0.15,0.60,0.075")
    >>> round(p.cost(1_000_000, 1_000_000), 2)
    0.75
    >>> round(p.cost(1_000_000, 0, cached_tokens=1_000_000), 3)
    0.075
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
    """USD per million tokens, and where the figure came from. A rate left None is billed as
    the plain input rate (cached input, cache writes) or at BATCH_DISCOUNT of it (batch)."""

    input_per_m: float
    output_per_m: float
    source: str = "--price"
    batch_input_per_m: float | None = None  # when the provider publishes a batch price
    batch_output_per_m: float | None = None
    cached_input_per_m: float | None = None  # an input token read from the prompt cache
    batch_cached_input_per_m: float | None = None
    cache_write_per_m: float | None = None  # an input token written to it (Anthropic: 1.25x)

    def cost(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        batch: bool = False,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> float:
        """`prompt_tokens` counts every input token, the cached and written ones included (as
        providers report it); `completion_tokens` every output token, reasoning included."""
        i, o, c = self.input_per_m, self.output_per_m, self.cached_input_per_m
        w = self.cache_write_per_m if self.cache_write_per_m is not None else i
        if batch:
            i = self.batch_input_per_m if self.batch_input_per_m is not None else i * BATCH_DISCOUNT
            o = (
                self.batch_output_per_m
                if self.batch_output_per_m is not None
                else o * BATCH_DISCOUNT
            )
            # cached reads and writes get the batch's own discount on input
            f = i / self.input_per_m if self.input_per_m else BATCH_DISCOUNT
            if self.batch_cached_input_per_m is not None:
                c = self.batch_cached_input_per_m
            elif c is not None:
                c = c * f
            w = w * f
        c = i if c is None else c
        cached = max(0, min(cached_tokens, prompt_tokens))
        written = max(0, min(cache_write_tokens, prompt_tokens - cached))
        plain = prompt_tokens - cached - written
        return (plain * i + cached * c + written * w + completion_tokens * o) / 1_000_000

    def cost_of(self, usage: Any, *, batch: bool = False) -> float:
        """The cost of one answer's `Usage`, each kind of token at its rate."""
        return self.cost(
            usage.prompt_tokens,
            usage.completion_tokens,
            batch=batch,
            cached_tokens=usage.cached_tokens,
            cache_write_tokens=getattr(usage, "cache_write_tokens", 0),
        )

    def worst_case(
        self, prompt_tokens: int, completion_tokens: int, *, batch: bool = False
    ) -> float:
        """The most a call can cost (for --max-cost reservations): every input token at the
        dearer of the input and cache-write rates, every output token at the output rate."""
        return self.cost(
            prompt_tokens,
            completion_tokens,
            batch=batch,
            cache_write_tokens=prompt_tokens
            if (self.cache_write_per_m or 0.0) > self.input_per_m
            else 0,
        )


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
    """An upper bound on a conversation's prompt tokens without its tokenizer: the UTF-8 bytes of
    each message, the one count no tokenizer exceeds (a byte-level BPE spends at most a token a
    byte, a byte-fallback one a token per byte of a character it lacks, and a rare CJK character
    or an emoji can take one per byte), plus 8 per message for its role and the chat template's
    markers. English runs ~4 bytes a token, so this reserves ~4x what English prompts use; a
    tighter estimate (bytes / 3) was under by 2x on CJK and emoji with SmolLM2's tokenizer."""
    return sum(len(str(m.get("content") or "").encode()) + 8 for m in messages)


FREE = Price(0.0, 0.0, source="runs locally", batch_input_per_m=0.0, batch_output_per_m=0.0)


def parse_price(value: str) -> Price:
    """`--price IN,OUT[,CACHED]` in USD per million input, output and cached input tokens,
    e.g. `0.25,2.00,0.025` (without CACHED, cached input tokens cost IN)."""
    try:
        rates = [float(x) for x in value.split(",")]
    except ValueError:
        rates = []
    if len(rates) not in (2, 3):
        raise ConfigError(
            f"--price takes two numbers, USD per million input and output tokens, and "
            f"optionally a third for cached input tokens, such as 0.25,2.00,0.025; not {value!r}."
        )
    if min(rates) < 0:
        raise ConfigError(f"--price {value}: prices cannot be negative.")
    cached = rates[2] if len(rates) == 3 else None
    return Price(rates[0], rates[1], source="--price", cached_input_per_m=cached)


SERVICE_TIERS = ("flex",)  # cheaper tiers with a price of their own in the map (OpenAI flex)


def _rate(entry: dict[str, Any], key: str) -> float | None:
    value = entry.get(key)
    return float(value) * 1_000_000 if isinstance(value, int | float) else None


@lru_cache(maxsize=256)
def _from_cost_map(model: str, service_tier: str | None = None) -> Price | None:
    """The model's list price in litellm's map (at `service_tier`'s rates where the map has
    them); None when the map does not know it."""
    table = _cost_table()
    name = model.removeprefix("litellm:")
    keys = (name, name.split("/", 1)[-1])
    entry = next((table[k] for k in keys if (table.get(k) or {}).get("input_cost_per_token") is not None), None)  # fmt: skip
    if entry is None:
        return None
    source = "litellm cost map"
    tier = f"_{service_tier}" if service_tier and _rate(entry, f"input_cost_per_token_{service_tier}") is not None else ""  # fmt: skip
    if tier:
        source += f", {service_tier} tier"
    return Price(
        _rate(entry, f"input_cost_per_token{tier}") or 0.0,
        _rate(entry, f"output_cost_per_token{tier}") or 0.0,
        source=source,
        batch_input_per_m=_rate(entry, "input_cost_per_token_batches"),
        batch_output_per_m=_rate(entry, "output_cost_per_token_batches"),
        cached_input_per_m=_rate(entry, f"cache_read_input_token_cost{tier}")
        if tier
        else _rate(entry, "cache_read_input_token_cost"),
        batch_cached_input_per_m=_rate(entry, "cache_read_input_token_cost_batches"),
        cache_write_per_m=_rate(entry, "cache_creation_input_token_cost"),
    )


def tier_priced(model: str, service_tier: str) -> bool:
    """Whether the price list has rates of `service_tier` for this model."""
    table = _cost_table()
    name = model.removeprefix("litellm:")
    for key in (name, name.split("/", 1)[-1]):
        if _rate(table.get(key) or {}, f"input_cost_per_token_{service_tier}") is not None:
            return True
    return False


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
    tier = getattr(backend, "service_tier", None)
    return _with_batch_price(_from_cost_map(model or backend.model, tier), model or backend.model)


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
    cached = price.cached_input_per_m
    return dataclasses.replace(
        price,
        batch_input_per_m=price.input_per_m * f,
        batch_output_per_m=price.output_per_m * f,
        batch_cached_input_per_m=None if cached is None else cached * f,
    )
