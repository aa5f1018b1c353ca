"""`cai-kit prefs --label rubric`: each sampled response scored once by the constitution's
rubric, pairs labelled by the score difference; against the scripted provider on loopback, whose
judge answers Yes/No (rubric) or A/B (pairwise) by the same rule, so the two labelings of the
same samples can be compared (docs/rewards.md, "Rubric labels vs pairwise")."""

from __future__ import annotations

import json
import math
import re
import sys
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.io import latest_by_id
from cai_kit.records import PreferenceRecord
from tests.fixtures.fault_server import FaultServer

CONSTITUTION = """\
name: scripted
rubric: {combine: mean}
principles:
  - id: polite
    critique: Rude?
    revision: Be polite.
    question: Is the response polite?
  - id: concise
    critique: Too long?
    revision: Shorten it.
    question: Is the response concise?
  - id: no-urls
    critique: Links?
    revision: Drop links.
    check: {regex: 'https?://', must: not_match}
"""
K, PROMPTS, JUDGED = 4, 3, 2  # responses per prompt, prompts, principles a judge is asked
TEMPLATES = ["Please, happy to help.", "Please, " + "more words " * 6, "Go away.", "Go away " + "words " * 8]  # fmt: skip


def _polite(text: str) -> bool:
    return "Please" in text


def _concise(text: str) -> bool:
    return len(text) < 40


def _quality(text: str) -> float:
    """The rubric's combined score of a response under the scripted judge (mean of 3 items)."""
    return (_polite(text) + _concise(text) + ("http" not in text)) / 3


def _block(text: str, name: str) -> str:
    return re.findall(rf"<<<{name}-\w+>>>\n(.*?)\n<<<END-{name}", text, re.DOTALL)[0]


def _reply(body: dict[str, Any], rng: Any) -> str:
    """The policy draws a template (seeded); the judge answers by rule: Yes/No per rubric
    question, or A/B for the response with the better quality (A when equal)."""
    if body["model"] == "pol":
        return f"{rng.randrange(10**6)} {rng.choice(TEMPLATES)}"
    last = body["messages"][-1]["content"]
    if "Answer Yes or No" in last:
        resp = _block(last, "RESPONSE")
        ok = _polite(resp) if "polite?" in last else _concise(resp)
        return "Yes" if ok else "No"
    first, second = _block(last, "RESPONSE-A"), _block(last, "RESPONSE-B")
    return "B" if _quality(second) > _quality(first) else "A"


def _prompts(tmp_path: Path) -> Path:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(PROMPTS)))
    return path


def _args(server: FaultServer, tmp_path: Path, out: Path, *extra: str) -> list[str]:
    cons = tmp_path / "c.yaml"
    cons.write_text(CONSTITUTION)
    return ["prefs", str(_prompts(tmp_path)), "--policy-model", "pol", "--judge-model", "judge",
            "--api-base", server.base_url, "--constitution", str(cons), "--k", str(K), "--mode",
            "letter", "--out", str(out), "-q", *extra]  # fmt: skip


def _invoke(monkeypatch: pytest.MonkeyPatch, args: list[str]):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(sys, "argv", ["cai-kit", *args])  # the manifest keeps a replayable argv
    return CliRunner().invoke(app, args)


def _judge_calls(server: FaultServer) -> int:
    return sum(b["model"] == "judge" for b in server.bodies)


def _records(run: Path) -> list[PreferenceRecord]:
    return sorted(latest_by_id(run / "prefs.jsonl", PreferenceRecord).values(), key=lambda r: r.prompt_id)  # fmt: skip


