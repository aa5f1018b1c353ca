"""`--dry-run` previews every job command's calls, tokens and price, and calls nothing.

For prefs, judge, eval winrate, eval harmlessness and eval rubric (revise and generate: tests/test_batch_api.py)
the dry run's call count must be the number of calls the real run then makes against the
scripted server, its price must be > 0 for a priced model, `--batch-api` must show the same
(`--price` at an `--api-base` server: no batch discount is known for it),
and a dry run after the real run must find nothing left to call.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from tests.fixtures.fault_server import FaultServer, default_reply

SYNC = re.compile(r"about (\d+) calls; about [\d,]+ tokens in, [\d,]+ out: "
                  r"\$([\d.]+) \(with --batch-api: \$([\d.]+)\); nothing was called")  # fmt: skip
BATCH = re.compile(
    r"about (\d+) calls; .*?: \$([\d.]+) with --batch-api \(synchronous: \$([\d.]+)\)"
)


def _judge_reply(body: dict[str, Any], rng: random.Random) -> str:
    """The judge ("jud") answers in the form it is asked for; every other model at random."""
    if body["model"] != "jud":
        return default_reply(body, rng)
    question = str(body["messages"][-1]["content"])
    if "Answer Yes or No" in question:
        return "No"
    return "Reasoning.\nAnswer: A" if "Answer: A" in question else "A"


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _command(name: str, tmp_path: Path, url: str) -> list[str]:
    prompts = str(
        _write(tmp_path / "p.jsonl", [{"prompt": f"question {i} " * 20} for i in range(3)])
    )
    out = ["--out", str(tmp_path / "o"), "--api-base", url, "--price", "100,200"]
    if name == "prefs best-worst, votes, sample:2":
        return ["prefs", prompts, "-p", "pol", "-j", "jud", "--k", "3", "--pairs", "best-worst",
                "--mode", "votes", "--samples", "2", "--principles", "sample:2",
                "--max-tokens", "64", *out]  # fmt: skip
    if name == "prefs random:2, cot, all":
        return ["prefs", prompts, "-p", "pol", "-j", "jud", "--k", "3", "--pairs", "random:2",
                "--mode", "cot", "--principles", "all", *out]  # fmt: skip
    if name == "judge":
        pairs = _write(tmp_path / "pairs.jsonl", [{"prompt": f"q{i}", "chosen": "yes " * 50,
                                                    "rejected": "no " * 30} for i in range(4)])  # fmt: skip
        return ["judge", str(pairs), "-j", "jud", "--mode", "votes", "--samples", "3",
                "--principles", "all", *out]  # fmt: skip
    if name == "eval winrate":
        return ["eval", "winrate", "--prompts", prompts, "--model", "good", "--baseline", "base",
                "--judge", "jud", "--principles", "sample:2", "--mode", "letter", *out]  # fmt: skip
    if name == "eval rubric":  # two judged principles and a check, which costs no call
        rubric = tmp_path / "rubric.yaml"
        rubric.write_text("name: r\nprinciples:\n" + "".join(
            f"  - {{id: {i}, critique: c {i}, revision: r {i}}}\n" for i in ("a", "b"))
            + "  - {id: c, critique: c, revision: r, check: {regex: x, must: not_match}}\n")  # fmt: skip
        return ["eval", "rubric", "--prompts", prompts, "--model", "good", "--baseline", "base",
                "--judge", "jud", "--constitution", str(rubric), "--max-tokens", "128", *out]  # fmt: skip
    assert name == "eval harmlessness"
    return ["eval", "harmlessness", "--prompts", prompts, "--model", "good", "--baseline", "base",
            "--judge", "jud", "--max-tokens", "128", *out]  # fmt: skip


def _cli(*args: str) -> str:
    r = CliRunner().invoke(app, [*args, "-q"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    return r.output


@pytest.mark.parametrize(
    "name",
    ["prefs best-worst, votes, sample:2", "prefs random:2, cot, all", "judge", "eval winrate",
     "eval harmlessness", "eval rubric"],
)  # fmt: skip
def test_dry_run_previews_exactly_the_calls_the_run_makes_and_their_price(
    name: str, fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.responder = _judge_reply
    cmd = _command(name, tmp_path, fault_server.base_url)
    dry = SYNC.findall(_cli(*cmd, "--dry-run"))
    assert len(dry) == (2 if name.startswith("prefs") else 1)  # prefs: sampling, then judging
    calls, sync = sum(int(c) for c, _, _ in dry), sum(float(s) for _, s, _ in dry)
    batch = sum(float(b) for _, _, b in dry)
    assert calls > 0 and sync > 0.01 and batch == pytest.approx(sync, abs=2e-4)  # (--api-base)
    dry_batch = BATCH.findall(_cli(*cmd, "--dry-run", "--batch-api"))
    assert sum(int(c) for c, _, _ in dry_batch) == calls
    assert sum(float(b) for _, b, _ in dry_batch) == pytest.approx(batch, abs=1e-9)
    assert sum(float(s) for _, _, s in dry_batch) == pytest.approx(sync, abs=1e-9)
    assert fault_server.requests == 0  # a dry run calls nothing

    _cli(*cmd, "--cache-path", str(tmp_path / "cache.sqlite"))
    assert fault_server.paid == fault_server.requests == calls
    again = SYNC.findall(_cli(*cmd, "--dry-run"))  # finished: nothing left to call or pay
    assert [(c, s) for c, s, _ in again] == [("0", "0.0000")] * len(dry)


def test_the_shards_dry_runs_add_up_to_the_unsharded_one(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    cmd = _command("prefs best-worst, votes, sample:2", tmp_path, fault_server.base_url)
    whole = SYNC.findall(_cli(*cmd, "--dry-run"))
    shards = [SYNC.findall(_cli(*cmd, "--dry-run", "--shard", f"{i}/2")) for i in (1, 2)]
    for phase in range(2):  # sampling, judging
        assert int(whole[phase][0]) == sum(int(s[phase][0]) for s in shards)
    assert fault_server.requests == 0
