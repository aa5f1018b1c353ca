"""`--dry-run` cost preview: tokens and price of a job's calls, synchronous and by Batch API.

    preview = CostPreview.of(calls, batch_api=True)   # calls: (backend, prompt, completion tokens)
    print(preview.calls, preview.line())   # 12 "about 1,200 tokens in, 2,560 out: $0.0017 ..."

A job gives its calls per item through `JobSpec.estimate_tokens`, built with the same prompt
builders the job sends (`prompt_tokens(messages)`); an answer that does not exist yet (it is
made earlier in the same job) is sized by `stand_in(max_tokens)` inside those prompts.
Token counts are estimates (characters / 4 for prompts, the output cap each call sends,
`params.max_tokens`, for every answer: the worst case, a reasoning model's hidden reasoning
included, as its stage cap holds a reasoning allowance); `basis()` says so in one sentence. Prices come from `cai_kit.engine.pricing` (the batch price where the backend has a
Batch API, else the synchronous one); a model without a known price is named, never guessed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cai_kit.llm.base import Backend


@dataclass
class CostPreview:
    batch_api: bool = False
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    sync_cost: float = 0.0
    batch_cost: float = 0.0
    unknown: set[str] = field(default_factory=set)  # models whose price is unknown
    full_price: set[str] = field(default_factory=set)  # --price, batched, no discount known
    caps: set[int] = field(default_factory=set)  # the output caps the calls send

    @classmethod
    def of(
        cls,
        calls: Iterable[tuple[Any, ...]],
        *,
        batch_api: bool,
        price: Any = None,
        fit: Callable[[Backend, int, str | None], int] | None = None,
    ) -> CostPreview:
        """`calls`: (backend, prompt tokens, answer tokens[, effort]) per call; `fit` turns an
        answer's tokens into the cap really sent (a reasoning model's room to think: the
        engine's `fit_call`), so the preview prices what a reservation holds. The effort is
        `reasoning.LOWEST` for judge-like calls, absent for a stage's own."""
        from cai_kit.engine.batch_providers import batch_client_for
        from cai_kit.engine.pricing import batch_factor, price_for_backend

        out = cls(batch_api=batch_api)
        prices: dict[int, tuple[Any, bool]] = {}
        for backend, p, c, *effort in calls:
            if fit is not None:
                c = fit(backend, c, effort[0] if effort else None)
            if id(backend) not in prices:
                prices[id(backend)] = (
                    price_for_backend(backend, price),
                    batch_client_for(backend) is not None,
                )
                if price is not None and prices[id(backend)][1] and batch_factor(backend) is None:
                    out.full_price.add(backend.model)
            bprice, batchable = prices[id(backend)]
            out.calls += 1
            out.prompt_tokens += p
            out.completion_tokens += c
            out.caps.add(c)
            if bprice is None:
                out.unknown.add(backend.model)
                continue
            out.sync_cost += bprice.cost(p, c)
            out.batch_cost += bprice.cost(p, c, batch=batchable)
        return out

    def line(self) -> str:
        text = f"about {self.prompt_tokens:,} tokens in, {self.completion_tokens:,} out"
        sync, batch = f"${self.sync_cost:.4f}", f"${self.batch_cost:.4f}"
        if self.batch_api:
            text += f": {batch} with --batch-api (synchronous: {sync})"
            if self.full_price:
                names = ", ".join(sorted(self.full_price))
                text += f"; no batch discount is known for {names} at its --api-base"
        else:
            text += f": {sync} (with --batch-api: {batch})"
        if self.unknown:
            text += f"; price unknown for {', '.join(sorted(self.unknown))}"
        return text

    def basis(self) -> str:
        """How the figures were made: they are an estimate, and the worst case."""
        if not self.caps:
            return ""
        low, high = min(self.caps), max(self.caps)
        cap = f"{high:,} tokens" if low == high else f"{low:,} to {high:,} tokens"
        return (
            "An estimate, the worst case: prompts counted at about 4 characters a token, every "
            f"call using its full output cap ({cap}, hidden reasoning included), no prompt "
            "cache discount."
        )


def prompt_tokens(messages: list[dict[str, str]]) -> int:
    """Characters / 4, plus a few tokens per message for the chat template."""
    return sum(len(str(m.get("content", ""))) // 4 + 4 for m in messages)


def stand_in(tokens: int) -> str:
    """A stand-in answer of about `tokens` tokens (5 characters a word), to size a prompt that
    will embed an answer not written yet (e.g. a judge prompt over two responses)."""
    return "word " * max(tokens - 1, 0)
