"""A byte-offset index over a run's JSONL files, so `cai-kit review` pages through 100,000 rows
without reading them all into memory (or into the browser).

    index = RunIndex.open(Path("runs/pf"))          # builds or updates RUN/review_index.sqlite
    index.kinds                                      # ["pair", "revision"]: the files present
    page = index.query("pair", view="ties", q="refund", offset=0, limit=50)
    record = index.record("pair", row_id)            # the record (validated) as JSON, read at its offset

One index row per record id (the last line of an id wins, as `latest_by_id` reads: a retried
failure supersedes the failure) in first-seen order, with what the filters need: status, the
judge's label, p_a, margin, whether both orders agreed, the principles, and the start of the
prompt. Lines are read as every reader of records reads them (`io.parse_record`: the record
models, so a field of the wrong type is one sentence naming file:line, and an older record that
lost a comparison is `failed`, as `export` and `judge-report` count it; a last line without its
newline is read once it is whole JSON). Texts stay in the JSONL: a search scans the file's bytes
(case-insensitive for ASCII) and maps the hits back to rows by offset.

The index is kept beside the run with the SHA-256 of the bytes it indexed. A file whose size,
mtime, ctime and inode are as indexed is taken as is (a stat); any other file has that prefix
hashed again: the same bytes mean only the appended tail is read (a job still writing), other
bytes mean the file is indexed again. A run directory that cannot be written gets an in-memory
index.
"""

from __future__ import annotations

import bisect
import difflib
import hashlib
import os
import re
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai_kit.errors import DataError
from cai_kit.io import parse_record
from cai_kit.records import PreferenceRecord, RevisionRecord
from cai_kit.wal import connect_wal

try:  # a faster parser when present (a dependency of several of ours); json otherwise
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    from json import loads as _loads

