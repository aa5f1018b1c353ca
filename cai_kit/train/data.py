"""Training data: load JSONL (or an export dir), convert instruction layouts, and validate
rows before TRL sees them, so a data problem is one clear message naming the row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cai_kit.errors import DataError

REQUIRED = {
    "sft": [
        ("messages",),
        ("prompt", "completion"),
        ("instruction", "output"),
        ("instruction", "response"),
        ("text",),
    ],
    "reward": [("chosen", "rejected")],
    "dpo": [("prompt", "chosen", "rejected")],
    "orpo": [("prompt", "chosen", "rejected")],
    "kto": [("prompt", "completion", "label"), ("prompt", "chosen", "rejected")],
}


def data_files(path: Path) -> dict[str, str]:
    """A JSONL file, or an export directory with train.jsonl (+ test.jsonl)."""
    if path.is_dir():
        files = {
            s: str(path / f"{s}.jsonl")
            for s in ("train", "test")
            if (path / f"{s}.jsonl").is_file()
        }
        if "train" not in files:
            raise DataError(
                f"No train.jsonl in {path}: point at a JSONL file or a `cai-kit export` directory."
            )
        return files
    if not path.is_file():
        raise DataError(f"No training data at {path}.")
    return {"train": str(path)}


def _text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        return "".join(str(m.get("content", "")) for m in v if isinstance(m, dict))
    return ""


def read_rows(path: str) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as exc:
                    raise DataError(f"{path}:{i}: not valid JSON ({exc.msg}).") from None
    return rows


def to_conversation(row: dict[str, Any]) -> dict[str, Any]:
    """Alpaca (instruction/input/output) and Dolly (instruction/context/response) -> messages."""
    if "messages" in row or "prompt" in row or "text" in row:
        return row
    context = row.get("input") or row.get("context") or ""
    user = row["instruction"] + (f"\n\n{context}" if context else "")
    answer = row.get("output", row.get("response", ""))
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    }


def validate(
    kind: str, path: str, rows: list[dict[str, Any]], max_chars: int | None = None
) -> None:
    """Raise DataError naming the first problems: missing columns, empty or identical pairs."""
    if not rows:
        raise DataError(f"{path} has no rows.")
    layouts = REQUIRED[kind]
    problems: list[str] = []
    for i, row in enumerate(rows, start=1):
        if not any(all(c in row for c in layout) for layout in layouts):
            want = " or ".join("/".join(x) for x in layouts)
            problems.append(
                f"{path}:{i}: missing columns; `train {kind}` needs {want} (has {', '.join(row)})"
            )
        elif "chosen" in row and "rejected" in row:
            c, r = _text(row["chosen"]).strip(), _text(row["rejected"]).strip()
            if not c or not r:
                problems.append(f"{path}:{i}: empty {'chosen' if not c else 'rejected'}")
            elif c == r:
                problems.append(f"{path}:{i}: chosen == rejected (nothing to learn); drop the row")
        if (
            max_chars
            and sum(len(_text(v)) for v in row.values() if isinstance(v, str | list))
            > max_chars * 8
        ):
            problems.append(
                f"{path}:{i}: far longer than --max-length {max_chars} tokens; shorten it or raise --max-length"
            )
        if len(problems) >= 5:
            break
    if problems:
        raise DataError("Bad training data:\n  " + "\n  ".join(problems))


def load(
    kind: str, path: Path, eval_fraction: float = 0.0, seed: int = 0, max_length: int | None = None
) -> Any:
    """A `datasets.DatasetDict` with train (and test) splits, validated for `kind`."""
    from datasets import Dataset, DatasetDict

    splits = {}
    for split, file in data_files(path).items():
        rows = read_rows(file)
        validate(kind, file, rows, max_length)
        if kind == "sft":
            rows = [to_conversation(r) for r in rows]
        keep = {
            k
            for r in rows
            for k in r
            if k
            in ("messages", "prompt", "completion", "chosen", "rejected", "label", "margin", "text")
        }
        splits[split] = Dataset.from_list([{k: r.get(k) for k in keep} for r in rows])
    ds = DatasetDict(splits)
    if "test" not in ds and eval_fraction > 0 and len(ds["train"]) >= 4:
        parts = ds["train"].train_test_split(test_size=eval_fraction, seed=seed)
        ds = DatasetDict({"train": parts["train"], "test": parts["test"]})
    if kind == "kto" and "label" not in ds["train"].column_names:
        from trl.data_utils import unpair_preference_dataset

        ds = DatasetDict({k: unpair_preference_dataset(v) for k, v in ds.items()})
    return ds
