"""Training and held-out prompts for a pipeline run, disjoint by content.

    split = split_prompts(recipe)        # Split(train, eval, note)
    write_prompts(split.eval, run / "prompts" / "eval.jsonl")

The pool is the recipe's `prompts`, plus the prompts its `expand` step wrote (when it has one).
Held-out prompts are the recipe's `eval_prompts` file (its prompts are left out of training),
or a seeded split of `prompts` (`eval_fraction`, `seed`); the same recipe gives the same split.
`note` says where the held-out prompts came from, for `report.md`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai_kit.errors import ConfigError
from cai_kit.pipeline.recipe import Recipe
from cai_kit.records import PromptRecord, stable_hash


@dataclass
class Split:
    """Training and held-out prompts, and a sentence saying where the held-out ones came from."""

    train: list[PromptRecord]
    eval: list[PromptRecord]
    note: str


def _key(p: PromptRecord) -> str:
    return PromptRecord.make_id(p.messages)  # by content: the same prompt under another id


def split_prompts(r: Recipe, expanded: list[PromptRecord] | None = None) -> Split:
    """Training and eval prompts, disjoint by content; deterministic for a recipe and seed.
    `expanded`: the prompts the recipe's `expand` step wrote, added to the pool (or, with
    `expand.include_seeds: false`, the whole pool)."""
    from cai_kit.prompts import load_prompts

    pool = load_prompts(r.prompts).records
    if expanded is not None:
        keep_seeds = r.expand is None or r.expand.include_seeds
        pool = [*pool, *expanded] if keep_seeds else list(expanded)
    also = ""
    if expanded is not None:
        also = f" and {len(expanded)} expanded prompts in `expand/prompts.jsonl`"
        also = also if keep_seeds else f": only its{also.removeprefix(' and')}"
    if r.eval_prompts:
        held = load_prompts(r.eval_prompts).records
        keys = {_key(p) for p in held}
        train = [p for p in pool if _key(p) not in keys]
        dropped = len(pool) - len(train)
        note = f"the recipe's eval_prompts file `{r.eval_prompts}`" + (
            f" ({dropped} of its prompts were also in `{r.prompts}` and were left out of training)"
            if dropped
            else ""
        )
    else:
        ranked = sorted(range(len(pool)), key=lambda i: stable_hash("heldout", r.seed, _key(pool[i])))  # fmt: skip
        n_eval = min(len(pool) - 1, max(1, math.ceil(len(pool) * r.eval_fraction)))
        held = [pool[i] for i in ranked[:n_eval]]
        train = [pool[i] for i in sorted(ranked[n_eval:])]  # the file's order for training
        note = (
            f"a seeded held-out split of `{r.prompts}`{also} (eval_fraction {r.eval_fraction:g}, "
            f"seed {r.seed}: {len(held)} of {len(pool)} prompts held out)"
        )
    if r.limit is not None:
        train = train[: r.limit]
    if r.eval.limit is not None and r.eval.limit < len(held):
        note += f"; eval.limit {r.eval.limit}: the first {r.eval.limit} of them are evaluated"
        held = held[: r.eval.limit]
    if not train or not held:
        raise ConfigError(
            f"{r.prompts}: {len(train)} training and {len(held)} eval prompts; the pipeline "
            "needs both (give more prompts, or an eval_prompts file)."
        )
    return Split(train, held, note)


def write_prompts(records: list[PromptRecord], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for p in records:
            row: dict[str, Any] = {**p.metadata, "id": p.id, "messages": [m.model_dump() for m in p.messages]}  # fmt: skip
            if p.response is not None:
                row["response"] = p.response
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