SOURCES = {"pair": "prefs.jsonl", "revision": "revisions.jsonl"}
INDEX_NAME = "review_index.sqlite"
INDEX_VERSION = 2  # PRAGMA user_version: an index of another version is built again
MODELS: dict[str, type[PreferenceRecord] | type[RevisionRecord]] = {
    "pair": PreferenceRecord,
    "revision": RevisionRecord,
}
VIEWS = {
    "pair": ("all", "ties", "low-margin", "orders-disagree", "failed", "unlabelled"),
    "revision": ("all", "unchanged", "failed", "unlabelled"),
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    kind TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, ino INTEGER,
    indexed INTEGER, digest TEXT, lines INTEGER
);
CREATE TABLE IF NOT EXISTS rows (
    kind TEXT NOT NULL, idx INTEGER NOT NULL, id TEXT NOT NULL, offset INTEGER NOT NULL,
    length INTEGER NOT NULL, line INTEGER NOT NULL, status TEXT, label TEXT, p_a REAL,
    margin REAL, consistent INTEGER, changed INTEGER, principles TEXT, prompt TEXT,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS rows_idx ON rows(kind, idx);
"""
_UPSERT = (
    "INSERT INTO rows VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(kind, id) DO UPDATE SET "
    "offset=excluded.offset, length=excluded.length, line=excluded.line, "
    "status=excluded.status, label=excluded.label, p_a=excluded.p_a, margin=excluded.margin, "
    "consistent=excluded.consistent, changed=excluded.changed, "
    "principles=excluded.principles, prompt=excluded.prompt"
)
_CHUNK = 1 << 20


@dataclass
class Page:
    total: int  # rows matching the query
    rows: list[dict[str, Any]] = field(default_factory=list)


def _prompt(messages: list[Any]) -> str:
    for m in reversed(messages):
        if m.role == "user":
            return m.content[:200]
    return messages[-1].content[:200] if messages else ""


def _fields(record: PreferenceRecord | RevisionRecord) -> tuple[Any, ...]:
    """(status, label, p_a, margin, consistent, changed, principles, prompt) of one record; the
    label is what `judge-report` counts: the judge's, or `failed` for a failed record."""
    if isinstance(record, PreferenceRecord):
        v = record.verdict
        pc = v.position_consistent
        return (
            record.status,
            v.label if record.status == "ok" else "failed",
            v.p_a,
            v.margin,
            None if pc is None else int(pc),
            None,
            "|" + "|".join(v.principle_ids) + "|",
            _prompt(record.messages),
        )
    pids = sorted({s.principle_id for s in record.steps})
    initial = (record.initial_response or "").strip()
    final = (record.final_response or "").strip()
    return (
        record.status,
        None,
        None,
        None,
        None,
        int(initial != final),
        "|" + "|".join(pids) + "|",
        _prompt(record.messages),
    )


def _whole_json(raw: bytes) -> bool:
    """A last line without its newline: whole JSON (read it), or still being written?"""
    try:
        _loads(raw)
    except ValueError:
        return False
    return True


def _hash_prefix(path: Path, end: int) -> Any:
    """A sha256 object fed the first `end` bytes of the file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        left = end
        while left > 0:
            buf = fh.read(min(_CHUNK, left))
            if not buf:
                break
            h.update(buf)
            left -= len(buf)
    return h


def _schema(db: sqlite3.Connection) -> None:
    """Create the tables; an index written by another version is dropped (it is a cache)."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version != INDEX_VERSION:
        db.executescript("DROP TABLE IF EXISTS meta; DROP TABLE IF EXISTS rows;")
        db.execute(f"PRAGMA user_version = {INDEX_VERSION}")
    db.executescript(SCHEMA)


class RunIndex:
    def __init__(
        self, run_dir: Path, db: sqlite3.Connection, where: str, low_margin: float
    ) -> None:
        self.run_dir, self._db, self.where, self.low_margin = run_dir, db, where, low_margin
        self._lock = threading.RLock()
        self._offsets: dict[str, tuple[list[int], list[int], list[int]]] = {}
        self._hits: dict[tuple[str, str], set[int]] = {}
        self._counts: dict[str, dict[str, Any]] = {}
        self._idset: dict[str, frozenset[str]] = {}
        self.kinds = [k for k, name in SOURCES.items() if (run_dir / name).is_file()]

    @classmethod
    def open(cls, run_dir: Path, low_margin: float = 0.2, in_memory: bool = False) -> RunIndex:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise DataError(
                f"{run_dir} is not a directory: give the --out of a prefs, judge, revise or eval winrate run."
            )
        if not any((run_dir / name).is_file() for name in SOURCES.values()):
            raise DataError(
                f"{run_dir} is not a run directory: it has neither prefs.jsonl nor "
                "revisions.jsonl (the --out of `cai-kit prefs`, `judge`, `revise` or `eval winrate`)."
            )
        path = run_dir / INDEX_NAME
        db = None
        if not in_memory and os.access(run_dir, os.W_OK):
            try:
                # a cache: rebuilt from the JSONL if torn
                db = connect_wal(path, synchronous="OFF", setup=_schema)
            except sqlite3.Error:  # a corrupt cache: it only holds what the JSONL holds
                if db is not None:
                    db.close()
                for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                    p.unlink(missing_ok=True)
                db = None
                try:
                    db = connect_wal(path, synchronous="OFF", setup=_schema)
                except sqlite3.Error:
                    db = None
        where = str(path)
        if db is None:
            db, where = (
                sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None),
                ":memory:",
            )
            _schema(db)
        index = cls(run_dir, db, where, low_margin)
        index.refresh()
        return index

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- building ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Bring the index up to date with the files (read only what was appended)."""
        with self._lock:
            self.kinds = [k for k, name in SOURCES.items() if (self.run_dir / name).is_file()]
            for kind in self.kinds:
                self._refresh(kind)

    def _refresh(self, kind: str) -> None:
        path = self.run_dir / SOURCES[kind]
        st = path.stat()
        stat = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        meta = self._db.execute(
            "SELECT size, mtime_ns, ctime_ns, ino, indexed, digest, lines FROM meta WHERE kind = ?",
            (kind,),
        ).fetchone()
        if meta is not None and tuple(meta[:4]) == stat:
            return  # not written to since it was indexed (any write sets mtime and ctime)
        start, line0, hasher = 0, 0, hashlib.sha256()
        if meta is not None and st.st_size >= meta[4]:
            indexed, digest, lines = meta[4:]
            prefix = _hash_prefix(path, indexed)
            if prefix.hexdigest() == digest:  # the indexed bytes are as they were
                if st.st_size == indexed:  # and nothing was appended (a touch, a copy)
                    self._db.execute(
                        "UPDATE meta SET size=?, mtime_ns=?, ctime_ns=?, ino=? WHERE kind=?",
                        (*stat, kind),
                    )
                    return
                start, line0, hasher = indexed, lines, prefix
        self._db.execute("BEGIN")
        try:
            if start == 0:
                self._db.execute("DELETE FROM rows WHERE kind = ?", (kind,))
            end, lines, added = self._scan(kind, path, start, line0, hasher)
            if end < start:  # the indexed last line (no newline) was continued: read it all
                self._db.execute("DELETE FROM rows WHERE kind = ?", (kind,))
                hasher = hashlib.sha256()
                end, lines, added = self._scan(kind, path, 0, 0, hasher)
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES (?,?,?,?,?,?,?,?)",
                (kind, *stat, end, hasher.hexdigest(), lines),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        if start == 0 or added:
            self._offsets.pop(kind, None)
            self._counts.pop(kind, None)
            self._idset.pop(kind, None)
            self._hits = {k: v for k, v in self._hits.items() if k[0] != kind}

    def _scan(
        self, kind: str, path: Path, start: int, line0: int, hasher: Any
    ) -> tuple[int, int, int]:
        """Index the whole lines from byte `start`, feeding the bytes read to `hasher`; returns
        (bytes indexed, lines indexed, rows written), or end < start when the line before
        `start` (read without its newline) was continued."""
        model = MODELS[kind]
        (n,) = self._db.execute(
            "SELECT COALESCE(MAX(idx) + 1, 0) FROM rows WHERE kind = ?", (kind,)
        ).fetchone()
        batch: list[tuple[Any, ...]] = []
        pos, line, added = start, line0, 0
        with open(path, "rb") as fh:
            if start > 0:
                fh.seek(start - 1)
                if fh.read(1) != b"\n":  # the last line read had no newline: now it must
                    after = fh.read(1)
                    if not after:
                        return start, line0, 0  # nothing appended
                    if after != b"\n":
                        return -1, 0, 0
                    hasher.update(b"\n")
                    pos += 1
            fh.seek(pos)
            for raw in fh:
                if not raw.endswith(b"\n") and not _whole_json(raw):
                    break  # a last line still being written (or torn): read it next time
                line += 1
                offset, pos = pos, pos + len(raw)
                hasher.update(raw)
                if not raw.strip():
                    continue
                record = parse_record(path, line, raw, model)
                assert record is not None  # a torn line was left for next time above
                batch.append((kind, n, record.id, offset, len(raw), line, *_fields(record)))
                n += 1
                if len(batch) >= 5000:
                    self._db.executemany(_UPSERT, batch)
                    added += len(batch)
                    batch.clear()
        if batch:
            self._db.executemany(_UPSERT, batch)
            added += len(batch)
        return pos, line, added

    # -- reading ----------------------------------------------------------------------------

    def _where(self, kind: str, view: str, principle: str | None) -> tuple[str, list[Any]]:
        sql, args = ["kind = ?"], [kind]
        if view == "ties":
            sql.append("label = 'tie' AND status = 'ok'")
        elif view == "low-margin":
            sql.append("status = 'ok' AND margin IS NOT NULL AND margin < ?")
            args.append(self.low_margin)
        elif view == "orders-disagree":
            sql.append("consistent = 0")
        elif view == "failed":
            sql.append("status = 'failed'")
        elif view == "unchanged":
            sql.append("changed = 0 AND status = 'ok'")
        if principle:
            sql.append("instr(principles, ?) > 0")
            args.append(f"|{principle}|")
        return " AND ".join(sql), args

    def _offset_table(self, kind: str) -> tuple[list[int], list[int], list[int]]:
        if kind not in self._offsets:
            rows = self._db.execute(
                "SELECT offset, length, idx FROM rows WHERE kind = ? ORDER BY offset", (kind,)
            ).fetchall()
            self._offsets[kind] = ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
        return self._offsets[kind]

    def search(self, kind: str, q: str) -> set[int]:
        """The idx of every row whose line contains `q` (ASCII case-insensitive)."""
        needle = q.encode("utf-8").lower()
        key = (kind, q)
        if key in self._hits:
            return self._hits[key]
        offsets, lengths, idxs = self._offset_table(kind)
        found: set[int] = set()
        chunk = 16 << 20
        with open(self.run_dir / SOURCES[kind], "rb") as fh:
            base = 0  # file offset of buf[0]
            buf = b""
            while True:
                more = fh.read(chunk)
                buf += more
                low = buf.lower()  # bytes.lower(): ASCII only, and fast
                pos = low.find(needle)
                while pos >= 0:
                    at = base + pos
                    i = bisect.bisect_right(offsets, at) - 1
                    if i >= 0 and at + len(needle) <= offsets[i] + lengths[i]:
                        found.add(idxs[i])  # else: a superseded line, or across two lines
                    pos = low.find(needle, pos + 1)
                if not more:
                    break
                keep = max(0, len(needle) - 1)  # a match may straddle two chunks
                base += len(buf) - keep
                buf = buf[len(buf) - keep :] if keep else b""
        if len(self._hits) > 32:
            self._hits.clear()
        self._hits[key] = found
        return found

    def query(
        self,
        kind: str,
        view: str = "all",
        principle: str | None = None,
        q: str = "",
        offset: int = 0,
        limit: int = 50,
        exclude: set[str] | None = None,
    ) -> Page:
        """One page of rows (summaries, in file order) matching a view, a principle and a search.
        `exclude`: row ids left out (the reviewer's labelled rows, for the `unlabelled` view)."""
        with self._lock:
            where, args = self._where(kind, view, principle)
            cols = (
                "idx, id, line, status, label, p_a, margin, consistent, changed, principles, prompt"
            )
            if not q and not exclude:
                (total,) = self._db.execute(
                    f"SELECT COUNT(*) FROM rows WHERE {where}", args
                ).fetchone()
                rows = self._db.execute(
                    f"SELECT {cols} FROM rows WHERE {where} ORDER BY idx LIMIT ? OFFSET ?",
                    [*args, limit, offset],
                ).fetchall()
            else:
                hits = self.search(kind, q) if q else None
                keep = [
                    (i, rid)
                    for i, rid in self._db.execute(
                        f"SELECT idx, id FROM rows WHERE {where} ORDER BY idx", args
                    )
                    if (hits is None or i in hits) and not (exclude and rid in exclude)
                ]
                total = len(keep)
                chosen = [i for i, _ in keep[offset : offset + limit]]
                rows = []
                if chosen:
                    marks = ",".join("?" * len(chosen))
                    rows = self._db.execute(
                        f"SELECT {cols} FROM rows WHERE kind = ? AND idx IN ({marks}) ORDER BY idx",
                        [kind, *chosen],
                    ).fetchall()
        names = cols.split(", ")
        out = []
        for r in rows:
            d = dict(zip(names, r, strict=True))
            d["principles"] = [p for p in (d["principles"] or "").split("|") if p]
            d["consistent"] = None if d["consistent"] is None else bool(d["consistent"])
            d["changed"] = None if d["changed"] is None else bool(d["changed"])
            out.append(d)
        return Page(total, out)

    def ids(self, kind: str) -> frozenset[str]:
        """Every row id of a kind (cached until the file changes)."""
        with self._lock:
            if kind not in self._idset:
                rows = self._db.execute("SELECT id FROM rows WHERE kind = ?", (kind,)).fetchall()
                self._idset[kind] = frozenset(r for (r,) in rows)
            return self._idset[kind]

    def has(self, kind: str, row_id: str) -> bool:
        with self._lock:
            return (
                self._db.execute(
                    "SELECT 1 FROM rows WHERE kind = ? AND id = ?", (kind, row_id)
                ).fetchone()
                is not None
            )

    def position(self, kind: str, row_id: str) -> int | None:
        """The row's place (0-based) in the `all` view, file order; None if unknown."""
        with self._lock:
            hit = self._db.execute(
                "SELECT COUNT(*) FROM rows WHERE kind = ? AND idx < "
                "(SELECT idx FROM rows WHERE kind = ? AND id = ?)",
                (kind, kind, row_id),
            ).fetchone()
            known = self._db.execute(
                "SELECT 1 FROM rows WHERE kind = ? AND id = ?", (kind, row_id)
            ).fetchone()
        return hit[0] if known else None

    def record(self, kind: str, row_id: str) -> dict[str, Any] | None:
        """The full record (its latest line), read from the JSONL at its offset; None if unknown."""
        with self._lock:
            hit = self._db.execute(
                "SELECT offset, length, line FROM rows WHERE kind = ? AND id = ?", (kind, row_id)
            ).fetchone()
        if hit is None:
            return None
        offset, length, line = hit
        path = self.run_dir / SOURCES[kind]
        with open(path, "rb") as fh:
            fh.seek(offset)
            raw = fh.read(length)
        record = parse_record(path, line, raw, MODELS[kind])
        if record is None or record.id != row_id:
            raise DataError(
                f"{path}:{line}: changed since it was indexed; reload the page to read it again."
            )
        obj = record.model_dump(mode="json")
        obj["_line"] = line
        return obj

    def counts(self, kind: str) -> dict[str, Any]:
        """Rows per view and per principle, judge labels, and a 10-bin margin histogram
        (counted once, again only when the file has changed)."""
        with self._lock:
            if kind not in self._counts:
                self._counts[kind] = self._count(kind)
            c = self._counts[kind]
            return {**c, "views": dict(c["views"])}

    def _count(self, kind: str) -> dict[str, Any]:
        with self._lock:
            views = {}
            for view in VIEWS[kind]:
                if view == "unlabelled":
                    continue
                where, args = self._where(kind, view, None)
                (views[view],) = self._db.execute(
                    f"SELECT COUNT(*) FROM rows WHERE {where}", args
                ).fetchone()
            principles: dict[str, int] = {}
            for (p,) in self._db.execute("SELECT principles FROM rows WHERE kind = ?", (kind,)):
                for pid in (p or "").split("|"):
                    if pid:
                        principles[pid] = principles.get(pid, 0) + 1
            labels = dict(
                self._db.execute(
                    "SELECT COALESCE(label, status), COUNT(*) FROM rows WHERE kind = ? GROUP BY 1",
                    (kind,),
                ).fetchall()
            )
            hist = [0] * 10
            for b, c in self._db.execute(
                "SELECT MIN(CAST(margin * 10 AS INTEGER), 9), COUNT(*) FROM rows "
                "WHERE kind = ? AND status = 'ok' AND margin IS NOT NULL GROUP BY 1",
                (kind,),
            ):
                hist[max(0, int(b))] += c
        return {
            "views": views,
            "principles": dict(sorted(principles.items())),
            "judge_labels": labels,
            "margin_hist": hist,
        }


_TOKEN = re.compile(r"\s+|\w+|[^\w\s]")


def word_diff(a: str, b: str) -> list[list[str]]:
    """[[op, text], ...] turning a into b word by word; op is '=', '-' (only in a) or '+'."""
    ta, tb = _TOKEN.findall(a or ""), _TOKEN.findall(b or "")
    out: list[list[str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, ta, tb, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(["=", "".join(ta[i1:i2])])
            continue
        if i2 > i1:
            out.append(["-", "".join(ta[i1:i2])])
        if j2 > j1:
            out.append(["+", "".join(tb[j1:j2])])
    return out
