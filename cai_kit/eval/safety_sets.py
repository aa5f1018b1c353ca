"""Prompt sets for `cai-kit eval safety`: every prompt is `harmful` or `benign` (its `kind`).

- Any prompt file (`cai_kit.prompts`) whose rows carry `kind` (harmful | benign) and, for
  per-category results, `category`. The project's own small sets are in `examples/safety/`
  (`train.jsonl`, `train_lookalikes.jsonl`, `train_more.jsonl` for training, the held-out
  `heldout.jsonl` and `heldout2.jsonl`: harmful requests in six categories and benign
  look-alikes that share their words, "How do I kill a Python process?").
- A public set by name (`PUBLIC_SETS`): XSTest, StrongREJECT, HarmBench, OR-Bench, read from
  their published CSV files through the `datasets` library (downloaded once, then cached in the
  Hugging Face cache), each row mapped from the set's own columns to prompt, kind, category.
  `materialise_set` writes the mapped rows to a JSONL file in the run directory, so the run
  says which prompts it used and loads them like any prompt file.

    path = materialise_set("xstest", run_dir)          # run_dir/set-xstest.jsonl
    records = load_safety_prompts(str(path)).records
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai_kit.errors import DataError
from cai_kit.prompts import PromptSet, load_prompts

KINDS = ("harmful", "benign")
Row = dict[str, Any]


def _text(row: Row, key: str) -> str:
    value = row.get(key)
    return "" if value is None else str(value).strip()


def _xstest(row: Row) -> Row | None:
    """XSTest (`id,prompt,type,label,focus,note`): label unsafe = a contrast prompt that should
    be refused; safe = a look-alike that should be answered. `type` is the category."""
    label = _text(row, "label")
    if label not in ("safe", "unsafe"):
        return None
    return {"prompt": _text(row, "prompt"), "kind": "benign" if label == "safe" else "harmful",
            "category": _text(row, "type"), "id": _text(row, "id") or None, "focus": _text(row, "focus"),
            "label": label}  # fmt: skip


def _strongreject(row: Row) -> Row | None:
    """StrongREJECT (`category,source,forbidden_prompt`): every prompt harmful."""
    return {"prompt": _text(row, "forbidden_prompt"), "kind": "harmful",
            "category": _text(row, "category"), "origin": _text(row, "source")}  # fmt: skip


def _harmbench(row: Row) -> Row | None:
    """HarmBench behaviors (`Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,
    BehaviorID`): every behavior harmful; a contextual one is asked after its context."""
    behavior, context = _text(row, "Behavior"), _text(row, "ContextString")
    prompt = f"{context}\n\n---\n\n{behavior}" if context else behavior
    return {"prompt": prompt, "kind": "harmful", "category": _text(row, "SemanticCategory"),
            "functional_category": _text(row, "FunctionalCategory"), "id": _text(row, "BehaviorID") or None}  # fmt: skip


def _orbench(kind: str) -> Callable[[Row], Row | None]:
    def mapped(row: Row) -> Row | None:
        """OR-Bench (`prompt,category`): hard-1k look-alikes benign, toxic prompts harmful."""
        return {"prompt": _text(row, "prompt"), "kind": kind, "category": _text(row, "category")}

    return mapped


@dataclass(frozen=True)
class Part:
    """One published CSV file of a set and how its rows map to prompts."""

    key: str
    url: str
    row: Callable[[Row], Row | None]


@dataclass(frozen=True)
class PublicSet:
    name: str
    description: str
    parts: tuple[Part, ...]


_GH = "https://raw.githubusercontent.com"
_ORB = "https://huggingface.co/datasets/bench-llm/or-bench/resolve/main"
PUBLIC_SETS: dict[str, PublicSet] = {
    s.name: s
    for s in (
        PublicSet("xstest", "XSTest (Röttger et al. 2023): 250 safe look-alikes and 200 unsafe contrasts",
                  (Part("xstest", f"{_GH}/paul-rottger/xstest/main/xstest_prompts.csv", _xstest),)),
        PublicSet("strongreject", "StrongREJECT (Souly et al. 2024): 313 forbidden prompts",
                  (Part("strongreject", f"{_GH}/alexandrasouly/strongreject/main/strongreject_dataset/strongreject_dataset.csv",
                        _strongreject),)),
        PublicSet("harmbench", "HarmBench (Mazeika et al. 2024): text behaviors, with contextual ones",
                  (Part("harmbench", f"{_GH}/centerforaisafety/HarmBench/main/data/behavior_datasets/harmbench_behaviors_text_all.csv",
                        _harmbench),)),
        PublicSet("orbench", "OR-Bench (Cui et al. 2024): hard-1k look-alikes (benign) and toxic prompts (harmful)",
                  (Part("or-bench-hard-1k", f"{_ORB}/or-bench-hard-1k.csv", _orbench("benign")),
                   Part("or-bench-toxic", f"{_ORB}/or-bench-toxic.csv", _orbench("harmful")))),
    )
}  # fmt: skip


def _csv_rows(name: str, source: str) -> list[Row]:
    """The rows of one CSV file (a URL or a local path) through `datasets` (cached)."""
    try:
        import datasets

        ds = datasets.load_dataset("csv", data_files=source, split="train")
    except ImportError:
        raise DataError(
            f"--set {name} needs the `datasets` library: pip install datasets."
        ) from None
    except Exception as exc:  # offline, moved, or refused: one sentence, not a traceback
        raise DataError(
            f"Could not load the {name} set from {source} ({type(exc).__name__}): it is downloaded "
            "once with network, then read from the Hugging Face cache; offline, pass a local copy "
            "as --prompts FILE with a `kind` column."
        ) from None
    return [dict(r) for r in ds]


def public_set_rows(name: str, sources: dict[str, str] | None = None) -> list[Row]:
    """The rows of a public set mapped to prompt, kind, category (+ the set's own columns).
    `sources` replaces a part's URL by another file (by part key), e.g. a local copy."""
    if name not in PUBLIC_SETS:
        raise DataError(f"No prompt set {name!r}; known sets: {', '.join(PUBLIC_SETS)}.")
    rows: list[Row] = []
    for part in PUBLIC_SETS[name].parts:
        for raw in _csv_rows(name, (sources or {}).get(part.key, part.url)):
            row = part.row(raw)
            if row is not None and row["prompt"]:
                rows.append(
                    {"set": part.key, **{k: v for k, v in row.items() if v not in (None, "")}}
                )
    return rows


def materialise_set(name: str, run_dir: Path, sources: dict[str, str] | None = None) -> Path:
    """Write a public set's mapped rows to `run_dir/set-NAME.jsonl` and return that path."""
    rows = public_set_rows(name, sources)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"set-{name}.jsonl"
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def load_safety_prompts(spec: str, *, limit: int | None = None) -> PromptSet:
    """`load_prompts`, then every row must say its kind: harmful or benign."""
    prompts = load_prompts(spec, limit=limit)
    bad = [
        f"{p.source}: kind is {p.metadata.get('kind')!r}"
        for p in prompts.records
        if p.metadata.get("kind") not in KINDS
    ]
    if bad:
        raise DataError(
            f"{len(bad)} prompt(s) without a kind of harmful or benign (first: {bad[0]}); "
            "give every row `kind`."
        )
    return prompts
