"""Prompt files in any common format -> `PromptRecord`s, with every bad row reported.

Formats (by extension): .jsonl, .json (a list of objects or strings), .csv, .parquet,
.txt (one prompt per line), and `hf:NAME[:split][:column]` for a Hugging Face dataset
(a local dataset directory or a hub name when you have network).

A row gives either `prompt` (a string) or `messages` (a list of {role, content}, multi-turn
allowed, ending in a user turn); `response` (an existing answer) and `id` are optional, and
every other column is kept in `metadata` (e.g. `category`). Bad rows name their file and
line. Empty prompts and duplicates are counted and reported, never dropped silently.
Over-long prompts (more than `max_prompt_chars` characters in all) are skipped and reported.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cai_kit.errors import DataError
from cai_kit.records import Message, PromptRecord

OnBadRow = Literal["fail", "skip"]


@dataclass
class PromptSet:
    records: list[PromptRecord] = field(default_factory=list)
    bad_rows: list[str] = field(default_factory=list)  # "file:line: why"
    duplicates: list[str] = field(default_factory=list)  # "file:line duplicates file:line"
    empty: list[str] = field(default_factory=list)
    too_long: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{len(self.records)} prompts"]
        for name, rows in (("bad rows skipped", self.bad_rows), ("duplicates merged", self.duplicates),
                           ("empty skipped", self.empty), ("over-long skipped", self.too_long)):  # fmt: skip
            if rows:
                parts.append(f"{len(rows)} {name} (first: {rows[0]})")
        return "; ".join(parts)


def _rows(spec: str, column: str | None, split: str | None) -> Iterator[tuple[str, Any]]:
    """Yield (location, raw row) pairs."""
    if spec.startswith("hf:"):
        yield from _hf_rows(spec, column, split)
        return
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"No prompt file at {path}.")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{i}", json.loads(line)
                except ValueError as exc:
                    yield f"{path}:{i}", DataError(f"not valid JSON ({exc.msg})")
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}).") from None  # type: ignore[attr-defined]
        if isinstance(data, dict):
            data = data.get("data") or data.get("prompts") or [data]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects or strings.")
        for i, row in enumerate(data):
            yield f"{path}[{i}]", row
    elif suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as fh:
            for i, row in enumerate(csv.DictReader(fh), start=2):  # line 1 is the header
                yield f"{path}:{i}", dict(row)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}[row {i}]", row
    elif suffix == ".txt":
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh, start=1):
                yield f"{path}:{i}", line.rstrip("\n")
    else:
        raise DataError(
            f"{path}: unknown prompt file type {suffix!r}; use .jsonl, .json, .csv, .parquet or .txt."
        )


def _checked_rows(spec: str, column: str | None, split: str | None) -> Iterator[tuple[str, Any]]:
    """`_rows`, with undecodable files turned into one clear DataError."""
    try:
        yield from _rows(spec, column, split)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{spec}: not UTF-8 text (byte {exc.start}); re-save the file as UTF-8."
        ) from None


def _hf_rows(spec: str, column: str | None, split: str | None) -> Iterator[tuple[str, Any]]:
    parts = spec.removeprefix("hf:").split(":")
    name = parts[0]
    split = split or (parts[1] if len(parts) > 1 and parts[1] else "train")
    column = column or (parts[2] if len(parts) > 2 else None)
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:
        raise DataError(f"Could not load dataset {name!r} split {split!r}: {exc}") from None
    for i, row in enumerate(ds):
        yield f"{name}[{split}][{i}]", row


def _parse(
    row: Any, column: str | None
) -> tuple[list[Message], str | None, str | None, dict[str, Any]]:
    if isinstance(row, str):
        return [Message(role="user", content=row)], None, None, {}
    if not isinstance(row, dict):
        raise ValueError(f"expected an object or a string, got {type(row).__name__}")
    row = dict(row)
    if None in row:  # csv.DictReader puts fields beyond the header under the key None
        raise ValueError("more fields than the header has columns")
    response = row.pop("response", None)
    rid = row.pop("id", None)
    if column:
        if column not in row:
            raise ValueError(f"missing column {column!r}")
        value = row.pop(column)
        row.pop("prompt", None) if column != "prompt" else None
    elif "messages" in row:
        value = row.pop("messages")
    elif "prompt" in row:
        value = row.pop("prompt")
    else:
        raise ValueError("missing 'prompt' or 'messages'")
    if isinstance(value, str):
        messages = [Message(role="user", content=value)]
    elif isinstance(value, list):
        messages = [Message.model_validate(m) for m in value]
        if not messages or messages[-1].role != "user":
            raise ValueError("'messages' must end with a user turn")
    else:
        raise ValueError(
            f"prompt must be a string or a list of messages, got {type(value).__name__}"
        )
    if response is not None and not isinstance(response, str):
        raise ValueError("'response' must be a string")
    return messages, response or None, str(rid) if rid is not None else None, row


def load_prompts(
    spec: str,
    *,
    column: str | None = None,
    split: str | None = None,
    on_bad_row: OnBadRow = "fail",
    max_prompt_chars: int | None = None,
    limit: int | None = None,
) -> PromptSet:
    """Read a prompt file; see the module docstring for formats and rules."""
    if str(spec).startswith("hf:") and column is None:
        parts = str(spec).split(":")
        column = parts[3] if len(parts) > 3 and parts[3] else None
    rows = _checked_rows(str(spec), column, split)
    return _collect(rows, str(spec), column, on_bad_row, max_prompt_chars, limit)


def prompts_from(
    items: Iterable[Any], *, on_bad_row: OnBadRow = "fail", limit: int | None = None
) -> PromptSet:
    """Prompts given in Python: strings, message lists ([{role, content}, ...] ending in a user
    turn), rows as a file would hold them ({"prompt": ...} or {"messages": ...}), or
    `PromptRecord`s; the same checks and ids as `load_prompts` (item N is "item N")."""

    def row(x: Any) -> Any:
        if isinstance(x, PromptRecord):
            return {
                **x.metadata,
                "messages": [m.model_dump() for m in x.messages],
                "response": x.response,
            }
        return {"messages": x} if isinstance(x, list) else x

    rows = ((f"item {i}", row(x)) for i, x in enumerate(items))
    return _collect(rows, "the prompts given", None, on_bad_row, None, limit)


def _collect(
    rows: Iterable[tuple[str, Any]], spec: str, column: str | None, on_bad_row: OnBadRow,
    max_prompt_chars: int | None, limit: int | None,
) -> PromptSet:  # fmt: skip
    out = PromptSet()
    first_seen: dict[str, str] = {}
    for where, row in rows:
        try:
            if isinstance(row, Exception):
                raise ValueError(str(row))
            messages, response, rid, meta = _parse(row, column)
        except ValueError as exc:
            msg = str(exc).splitlines()[0]
            out.bad_rows.append(f"{where}: {msg}")
            continue
        if not any(m.content.strip() for m in messages if m.role == "user"):
            out.empty.append(where)
            continue
        if (
            max_prompt_chars is not None
            and sum(len(m.content) for m in messages) > max_prompt_chars
        ):
            out.too_long.append(f"{where} (> {max_prompt_chars} chars)")
            continue
        pid = PromptRecord.make_id(messages)
        if pid in first_seen:
            out.duplicates.append(f"{where} duplicates {first_seen[pid]}")
            continue
        first_seen[pid] = where
        meta = {k: v for k, v in meta.items() if v is not None}
        if rid is not None:
            meta["source_id"] = rid
        out.records.append(
            PromptRecord(id=pid, messages=messages, response=response, source=where, metadata=meta)
        )
        if limit is not None and len(out.records) >= limit:
            break
    if out.bad_rows and on_bad_row == "fail":
        shown = "\n  ".join(out.bad_rows[:5])
        more = f"\n  ... and {len(out.bad_rows) - 5} more" if len(out.bad_rows) > 5 else ""
        raise DataError(
            f"{len(out.bad_rows)} bad row(s) in {spec}:\n  {shown}{more}\n"
            "Fix them, or pass --on-bad-row skip to skip them."
        )
    if not out.records:
        raise DataError(f"No usable prompts in {spec} ({out.summary()}).")
    return out
