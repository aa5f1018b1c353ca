"""Human labels from `cai-kit review`: one SQLite file (WAL) beside the run, RUN/labels.sqlite.

    store = LabelStore(run_dir / "labels.sqlite")
    store.put("ana", "pair", "3f2a...", "A", note="B rambles")   # upsert; returns the label row
    store.labels(kind="pair")          # every label, oldest first
    store.for_rows("ana", "pair", ["3f2a...", ...])   # {row_id: (label, note)}

One label per (reviewer, kind, row id): labelling a row again (a changed mind, a double click,
a client retrying the same POST) replaces the earlier label, never duplicates it. Durability
as the feedback store's: WAL journal with `synchronous=FULL`, one committed transaction per
label, acknowledged only after the commit, so a `kill -9` or a power cut never loses one.

`human_labels(path, kind)` folds several reviewers into one label per row (unanimous or a strict
majority; a split is left out): what `review export-gold` and `export --prefer-human` use.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cai_kit.errors import DataError
from cai_kit.wal import connect_wal

Kind = Literal["pair", "revision"]
LABELS: dict[str, tuple[str, ...]] = {
    "pair": ("A", "B", "tie", "both-bad"),
    "revision": ("better", "worse", "unchanged"),
}
MAX_NOTE_CHARS = 2000
MAX_REVIEWER_CHARS = 64
FILENAME = "labels.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    reviewer TEXT NOT NULL,             -- the name the reviewer gave
    kind     TEXT NOT NULL CHECK (kind IN ('pair', 'revision')),
    row_id   TEXT NOT NULL,             -- the record's `id` in prefs.jsonl / revisions.jsonl
    label    TEXT NOT NULL,             -- pair: A | B | tie | both-bad; revision: better | worse | unchanged
    note     TEXT,
    created  REAL NOT NULL,
    updated  REAL NOT NULL,
    PRIMARY KEY (reviewer, kind, row_id)
);
"""


@dataclass(frozen=True)
class Label:
    reviewer: str
    kind: str
    row_id: str
    label: str
    note: str | None
    updated: float


