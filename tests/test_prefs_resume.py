"""A `prefs` run resumed after partial sampling judges only the missing pairs and never writes
a pair twice (issue 29): a pair's id hashes its own two samples, not which other samples of
the prompt existed when it was judged. Against the scripted provider (tests/fixtures)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.llm import GenParams
from tests.fixtures.fault_server import FaultServer, default_reply

_SHOWN = re.compile(r"<<<RESPONSE-([AB])-\w+>>>\n(.*?)\n<<<END-RESPONSE-\1-\w+>>>", re.DOTALL)
_SEED = 7
_SAMPLE_1 = GenParams(seed=_SEED).for_sample(1).seed  # the seed sample 1 of a prompt is drawn with


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--quiet"])
    assert result.exit_code in (0, 3), result.output  # 3: some rows failed (the first run)
    return result.output


def _server(fault_server: FaultServer, fail: dict[str, bool]) -> None:
    def reply(body: dict[str, Any], rng: Any) -> str | None:
        if body["model"] == "pol":
            last = body["messages"][-1]["content"]
            if fail["on"] and last == "question one" and body.get("seed") == _SAMPLE_1:
                return None  # the provider sends nothing: sample 1 of this prompt fails
            return default_reply(body, rng)
        shown = dict(_SHOWN.findall(body["messages"][-1]["content"]))
        return "A" if len(shown["A"]) % 3 else "B"  # a verdict that sometimes prefers B

    fault_server.responder = reply


def test_prefs_resumed_after_partial_sampling_writes_no_pair_twice(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fail = {"on": True}
    _server(fault_server, fail)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": q}) + "\n" for q in ("question one", "question two"))
    )
    run = tmp_path / "run"
    args = ["prefs", str(prompts), "--policy-model", "pol", "--judge-model", "judge", "--api-base",
            fault_server.base_url, "--k", "3", "--pairs", "all", "--mode", "letter",
            "--seed", str(_SEED), "--out", str(run)]  # fmt: skip
    first = _invoke(*args)
    assert "judging:  4 done; 0 failed" in first, first  # 1 pair of question one, 3 of two
    partial = {r["id"]: r for r in _rows(run / "prefs.jsonl")}
    fail["on"] = False
    again = _invoke(*args)
    assert "judging:  2 done; 0 failed; 4 already done" in again, again
    records = _rows(run / "prefs.jsonl")
    assert len(records) == len({r["id"] for r in records}) == 6  # 2 prompts x 3 pairs
    for r in records:  # the pair judged first kept its id, its samples are sample indices
        assert r["id"] not in partial or partial[r["id"]] == r
    assert sorted(tuple(r["metadata"]["samples"]) for r in records) == [
        (0, 1), (0, 1), (0, 2), (0, 2), (1, 2), (1, 2)
    ]  # fmt: skip
    out = tmp_path / "dpo"
    exported = CliRunner().invoke(
        app, ["export", "dpo", str(run), "--out", str(out), "--include-ties"]
    )
    assert exported.exit_code == 0, exported.output
    rows = _rows(out / "train.jsonl")
    pairs = [
        (json.dumps(r["prompt"]), *sorted((json.dumps(r["chosen"]), json.dumps(r["rejected"]))))
        for r in rows
    ]
    assert len(rows) == 6 and len(set(pairs)) == 6, rows


def test_best_worst_waits_for_all_k_samples_of_a_prompt(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """Best-worst is a function of all k samples: judged from 2 of 3 it would be another pair,
    kept beside the pair judged after the resume. It waits until all k are in."""
    fail = {"on": True}
    _server(fault_server, fail)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": q}) + "\n" for q in ("question one", "question two"))
    )
    run = tmp_path / "run"
    args = ["prefs", str(prompts), "--policy-model", "pol", "--judge-model", "judge", "--api-base",
            fault_server.base_url, "--k", "3", "--pairs", "best-worst", "--mode", "letter",
            "--seed", str(_SEED), "--out", str(run)]  # fmt: skip
    assert "judging:  1 done; 0 failed" in _invoke(*args)
    fail["on"] = False
    assert "judging:  1 done; 0 failed; 1 already done" in _invoke(*args)
    assert len(_rows(run / "prefs.jsonl")) == 2


def test_export_keeps_one_row_per_pair_judged_twice_under_two_ids(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """A run written before pair ids hashed only the pair's own samples can hold the same pair
    under two ids: the export keeps the later judgement and counts the other."""
    _server(fault_server, {"on": False})
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "question two"}) + "\n")
    run = tmp_path / "run"
    _invoke("prefs", str(prompts), "--policy-model", "pol", "--judge-model", "judge", "--api-base",
            fault_server.base_url, "--k", "3", "--pairs", "all", "--mode", "letter", "--out", str(run))  # fmt: skip
    records = _rows(run / "prefs.jsonl")
    old = {**records[0], "id": "0123456789abcdef"}  # the same pair, as an older run wrote it
    (run / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [old, *records]))
    r = CliRunner().invoke(
        app, ["export", "dpo", str(run), "--out", str(tmp_path / "d"), "--include-ties"]
    )
    assert r.exit_code == 0, r.output
    assert len(_rows(tmp_path / "d" / "train.jsonl")) == 3
    assert "1 same pair judged again" in " ".join(r.output.split()), r.output
