"""JSONL in and out, crash-safe.

Outputs are append-only and written by one writer that flushes and fsyncs in small batches,
so a crash loses at most the records of the last batch and never corrupts earlier ones. A
torn last line (the process died mid-write) is detected on read and dropped; a malformed
line anywhere else is an error that names the file and line.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from cai_kit.errors import DataError

M = TypeVar("M", bound=BaseModel)


class JsonlWriter:
    """Append records to a JSONL file; flush+fsync every `batch` records or `interval_s`."""

    def __init__(self, path: Path, batch: int = 64, interval_s: float = 0.5) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(self.path)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._pending = 0
        self._batch = batch
        self._interval = interval_s
        self._last = time.monotonic()

    def write(self, record: BaseModel | dict[str, Any]) -> None:
        if isinstance(record, BaseModel):
            line = record.model_dump_json()
        else:
            line = json.dumps(record, ensure_ascii=False)
        self._fh.write(line + "\n")
        self._pending += 1
        if self._pending >= self._batch or time.monotonic() - self._last >= self._interval:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._pending = 0
        self._last = time.monotonic()

    def close(self) -> None:
        if not self._fh.closed:
            self.flush()
            self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def repair_torn_tail(path: Path) -> bool:
    """Cut a last line that has no newline and is not valid JSON (a crash mid-write)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 1))
        if fh.read(1) == b"\n":
            return False
        # find the start of the last line
        pos = size - 1
        chunk = 4096
        start = 0
        while pos > 0:
            step = min(chunk, pos)
            fh.seek(pos - step)
            buf = fh.read(step)
            idx = buf.rfind(b"\n")
            if idx >= 0:
                start = pos - step + idx + 1
                break
            pos -= step
        fh.seek(start)
        tail = fh.read()
        try:
            json.loads(tail)
            fh.seek(0, os.SEEK_END)
            fh.write(b"\n")  # a complete record that only lacked its newline
            return False
        except ValueError:
            fh.truncate(start)
            warnings.warn(
                f"{path}: dropped a torn last line (an earlier run was interrupted).", stacklevel=2
            )
            return True


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object). A torn last line is skipped; other bad lines raise."""
    path = Path(path)
    with open(path, encoding="utf-8") as fh:
        lines = fh.readlines()
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            if i == len(lines) and not line.endswith("\n"):
                warnings.warn(f"{path}:{i}: skipped a torn last line.", stacklevel=2)
                return
            raise DataError(
                f"{path}:{i}: not valid JSON ({exc.msg}); fix or remove that line."
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}.")
        yield i, obj


def read_records(path: Path, model: type[M]) -> Iterator[M]:
    for line, obj in read_jsonl(path):
        try:
            yield model.model_validate(obj)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(x) for x in err["loc"])
            raise DataError(
                f"{path}:{line}: {field}: {err['msg']} (not a {model.__name__})."
            ) from None


def latest_by_id(path: Path, model: type[M]) -> dict[str, M]:
    """The last record for each id (later lines supersede earlier ones, e.g. a retried failure)."""
    if not Path(path).is_file():
        return {}
    return {r.id: r for r in read_records(path, model)}  # type: ignore[attr-defined]