def check_reviewer(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError("reviewer must be your name (a non-empty string).")
    name = name.strip()
    if len(name) > MAX_REVIEWER_CHARS or not name.isprintable():
        raise ValueError(
            f"reviewer must be at most {MAX_REVIEWER_CHARS} printable characters, not {name[:80]!r}."
        )
    return name


def check_label(kind: str, label: object, note: object, max_note: int = MAX_NOTE_CHARS) -> None:
    if kind not in LABELS:
        raise ValueError(f"kind must be pair or revision, not {kind!r}.")
    if label not in LABELS[kind]:
        raise ValueError(f"a {kind} label is one of {', '.join(LABELS[kind])}, not {label!r}.")
    if note is not None and not isinstance(note, str):
        raise ValueError("note must be a string.")
    if note and len(note) > max_note:
        raise ValueError(f"note is {len(note)} characters long; the limit is {max_note}.")


class LabelStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        parent = self.path.parent
        if not self.path.exists() and not (parent.is_dir() and os.access(parent, os.W_OK)):
            raise DataError(
                f"Cannot create the labels database {self.path}: {parent} is not a writable "
                "directory; give --labels-db PATH."
            )
        try:
            self._db = connect_wal(self.path, schema=SCHEMA)
            cols = {r[1] for r in self._db.execute("PRAGMA table_info(labels)")}
            if not {"reviewer", "kind", "row_id", "label", "note"} <= cols:
                raise sqlite3.DatabaseError("its labels table has other columns")
        except sqlite3.Error as exc:
            raise DataError(
                f"{self.path} is not a cai-kit labels database ({exc}); move it aside to start "
                "a new one (the labels in it are not read)."
            ) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(
        self, reviewer: str, kind: str, row_id: str, label: str, note: str | None = None
    ) -> Label:
        """Insert or replace one reviewer's label of one row; returns it once committed."""
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO labels (reviewer, kind, row_id, label, note, created, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(reviewer, kind, row_id) DO UPDATE SET "
                "label = excluded.label, note = excluded.note, updated = excluded.updated",
                (reviewer, kind, row_id, label, note or None, now, now),
            )
        return Label(reviewer, kind, row_id, label, note or None, now)

    def for_rows(
        self, reviewer: str, kind: str, row_ids: list[str]
    ) -> dict[str, tuple[str, str | None]]:
        if not row_ids:
            return {}
        marks = ",".join("?" * len(row_ids))
        with self._lock:
            rows = self._db.execute(
                f"SELECT row_id, label, note FROM labels WHERE reviewer = ? AND kind = ? "
                f"AND row_id IN ({marks})",
                (reviewer, kind, *row_ids),
            ).fetchall()
        return {r: (label, note) for r, label, note in rows}

    def of_row(self, kind: str, row_id: str) -> list[Label]:
        with self._lock:
            rows = self._db.execute(
                "SELECT reviewer, kind, row_id, label, note, updated FROM labels "
                "WHERE kind = ? AND row_id = ? ORDER BY reviewer",
                (kind, row_id),
            ).fetchall()
        return [Label(*r) for r in rows]

    def labelled_ids(self, reviewer: str, kind: str) -> set[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT row_id FROM labels WHERE reviewer = ? AND kind = ?", (reviewer, kind)
            ).fetchall()
        return {r for (r,) in rows}

    def counts(self, kind: str, reviewer: str | None = None) -> dict[str, int]:
        sql = "SELECT label, COUNT(*) FROM labels WHERE kind = ?"
        args: tuple[str, ...] = (kind,)
        if reviewer is not None:
            sql, args = sql + " AND reviewer = ?", (kind, reviewer)
        with self._lock:
            return dict(self._db.execute(sql + " GROUP BY label", args).fetchall())

    def labels(self, kind: str | None = None) -> list[Label]:
        sql = "SELECT reviewer, kind, row_id, label, note, updated FROM labels"
        args: tuple[str, ...] = ()
        if kind is not None:
            sql, args = sql + " WHERE kind = ?", (kind,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created, reviewer, row_id", args).fetchall()
        return [Label(*r) for r in rows]

    def reviewers(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT reviewer FROM labels ORDER BY reviewer")
            return [r for (r,) in rows.fetchall()]


@dataclass
class HumanLabels:
    """One label per row, folded over reviewers, and what was left out."""

    by_row: dict[str, str]
    notes: dict[str, list[str]]
    reviewers: dict[str, list[str]]
    split: int  # rows whose reviewers disagreed with no strict majority


def human_labels(path: Path, kind: str, reviewer: str | None = None) -> HumanLabels:
    """Labels of `kind` from a labels DB: unanimous or strict-majority label per row."""
    if not Path(path).is_file():
        raise DataError(f"No labels database at {path}: label rows with `cai-kit review` first.")
    store = LabelStore(path)
    try:
        rows = store.labels(kind)
    finally:
        store.close()
    votes: dict[str, list[Label]] = {}
    for lab in rows:
        if reviewer is None or lab.reviewer == reviewer:
            votes.setdefault(lab.row_id, []).append(lab)
    out = HumanLabels({}, {}, {}, 0)
    for row_id, labs in votes.items():
        (top, n), *rest = Counter(x.label for x in labs).most_common()
        if rest and n * 2 <= len(labs):
            out.split += 1
            continue
        out.by_row[row_id] = top
        out.reviewers[row_id] = sorted(x.reviewer for x in labs)
        out.notes[row_id] = [f"{x.reviewer}: {x.note}" for x in labs if x.note]
    return out


def export_gold(
    run_dir: Path, out: Path, labels_path: Path | None = None, reviewer: str | None = None
) -> dict[str, int]:
    """Human pair labels -> a gold JSONL that `judge-report --gold` reads: `messages`, `prompt`,
    `response_a`, `response_b`, `label` (A | B | tie), plus `id`, `reviewers` and `notes`.
    `both-bad` rows say nothing about which is better and are left out (counted)."""
    import json

    from cai_kit.review.index import RunIndex

    index = RunIndex.open(run_dir)
    try:
        if "pair" not in index.kinds:
            raise DataError(f"{run_dir} has no prefs.jsonl: there are no pairs to export as gold.")
        human = human_labels(labels_path or Path(run_dir) / FILENAME, "pair", reviewer)
        counts = {"written": 0, "both-bad": 0, "split": human.split, "unknown id": 0}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for row_id, label in human.by_row.items():
                if label == "both-bad":
                    counts["both-bad"] += 1
                    continue
                rec = index.record("pair", row_id)
                if rec is None:
                    counts["unknown id"] += 1
                    continue
                msgs = [{"role": m["role"], "content": m["content"]} for m in rec["messages"]]
                prompt = next((m["content"] for m in reversed(msgs) if m["role"] == "user"), "")
                row = {
                    "id": row_id,
                    "messages": msgs,
                    "prompt": prompt,
                    "response_a": rec["response_a"],
                    "response_b": rec["response_b"],
                    "label": label,
                    "reviewers": human.reviewers[row_id],
                    "notes": human.notes[row_id],
                }
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                counts["written"] += 1
        tmp.replace(out)
    finally:
        index.close()
    return counts
