"""A byte-offset index over a run's JSONL files, so `cai-kit review` pages through 100,000 rows
without reading them all into memory (or into the browser).

    index = RunIndex.open(Path("runs/pf"))          # builds or updates RUN/review_index.sqlite
    index.kinds                                      # ["pair", "revision"]: the files present
    page = index.query("pair", view="ties", q="refund", offset=0, limit=50)
    record = index.record("pair", row_id)            # the full JSON object, read at its offset

One index row per record id (the last line of an id wins, as `latest_by_id` reads: a retried
failure supersedes the failure) in first-seen order, with what the filters need: status, the
judge's label, p_a, margin, whether both orders agreed, the principles, and the start of the
prompt. Texts stay in the JSONL: a search scans the file's bytes (mmap, case-insensitive for
ASCII) and maps the hits back to rows by offset. The index is kept beside the run and only the
appended tail is read when the file has grown (a job still writing); a file that changed any
other way is indexed again. A run directory that cannot be written gets an in-memory index.
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

try:  # a faster parser when present (a dependency of several of ours); json otherwise
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    from json import loads as _loads

SOURCES = {"pair": "prefs.jsonl", "revision": "revisions.jsonl"}
INDEX_NAME = "review_index.sqlite"
INDEX_VERSION = 1
VIEWS = {
    "pair": ("all", "ties", "low-margin", "orders-disagree", "failed", "unlabelled"),
    "revision": ("all", "unchanged", "failed", "unlabelled"),
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    kind TEXT PRIMARY KEY, version INTEGER, size INTEGER, mtime_ns INTEGER, head TEXT,
    tail TEXT, lines INTEGER
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


@dataclass
class Page:
    total: int  # rows matching the query
    rows: list[dict[str, Any]] = field(default_factory=list)


def _prompt(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return str(m.get("content", ""))[:200]
    return (
        str(messages[-1].get("content", ""))[:200]
        if messages and isinstance(messages[-1], dict)
        else ""
    )


def _fields(kind: str, obj: dict[str, Any]) -> tuple[Any, ...]:
    """(status, label, p_a, margin, consistent, changed, principles, prompt) of one record."""
    status = obj.get("status", "ok")
    if kind == "pair":
        v = obj["verdict"]
        label = v.get("label")
        if label == "failed":
            status = "failed"
        pc = v.get("position_consistent")
        pids = v.get("principle_ids") or []
        return (
            status,
            label,
            v.get("p_a"),
            v.get("margin"),
            None if pc is None else int(pc),
            None,
            "|" + "|".join(pids) + "|",
            _prompt(obj.get("messages")),
        )
    steps = obj.get("steps") or []
    pids = sorted({s.get("principle_id", "") for s in steps if isinstance(s, dict)})
    initial, final = (
        (obj.get("initial_response") or "").strip(),
        (obj.get("final_response") or "").strip(),
    )
    return (
        status,
        None,
        None,
        None,
        None,
        int(initial != final),
        "|" + "|".join(pids) + "|",
        _prompt(obj.get("messages")),
    )


def _check(kind: str, path: Path, line: int, obj: Any) -> dict[str, Any]:
    what = "preference record" if kind == "pair" else "revision record"
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
        raise DataError(f"{path}:{line}: not a {what} (no string `id`).")
    if kind == "pair" and not (
        isinstance(obj.get("verdict"), dict)
        and isinstance(obj.get("response_a"), str)
        and isinstance(obj.get("response_b"), str)
    ):
        raise DataError(f"{path}:{line}: not a {what} (needs response_a, response_b and verdict).")
    return obj


def _digest(path: Path, start: int, end: int) -> str:
    with open(path, "rb") as fh:
        fh.seek(max(0, start))
        return hashlib.sha256(fh.read(max(0, end - max(0, start)))).hexdigest()


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
                db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
            except sqlite3.Error:  # a corrupt cache: it only holds what the JSONL holds
                if db is not None:
                    db.close()
                for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                    p.unlink(missing_ok=True)
                db = None
                try:
                    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
                    db.execute("PRAGMA journal_mode=WAL")
                    db.executescript(SCHEMA)
                except sqlite3.Error:
                    db = None
        where = str(path)
        if db is None:
            db, where = (
                sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None),
                ":memory:",
            )
            db.executescript(SCHEMA)
        db.execute("PRAGMA synchronous=OFF")  # a cache: rebuilt from the JSONL if torn
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
        meta = self._db.execute(
            "SELECT version, size, mtime_ns, head, tail, lines FROM meta WHERE kind = ?", (kind,)
        ).fetchone()
        start, line0 = 0, 0
        if meta is not None:
            version, size, mtime_ns, head, tail, lines = meta
            same_start = (
                version == INDEX_VERSION
                and st.st_size >= size
                and _digest(path, 0, min(size, 4096)) == head
                and _digest(path, size - 4096, size) == tail
            )
            if same_start and st.st_size == size and st.st_mtime_ns == mtime_ns:
                return
            if same_start:
                start, line0 = size, lines
        if start == 0:
            self._db.execute("DELETE FROM rows WHERE kind = ?", (kind,))
        end, lines = self._scan(kind, path, start, line0)
        self._db.execute(
            "INSERT OR REPLACE INTO meta VALUES (?,?,?,?,?,?,?)",
            (
                kind,
                INDEX_VERSION,
                end,
                st.st_mtime_ns,
                _digest(path, 0, min(end, 4096)),
                _digest(path, end - 4096, end),
                lines,
            ),
        )
        self._offsets.pop(kind, None)
        self._counts.pop(kind, None)
        self._idset.pop(kind, None)
        self._hits = {k: v for k, v in self._hits.items() if k[0] != kind}

    def _scan(self, kind: str, path: Path, start: int, line0: int) -> tuple[int, int]:
        """Index complete lines from byte `start`; returns (bytes indexed, lines indexed)."""
        (n,) = self._db.execute(
            "SELECT COALESCE(MAX(idx) + 1, 0) FROM rows WHERE kind = ?", (kind,)
        ).fetchone()
        batch: list[tuple[Any, ...]] = []
        pos, line = start, line0
        self._db.execute("BEGIN")
        try:
            with open(path, "rb") as fh:
                fh.seek(start)
                for raw in fh:
                    if not raw.endswith(b"\n"):
                        break  # a last line still being written (or torn): read it next time
                    line += 1
                    offset, pos = pos, pos + len(raw)
                    if not raw.strip():
                        continue
                    try:
                        obj = _loads(raw)
                    except ValueError as exc:
                        raise DataError(
                            f"{path}:{line}: not valid JSON ({exc}); fix or remove that line."
                        ) from None
                    obj = _check(kind, path, line, obj)
                    try:
                        fields = _fields(kind, obj)
                    except (AttributeError, TypeError, KeyError):
                        raise DataError(
                            f"{path}:{line}: a field has the wrong type for a {kind} record."
                        ) from None
                    batch.append((kind, n, obj["id"], offset, len(raw), line, *fields))
                    n += 1
                    if len(batch) >= 5000:
                        self._db.executemany(_UPSERT, batch)
                        batch.clear()
            if batch:
                self._db.executemany(_UPSERT, batch)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return pos, line

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
        with open(self.run_dir / SOURCES[kind], "rb") as fh:
            fh.seek(offset)
            obj = _loads(fh.read(length))
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
