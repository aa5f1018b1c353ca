"""`cai-kit export` says how many records it left out and why, and every record is either a
row or counted under exactly one reason (failed, tie, below --min-margin, identical responses)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.records import JudgeVerdict, Message, PreferenceRecord, RevisionRecord

Q = [Message(role="user", content="q")]


def _pref(i: int, a: str, b: str, label: str, margin: float | None = None) -> dict:
    v = JudgeVerdict(label=label, margin=margin, p_a=None if label == "failed" else 0.5)  # type: ignore[arg-type]
    rec = PreferenceRecord(
        id=f"r{i}", prompt_id=f"p{i}", messages=Q, response_a=a, response_b=b, verdict=v
    )  # a prompt id of its own: the same pair of one prompt is exported once (the later one)
    d = rec.model_dump()
    if label == "failed":
        d.pop("status", None), d.pop("error", None)  # as written before records had a status
    return d


def test_export_dpo_counts_every_record_it_leaves_out_by_reason(tmp_path: Path) -> None:
    run = tmp_path / "run"
    rows = [
        _pref(0, "good", "bad", "A", 1.0),
        _pref(1, "bad", "good", "B", 0.8),
        _pref(2, "x", "y", "failed"),
        _pref(3, "x", "y", "failed"),
        _pref(4, "x", "y", "tie", 0.0),
        _pref(5, "same", "same", "A", 1.0),
        _pref(6, "meh", "meh!", "A", 0.1),
    ]
    run.mkdir()
    (run / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = CliRunner().invoke(app, ["export", "dpo", str(run), "--out", str(tmp_path / "d"), "--min-margin", "0.5"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "Wrote 2 train / 0 test rows" in r.output
    assert "left out 5 records: 2 failed" in r.output
    for part in ("1 tie", "1 identical responses", "1 below --min-margin 0.5"):
        assert part in r.output
    card = (tmp_path / "d" / "README.md").read_text()
    assert "2 failed" in card and "1 identical responses" in card
    r = CliRunner().invoke(app, ["export", "kto", str(run), "--out", str(tmp_path / "k")])
    assert "left out 4 records: 2 failed" in r.output and "Wrote 6 train" in r.output


def test_export_sft_and_prefs_count_failed_revisions(tmp_path: Path) -> None:
    run = tmp_path / "rv"
    run.mkdir()
    ok = RevisionRecord(
        id="a", prompt_id="p", messages=Q, initial_response="bad", final_response="good"
    )
    bad = RevisionRecord(id="b", prompt_id="p", messages=Q, status="failed", error="HTTP 401")
    (run / "revisions.jsonl").write_text(ok.model_dump_json() + "\n" + bad.model_dump_json() + "\n")
    r = CliRunner().invoke(app, ["export", "sft", str(run), "--out", str(tmp_path / "s")])
    assert r.exit_code == 0 and "Wrote 1 train" in r.output and "1 failed" in r.output, r.output


def test_an_exported_tie_is_oriented_by_p_a(tmp_path: Path) -> None:
    """Issue 21 item 7: `--include-ties` made response_a chosen even when p_a leaned to B."""
    run = tmp_path / "run"
    run.mkdir()
    rows = []
    for i, p_a in enumerate([0.48, 0.52, 0.5, None]):
        v = JudgeVerdict(label="tie", p_a=p_a, margin=None if p_a is None else abs(p_a - 0.5) * 2)
        rec = PreferenceRecord(id=f"t{i}", prompt_id="p", messages=[Message(role="user", content=f"q{i}")],
                               response_a=f"a{i}", response_b=f"b{i}", verdict=v)  # fmt: skip
        rows.append(rec.model_dump_json() + "\n")
    (run / "prefs.jsonl").write_text("".join(rows))
    for kind in ("dpo", "reward"):
        r = CliRunner().invoke(app, ["export", kind, str(run), "--out", str(tmp_path / kind),
                                     "--include-ties", "--format", "standard"])  # fmt: skip
        assert r.exit_code == 0 and "Wrote 4 train" in r.output, r.output
        got = {
            x["prompt"]: (x["chosen"], x["rejected"])
            for x in map(json.loads, (tmp_path / kind / "train.jsonl").read_text().splitlines())
        }
        # p_a < 0.5 leans to B; above leans to A; exactly 0.5 or unknown: as written (A first)
        assert got == {"q0": ("b0", "a0"), "q1": ("a1", "b1"), "q2": ("a2", "b2"),
                       "q3": ("a3", "b3")}  # fmt: skip


def test_the_train_command_export_kto_suggests_runs_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 25: `export kto FEEDBACK_DB` suggested `cai-kit train kto OUT --set ...` without
    --out (train refuses that), with the export path as typed (wrong from another directory)."""
    import shlex

    from cai_kit.serve.store import FeedbackStore

    store = FeedbackStore(tmp_path / "feedback.db")
    for i in range(3):
        msgs = [{"role": "user", "content": f"How do I do thing {i}?"}]
        good = store.add_completion(msgs, "A safe way.", model="m", identity={}, params={})
        store.rate(good, 1)
    bad = store.add_completion([{"role": "user", "content": "q"}], "No.", model="m", identity={}, params={})  # fmt: skip
    store.rate(bad, -1)
    store.close()
    (tmp_path / "work").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    r = CliRunner().invoke(app, ["export", "kto", str(tmp_path / "feedback.db"), "--out", "kto"])
    assert r.exit_code == 0, r.output
    suggested = shlex.split(" ".join(r.output.split("balance with: ")[1].split()))
    assert suggested[:3] == ["cai-kit", "train", "kto"], suggested
    card = (tmp_path / "work" / "kto" / "README.md").read_text()
    assert " ".join(suggested) in card  # the dataset card suggests the same command

    seen = []
    monkeypatch.setattr("cai_kit.train.run.train", lambda kind, opts: seen.append(opts) or Path(opts.out))  # fmt: skip
    monkeypatch.chdir(tmp_path / "elsewhere")  # the suggestion works from any directory
    r = CliRunner().invoke(app, suggested[1:])
    assert r.exit_code == 0, r.output
    (opts,) = seen
    assert opts.out, "the suggested command has no --out: `cai-kit train` refuses it"
    assert (Path(opts.data) / "train.jsonl").is_file(), opts.data
    assert set(opts.trl) == {"desirable_weight", "undesirable_weight"}


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_export_from_an_empty_run_dir_names_a_command_with_an_absolute_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    (tmp_path / "runs" / "empty").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["export", kind, "runs/empty", "--out", "d"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.exception
    assert f"--out {tmp_path / 'runs' / 'empty'}" in " ".join(r.output.split()), r.output
