"""JSONL in and out, crash-safe.

Outputs are append-only and written by one writer, `JsonlWriter`, in batches: finished
records leave the process (a kill -9 cannot lose them) every `batch` records or at most
`interval_s` after the first record of a batch, whichever comes first, a timer writing a batch
that stops growing; each written batch is then fsync'd (a power cut cannot lose it) in a
background thread inside an event loop, so the job's loop never waits for the disk; `close()`
writes and fsyncs everything before it returns. Earlier records are never corrupted. A torn
last line (the process died mid-write, maybe inside a character) is detected on read and
dropped; a malformed line anywhere else (not JSON, or a byte that is not UTF-8) is an error
that names the file and line.

    with JsonlWriter(path) as w:
        w.write(record)      # a pydantic model or a dict
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from cai_kit.errors import DataError

M = TypeVar("M", bound=BaseModel)


class JsonlWriter:
    """Append records to a JSONL file; see the module docstring for when they are durable."""

    def __init__(self, path: Path, batch: int = 256, interval_s: float = 0.25) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(self.path)
        self._fh = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        self._lines: list[str] = []
        self._batch = batch
        self._interval = interval_s
        self._first = 0.0  # when the oldest unwritten line was added
        self._timer: asyncio.TimerHandle | None = None
        self._fsyncer: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._unsynced = False  # written to the OS, not fsync'd yet
        self._syncing = False  # the fsync thread is at work

    def write(self, record: BaseModel | dict[str, Any]) -> None:
        if isinstance(record, BaseModel):
            line = record.model_dump_json()
        else:
            line = json.dumps(record, ensure_ascii=False)
        self._lines.append(line)
        if len(self._lines) == 1:
            self._first = time.monotonic()
        if len(self._lines) >= self._batch or time.monotonic() - self._first >= self._interval:
            self.flush()
        elif len(self._lines) == 1:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # plain code: the batch size, the interval or close() writes it
            self._timer = loop.call_later(self._interval, self.flush)

    def flush(self) -> None:
        """Hand the pending lines to the OS now and fsync them (off the loop, inside one)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines and not self._fh.closed:
            self._fh.write(("\n".join(self._lines) + "\n").encode("utf-8"))
            self._fh.flush()
            self._lines.clear()
            with self._lock:
                self._unsynced = True
        if self._fh.closed:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # plain code: fsync here
            with self._lock:
                unsynced, self._unsynced = self._unsynced, False
            if unsynced:
                os.fsync(self._fh.fileno())
            return
        with self._lock:
            if not self._unsynced or self._syncing:  # a running fsync picks it up
                return
            self._syncing = True
        if self._fsyncer is None:
            self._fsyncer = ThreadPoolExecutor(1, thread_name_prefix="cai-kit-fsync")
        self._fsyncer.submit(self._fsync_until_clean)

    def _fsync_until_clean(self) -> None:  # in the fsync thread
        while True:
            with self._lock:
                if not self._unsynced:
                    self._syncing = False
                    return
                self._unsynced = False
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh.closed:
            return
        self.flush()
        if self._fsyncer is not None:
            self._fsyncer.shutdown(wait=True)
            self._fsyncer = None
        os.fsync(self._fh.fileno())
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


def _decode(path: Path, i: int, raw: bytes) -> str | None:
    """One line's bytes -> text; None for a torn last line (a crash can cut a character in
    two); a DataError naming file:line for a byte that is not UTF-8 anywhere else."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if not raw.endswith(b"\n"):
            warnings.warn(f"{path}:{i}: skipped a torn last line.", stacklevel=3)
            return None
        raise DataError(
            f"{path}:{i}: not UTF-8 text (byte {exc.start + 1} of the line); fix or remove that line."
        ) from None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line, decoded line by line so that a byte that is
    not UTF-8 is reported at its line (a text-mode read raises a bare UnicodeDecodeError)."""
    with open(path, "rb") as fh:
        for i, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            line = _decode(path, i, raw)
            if line is None:
                return
            yield i, line


def _parse_line(path: Path, i: int, line: str, last: bool) -> dict[str, Any] | None:
    """One line -> object; None for a torn last line (warned); DataError naming file:line."""
    try:
        obj = json.loads(line)
    except ValueError as exc:
        if last and not line.endswith("\n"):
            warnings.warn(f"{path}:{i}: skipped a torn last line.", stacklevel=3)
            return None
        raise DataError(
            f"{path}:{i}: not valid JSON ({exc.msg}); fix or remove that line."
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}.")
    return obj


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object), reading line by line. A torn last line is skipped; other
    bad lines raise. (Only the last line of a file can lack its newline, so that tells a torn
    last line without reading ahead.)"""
    path = Path(path)
    for i, line in _lines(path):
        obj = _parse_line(path, i, line, last=not line.endswith("\n"))
        if obj is None:
            return
        yield i, obj


def parse_record(path: Path, i: int, line: str | bytes, model: type[M]) -> M | None:
    """Line `i` of `path` -> a validated record, in one pass by pydantic; None for a torn last
    line (no newline, not JSON: warned). Any other bad line raises DataError naming file:line
    (and the field): the rule every reader of records uses (`read_records`, `cai-kit review`)."""
    try:
        record: M | None = model.model_validate_json(line)
    except ValidationError:
        record = None
    if record is not None:
        return record
    if isinstance(line, bytes):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path}:{i}: not UTF-8 text (byte {line[exc.start]:#04x} at column "
                f"{exc.start + 1}); save the file as UTF-8."
            ) from None
    else:
        text = line
    obj = _parse_line(path, i, text, last=not text.endswith("\n"))
    if obj is None:
        return None
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise DataError(f"{path}:{i}: {field}: {err['msg']} (not a {model.__name__}).") from None


def read_records(path: Path, model: type[M]) -> Iterator[M]:
    """Yield validated records (`parse_record`: a resumed 10,000-row job reads its output in
    well under a second); a line that fails raises the error that names file, line and field."""
    path = Path(path)
    for i, line in _lines(path):
        record = parse_record(path, i, line, model)
        if record is None:
            return
        yield record


def latest_by_id(path: Path, model: type[M]) -> dict[str, M]:
    """The last record for each id (later lines supersede earlier ones, e.g. a retried failure)."""
    if not Path(path).is_file():
        return {}
    return {r.id: r for r in read_records(path, model)}  # type: ignore[attr-defined]


def latest_status(path: Path, model: type[M]) -> dict[str, str]:
    """The status of the last record of each id, reading the records one at a time: what a
    resumed job needs to know, in memory for ids only (not a 100,000-row file's records)."""
    if not Path(path).is_file():
        return {}
    return {r.id: getattr(r, "status", "ok") for r in read_records(path, model)}  # type: ignore[attr-defined]