def test_rubric_labels_pick_the_best_and_worst_response_with_k_times_principles_calls(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault_server.responder = _reply
    run = tmp_path / "rub"
    args = _args(fault_server, tmp_path, run, "--label", "rubric", "--pairs", "best-worst")
    r = _invoke(monkeypatch, [*args, "--dry-run"])
    assert r.exit_code == 0, r.output
    expected = PROMPTS * K * JUDGED  # each response once per judged principle; the check is free
    assert f"judging:  dry run: {PROMPTS} rows to do, about {expected} calls" in r.output, r.output
    assert fault_server.paid == 0

    r = _invoke(monkeypatch, args)
    assert r.exit_code == 0, r.output
    assert f"judging:  {PROMPTS} done; 0 failed" in r.output, r.output
    assert _judge_calls(fault_server) == expected
    recs = _records(run)
    assert len(recs) == PROMPTS and all(rec.status == "ok" for rec in recs)
    decided = 0
    for rec in recs:
        assert rec.rubric is not None
        a, b = rec.rubric["a"], rec.rubric["b"]
        assert a["score"] == pytest.approx(_quality(rec.response_a), abs=1e-6)
        assert b["score"] == pytest.approx(_quality(rec.response_b), abs=1e-6)
        assert (
            set(a["scores"]) == {"polite", "concise", "no-urls"}
            and a["sources"]["no-urls"] == "check"
        )
        qualities = [_quality(x) for x in (rec.response_a, rec.response_b)]
        assert max(rec.metadata["scores"]) == pytest.approx(max(qualities), abs=1e-6)
        assert min(rec.metadata["scores"]) == pytest.approx(min(qualities), abs=1e-6)
        assert rec.verdict.p_a == pytest.approx(0.5 + (a["score"] - b["score"]) / 2, abs=1e-6)
        if rec.verdict.label == "tie":
            assert rec.chosen is None and a["score"] == b["score"]
        else:
            decided += 1
            assert _quality(rec.chosen or "") > _quality(rec.rejected or "")
            assert rec.verdict.margin == pytest.approx(abs(a["score"] - b["score"]), abs=1e-6)
    assert decided >= 2, "the scripted samples should give most prompts a best and a worst"

    r = CliRunner().invoke(app, ["judge-report", str(run)])
    assert r.exit_code == 0, r.output
    out = tmp_path / "dpo"
    r = CliRunner().invoke(
        app, ["export", "dpo", str(run), "--out", str(out), "--format", "standard"]
    )
    assert r.exit_code == 0 and f"Wrote {decided} train" in r.output, r.output
    for kind in ("kto", "reward"):
        r = CliRunner().invoke(app, ["export", kind, str(run), "--out", str(tmp_path / kind)])
        assert r.exit_code == 0 and "Wrote" in r.output, (kind, r.output)
    from cai_kit.review.index import RunIndex

    index = RunIndex.open(run, in_memory=True)  # what `cai-kit review RUN` serves
    try:
        assert index.ids("pair") == {rec.id for rec in recs}
    finally:
        index.close()
    paid = fault_server.paid
    r = _invoke(monkeypatch, args)  # finished: a re-run calls nothing
    assert f"0 done; 0 failed; {PROMPTS} already done" in r.output and fault_server.paid == paid


@pytest.mark.parametrize("pairs", ["all", "best-worst"])
def test_a_failed_scoring_fails_the_record_and_a_rerun_asks_only_for_it(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pairs: str
) -> None:
    def unsure_about_one_prompt(body: dict[str, Any], rng: Any) -> str:
        last = body["messages"][-1]["content"]
        if body["model"] == "judge" and "question 1" in last and "concise?" in last:
            return "Perhaps"  # unreadable: the score of every response of question 1 fails
        return _reply(body, rng)

    fault_server.responder = unsure_about_one_prompt
    run = tmp_path / "rub"
    args = _args(fault_server, tmp_path, run, "--label", "rubric", "--pairs", pairs)
    r = _invoke(monkeypatch, args)
    per_prompt = len(list(combinations(range(K), 2))) if pairs == "all" else 1
    rows = PROMPTS * per_prompt
    assert f"judging:  {rows - per_prompt} done; {per_prompt} failed" in r.output, r.output
    assert (
        _judge_calls(fault_server) == PROMPTS * K * JUDGED
    )  # a response shared by pairs: scored once
    failed = [rec for rec in _records(run) if rec.status == "failed"]
    assert len(failed) == per_prompt and all(rec.verdict.label == "failed" for rec in failed)
    assert "the judge's answer is not Yes or No" in (failed[0].error or "")
    assert failed[0].rubric is not None and failed[0].rubric["a"]["errors"]
    r = CliRunner().invoke(app, ["export", "dpo", str(run), "--out", str(tmp_path / "d")])
    assert f"{per_prompt} failed" in r.output, r.output

    fault_server.responder = _reply  # the judge answers now
    before = _judge_calls(fault_server)
    r = _invoke(monkeypatch, args)
    assert f"judging:  {per_prompt} done; 0 failed; {rows - per_prompt} already done" in r.output, (
        r.output
    )
    assert _judge_calls(fault_server) - before == K  # only the unreadable answers are asked again
    assert all(rec.status == "ok" for rec in _records(run))


def test_rubric_vs_pairwise_call_count_and_agreement_on_the_same_samples(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cost comparison of issue 22: printed (run with -s) and asserted."""
    fault_server.responder = _reply
    counts: dict[str, int] = {}
    labels: dict[str, dict[tuple[str, tuple[int, ...]], str]] = {}
    for name, extra in [("rubric", ["--label", "rubric"]), ("pairwise", []),
                        ("pairwise-all-principles", ["--principles", "all"])]:  # fmt: skip
        run = tmp_path / name
        extra = [
            *extra,
            "--cache-path",
            str(tmp_path / f"{name}.sqlite"),
        ]  # each pays its own calls
        dry = _invoke(
            monkeypatch,
            [*_args(fault_server, tmp_path, run, "--pairs", "all", *extra), "--dry-run"],
        )
        before = _judge_calls(fault_server)
        r = _invoke(monkeypatch, _args(fault_server, tmp_path, run, "--pairs", "all", *extra))
        assert r.exit_code == 0, r.output
        counts[name] = _judge_calls(fault_server) - before
        assert f"about {counts[name]} calls" in dry.output, (name, dry.output)
        labels[name] = {
            (x.prompt_id, tuple(x.metadata["samples"])): x.verdict.label for x in _records(run)
        }
    n_pairs = len(list(combinations(range(K), 2)))
    assert counts["rubric"] == PROMPTS * K * JUDGED
    assert counts["pairwise"] == PROMPTS * n_pairs * 2  # one principle per pair, both orders
    assert counts["pairwise-all-principles"] == PROMPTS * n_pairs * 2 * 3  # every principle
    assert labels["rubric"].keys() == labels["pairwise"].keys()
    agree = sum(labels["rubric"][key] == labels["pairwise"][key] for key in labels["rubric"])
    print(
        f"\njudge calls ({PROMPTS} prompts, k={K}, --pairs all, {JUDGED} judged principles + 1 check): {counts}"
    )
    print(f"labels agreeing, rubric vs pairwise: {agree} of {len(labels['rubric'])}")
    assert agree >= len(labels["rubric"]) // 2  # the same rule behind both judges


def test_bad_label_and_misplaced_rubric_combine_are_one_sentence(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    r = CliRunner().invoke(app, _args(fault_server, tmp_path, tmp_path / "x", "--label", "votes"))
    assert r.exit_code != 0 and "--label must be pairwise or rubric, not 'votes'." in r.output
    r = CliRunner().invoke(
        app, _args(fault_server, tmp_path, tmp_path / "x", "--rubric-combine", "min")
    )
    assert r.exit_code != 0 and "--rubric-combine applies to --label rubric only." in r.output
    assert fault_server.paid == 0


def _soft_yes(body: dict[str, Any], rng: Any) -> list[dict[str, Any]] | None:
    """Log-probs that agree with `_reply`'s word: P(Yes) 0.9 for a Yes, 0.2 for a No."""
    if body["model"] != "judge" or not body.get("logprobs"):
        return None
    p = 0.9 if _reply(body, rng) == "Yes" else 0.2
    top = [{"token": "Yes", "logprob": math.log(p)}, {"token": "No", "logprob": math.log(1 - p)}]
    return [{"token": top[0]["token"], "logprob": top[0]["logprob"], "top_logprobs": top}]


def test_rubric_labels_are_soft_from_log_probs_and_the_batch_api_writes_the_same_records(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault_server.responder, fault_server.logprobs = _reply, _soft_yes
    runs = {}
    for name, extra in [("sync", []), ("batch", ["--batch-api"])]:
        runs[name] = tmp_path / name
        args = _args(fault_server, tmp_path, runs[name], "--label", "rubric", "--cache-path",
                     str(tmp_path / f"{name}.sqlite"), *extra)  # fmt: skip
        r = _invoke(monkeypatch, args)
        assert r.exit_code == 0 and f"judging:  {PROMPTS} done; 0 failed" in r.output, r.output
    assert fault_server.batches_created >= 1
    sync, batch = _records(runs["sync"]), _records(runs["batch"])
    assert [(x.id, x.verdict.label, x.rubric) for x in sync] == [(x.id, x.verdict.label, x.rubric) for x in batch]  # fmt: skip
    for rec in sync:
        assert rec.rubric is not None and rec.rubric["a"]["sources"]["polite"] == "logprobs"
        soft = {0.9, 0.2}
        assert {rec.rubric["a"]["scores"]["polite"], rec.rubric["a"]["scores"]["concise"]} <= soft
        if rec.chosen is not None:
            assert _quality(rec.chosen) > _quality(rec.rejected or "")
