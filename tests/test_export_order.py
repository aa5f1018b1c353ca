"""An export is a function of the records, not of the order concurrent calls finished in.

`revise` and `prefs` append each record when its calls return, so two runs of the same command
with the same seed write the same records in different orders. The export's seeded shuffle used
to run over file order: the same records gave another train.jsonl order (and another test split),
so SFT or DPO on them trained on other batches, and a benchmark run twice with one seed moved by
11 points on 18 prompts. Sorting by record id is not enough: an id also hashes the models'
identities, and a teacher on a local server has another port in another run."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from cai_kit.records import JudgeVerdict, Message, PreferenceRecord, RevisionRecord
from cai_kit.stages.export import export


def _id(run: str, i: int) -> str:
    """A record id as cai-kit makes them: a hash, whose order has nothing to do with the prompts'."""
    return hashlib.sha256(f"{run}/{i}".encode()).hexdigest()[:16]


def _revision(i: int, run: str = "") -> dict:
    return RevisionRecord(
        id=_id(run, i), prompt_id=f"p{i:02d}", messages=[Message(role="user", content=f"q{i}")],
        initial_response=f"draft {i}", final_response=f"revised {i}",
    ).model_dump()  # fmt: skip


def _pair(i: int, run: str = "") -> dict:
    return PreferenceRecord(
        id=_id(run, i), prompt_id=f"p{i:02d}", messages=[Message(role="user", content=f"q{i}")],
        response_a=f"good {i}", response_b=f"bad {i}", verdict=JudgeVerdict(label="A", margin=1.0, p_a=0.9),
    ).model_dump()  # fmt: skip


def _export(tmp_path: Path, name: str, file: str, records: list[dict], kind: str) -> tuple[str, str]:  # fmt: skip
    run = tmp_path / name
    run.mkdir()
    (run / file).write_text("".join(json.dumps(r) + "\n" for r in records))
    export(run, tmp_path / f"{name}-out", kind, eval_fraction=0.25, seed=0)  # type: ignore[arg-type]
    out = tmp_path / f"{name}-out"
    return (out / "train.jsonl").read_text(), (out / "test.jsonl").read_text()


@pytest.mark.parametrize(
    ("file", "make", "kind"),
    [("revisions.jsonl", _revision, "sft"), ("prefs.jsonl", _pair, "dpo"), ("prefs.jsonl", _pair, "kto")],
)  # fmt: skip
def test_the_same_records_in_another_file_order_export_the_same_rows(
    tmp_path: Path, file: str, make: Callable[..., dict], kind: str
) -> None:
    records = [make(i) for i in range(12)]
    # as another run wrote them: its calls finished in another order, and its record ids differ
    # (an id also hashes the models' identities, and a local server's URL has another port)
    other = [make(i, run="z") for i in range(12)]
    finished = other[5:] + other[:5][::-1]
    first = _export(tmp_path, "a", file, records, kind)
    again = _export(tmp_path, "b", file, finished, kind)
    assert first[0] and first[1]  # both parts written
    assert again == first
