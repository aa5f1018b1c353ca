"""`cai-kit constitution infer | diff` (Inverse Constitutional AI) against the scripted server.

The data hide one rule: the shorter answer is always the chosen one. The scripted "model"
proposes principles that state the rule (in two wordings, to be merged) and two noise
principles; as a judge it follows the principle it is given. Only the rule may survive.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.constitution import load_constitution
from cai_kit.errors import DataError
from cai_kit.judges.pairwise import RULES
from cai_kit.stages.infer import (
    PROPOSE_SYSTEM,
    InferConfig,
    LabelledPair,
    ProposalRecord,
    diff_constitutions,
    merge_proposals,
    parse_principles,
)
from tests.fixtures.fault_server import FaultServer

RULE = "Prefer the response that is shorter."
RULE_SAME = "Prefer the shorter response."  # the same words that matter: merged as text
RULE_2 = "Prefer the response that is shorter and more concise."  # a paraphrase: same verdicts
APPLES = "Prefer the response that mentions apples."  # anti-correlated with the labels
FORMAL = "Prefer the response that uses a formal tone."  # never decides (a position-biased judge)


def _pairs(n: int = 24) -> list[dict[str, str]]:
    rows = []
    for i in range(n):
        short = f"Answer {i}: yes."
        long = f"Answer {i}: well, it depends on many things, " + "and more words " * (2 + i % 3)
        if i % 2:
            long += " apples help."  # the noise feature sits in the rejected answer only
        rows.append({"prompt": f"Question {i}: is it fine?", "chosen": short, "rejected": long})
    return rows


def _blocks(text: str) -> tuple[str, str]:
    found = re.findall(r"<<<RESPONSE-[AB]-\w+>>>\n(.*?)\n<<<END-RESPONSE", text, re.DOTALL)
    return found[0], found[1]


def hidden_rule_model(body: dict[str, Any], rng: Any) -> str:
    system = body["messages"][0]["content"]
    user = body["messages"][-1]["content"]
    if system == PROPOSE_SYSTEM:  # propose: the rule (in three wordings) and noise
        rule = [RULE, RULE_SAME, RULE_2][rng.randrange(3)]
        noise = [APPLES, FORMAL][rng.randrange(2)]
        return f"1. {rule}\n2. {noise}"
    assert system.startswith(RULES)
    a, b = _blocks(user)
    question = user.rsplit("Question: ", 1)[1]
    if "shorter" in question:
        return "A" if len(a) < len(b) else "B"
    if "apples" in question and ("apples" in a) != ("apples" in b):
        return "A" if "apples" in a else "B"
    return "A"  # no opinion: always the first shown, a tie over both orders


def _calls(line: str) -> int:
    m = re.search(r"about (\d+) calls", line)
    assert m, line
    return int(m.group(1))


def _infer(server: FaultServer, data: Path, out: Path, tmp: Path, *extra: str) -> Any:
    return CliRunner().invoke(
        app,
        ["constitution", "infer", str(data), "--model", "teacher", "--api-base", server.base_url,
         "--out", str(out), "--mode", "letter", "--max-candidates", "4",
         "--cache-path", str(tmp / "calls.sqlite"), "-q", *extra],
    )  # fmt: skip


def test_infer_recovers_the_hidden_rule_and_reports_its_held_out_agreement(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.responder = hidden_rule_model
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _pairs()))
    out = tmp_path / "inferred.yaml"

    dry = _infer(fault_server, data, out, tmp_path, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert fault_server.paid == 0 and not out.exists()
    propose_line, test_line = (ln for ln in dry.output.splitlines() if "dry run" in ln)
    previewed = _calls(propose_line) + _calls(test_line)
    assert _calls(propose_line) == 12 and _calls(test_line) == 2 * 12 * 4  # 24 pairs, half held out

    r = _infer(fault_server, data, out, tmp_path)
    assert r.exit_code == 0, r.output
    assert fault_server.paid == previewed  # the preview named exactly the calls made
    report = json.loads((tmp_path / "inferred.infer" / "report.json").read_text())
    by_text = {c["text"]: c for c in report["candidates"]}
    rule = report["candidates"][0]
    assert set(by_text) == {rule["text"], RULE_2, APPLES, FORMAL} and rule["text"] in (
        RULE,
        RULE_SAME,
    )
    assert report["merged_as_duplicates"] >= 1  # "shorter": one candidate however worded
    assert rule["kept"] and rule["agreement"] == 1.0 and rule["decided"] == rule["tested"] == 12
    paraphrase = by_text[RULE_2]  # passes too, but judges exactly as the rule does: not kept
    assert paraphrase["agreement"] == 1.0 and not paraphrase["kept"]
    assert paraphrase["redundant_with"] == rule["id"]
    assert rule["example"]["chosen"].endswith("yes.")
    assert not by_text[APPLES]["kept"] and by_text[APPLES]["agreement"] == 0.0
    assert not by_text[FORMAL]["kept"] and by_text[FORMAL]["decided"] == 0
    assert "agreement 1.00  decided 12/12" in r.output

    const = load_constitution(str(out))  # a valid constitution with the rule only
    assert [p.judge_question for p in const.principles] == [
        f"Principle: {rule['text'].rstrip('.')}. Which response does this principle prefer?"
    ]
    assert "12 held-out pairs" in const.description and str(data) in const.description
    v = CliRunner().invoke(app, ["constitution", "validate", str(out)])
    assert v.exit_code == 0 and v.output.startswith("OK: inferred v1.0, 1 principles")

    paid = fault_server.paid
    again = _infer(fault_server, data, out, tmp_path)  # a re-run: nothing left, no call made
    assert again.exit_code == 0, again.output
    assert fault_server.paid == paid and "0 done" in again.output and " 0 calls" in again.output
    dry = _infer(fault_server, data, out, tmp_path, "--dry-run")
    assert dry.output.count("dry run: 0 rows to do, about 0 calls") == 2, dry.output

    used = CliRunner().invoke(  # every command can use it at once: the judge, for one
        app,
        ["judge", str(data), "-c", str(out), "--judge-model", "teacher", "--api-base",
         fault_server.base_url, "--mode", "letter", "--out", str(tmp_path / "j"), "-q",
         "--cache-path", str(tmp_path / "calls.sqlite")],
    )  # fmt: skip
    assert used.exit_code == 0, used.output
    recs = [json.loads(x) for x in (tmp_path / "j" / "prefs.jsonl").read_text().splitlines()]
    assert all(x["chosen"].endswith("yes.") for x in recs)


def test_infer_without_a_passing_candidate_fails_in_one_line(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.responder = lambda body, rng: (
        FORMAL if body["messages"][0]["content"] == PROPOSE_SYSTEM else "A"
    )
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _pairs(6)))
    r = _infer(fault_server, data, tmp_path / "x.yaml", tmp_path)
    assert r.exit_code == 1 and "No candidate reached --min-agreement 0.6" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "x.yaml").exists()


def test_unlabelled_response_pairs_are_refused_with_file_and_line(tmp_path: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "q", "response_a": "x", "response_b": "y"}) + "\n")
    r = CliRunner().invoke(
        app, ["constitution", "infer", str(data), "--out", str(tmp_path / "o.yaml")]
    )
    assert r.exit_code == 1 and f"{data}:1: response_a/response_b need a `label`" in r.output


def test_labelled_a_b_pairs_and_prefs_runs_are_read_with_their_labels(tmp_path: Path) -> None:
    from cai_kit.stages.infer import load_labelled_pairs

    data = tmp_path / "gold.jsonl"
    rows = [{"prompt": "q1", "response_a": "x", "response_b": "y", "label": "B"},
            {"prompt": "q2", "response_a": "u", "response_b": "v", "label": "A"},
            {"prompt": "q3", "response_a": "s", "response_b": "t", "label": "tie"}]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = {(p.chosen, p.rejected) for p in load_labelled_pairs(data)}
    assert got == {("y", "x"), ("u", "v")}
    export = tmp_path / "dpo"  # what `cai-kit export dpo|prefs` writes (conversational)
    export.mkdir()
    conv = [{"prompt": [{"role": "user", "content": f"q{i}"}],
             "chosen": [{"role": "assistant", "content": f"good {i}"}],
             "rejected": [{"role": "assistant", "content": f"bad {i}"}]} for i in range(2)]  # fmt: skip
    (export / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in conv))
    got = {(p.messages[0]["content"], p.chosen, p.rejected) for p in load_labelled_pairs(export)}
    assert got == {("q0", "good 0", "bad 0"), ("q1", "good 1", "bad 1")}
    (export / "train.jsonl").write_text(json.dumps({**conv[0], "rejected": "bad"}) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl:1: a conversational row needs"):
        load_labelled_pairs(export)


def test_merge_keeps_one_candidate_per_meaning_most_proposed_first() -> None:
    recs = [
        ProposalRecord(id=str(i), pair_id=f"p{i}", principles=ps)
        for i, ps in enumerate([[APPLES, RULE], [RULE_2], ["prefer the response that is SHORTER"]])
    ]
    cands, total, merged = merge_proposals(recs, InferConfig())
    assert [c.text for c in cands] == [RULE, APPLES, RULE_2] and total == 4 and merged == 1
    assert [c.support for c in cands] == [2, 1, 1]
    more = ProposalRecord(id="x", pair_id="p9", principles=["Prefer the response that is more detailed."])  # fmt: skip
    cands, _, merged = merge_proposals([*recs, more], InferConfig())
    assert merged == 1 and len(cands) == 4  # the opposite rule is not merged into "shorter"
    assert parse_principles(
        "Here are the principles:\n1. Prefer x over y\n- * `Prefer short ones`\nok\n", 5
    ) == [
        "Prefer x over y",
        "Prefer short ones",
    ]
    assert LabelledPair  # (the public type callers build pairs with)


def test_diff_says_what_b_adds_and_lacks(tmp_path: Path) -> None:
    harmless = load_constitution("harmless")
    kept, renamed, dropped = harmless.principles[0], harmless.principles[1], harmless.principles[2]
    new = {"id": "shorter", "critique": "Find where it rambles.", "revision": "Make it short."}
    b = {"name": "b", "principles": [kept.model_dump(exclude_none=True),
                                     {**renamed.model_dump(exclude_none=True), "id": "renamed"}, new]}  # fmt: skip
    a = {"name": "a", "principles": [p.model_dump(exclude_none=True) for p in (kept, renamed, dropped)]}  # fmt: skip
    import yaml

    (tmp_path / "a.yaml").write_text(yaml.safe_dump(a))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(b))
    d = diff_constitutions(load_constitution(str(tmp_path / "a.yaml")), load_constitution(str(tmp_path / "b.yaml")))  # fmt: skip
    assert [p.id for p in d.added] == ["shorter"] and [p.id for p in d.lacking] == [dropped.id]
    assert {(p.id, q.id) for p, q, _ in d.matched} == {(kept.id, kept.id), (renamed.id, "renamed")}
    r = CliRunner().invoke(app, ["constitution", "diff", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "B adds 1:\n  + shorter:" in r.output and f"B lacks 1:\n  - {dropped.id}:" in r.output
    assert f"= {renamed.id} ~ renamed (text similarity 1.00)" in r.output
    missing = CliRunner().invoke(app, ["constitution", "diff", "harmless", str(tmp_path / "nope.yaml")])  # fmt: skip
    assert missing.exit_code == 1 and "No constitution" in missing.output


@pytest.mark.parametrize("holdout", [0.05, 0.95])
def test_split_keeps_both_sides_non_empty(holdout: float) -> None:
    from cai_kit.stages.infer import split_pairs

    pairs = [LabelledPair(str(i), [{"role": "user", "content": "q"}], "a", "b") for i in range(3)]
    propose, test = split_pairs(pairs, InferConfig(holdout=holdout))
    assert propose and test and len(propose) + len(test) == 3


def test_batch_api_infers_the_same_constitution_in_one_wave_per_step(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.responder = hidden_rule_model
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _pairs(12)))
    sync = _infer(fault_server, data, tmp_path / "s.yaml", tmp_path)
    assert sync.exit_code == 0, sync.output
    (tmp_path / "calls.sqlite").unlink()
    batch = _infer(fault_server, data, tmp_path / "b.yaml", tmp_path, "--batch-api")
    assert batch.exit_code == 0, batch.output
    assert fault_server.batches_created == 2  # proposals: one wave; both orders of every test: one
    s, b = load_constitution(str(tmp_path / "s.yaml")), load_constitution(str(tmp_path / "b.yaml"))
    assert s.principles == b.principles


def test_a_budget_stop_keeps_the_work_and_a_rerun_finishes_it(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.responder = hidden_rule_model
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _pairs(12)))
    out = tmp_path / "i.yaml"
    # $2: a proposal call's worst case is ~$1.11 (its prompt bounded by its UTF-8 bytes)
    stopped = _infer(fault_server, data, out, tmp_path, "--max-cost", "2", "--price", "1000,1000")
    assert stopped.exit_code == 4 and "No constitution yet: proposing stopped" in stopped.output
    assert 0 < fault_server.paid < 6 and not out.exists()
    first = fault_server.paid
    r = _infer(fault_server, data, out, tmp_path)
    assert r.exit_code == 0, r.output
    assert f"{6 - first} done" in r.output and out.exists()  # only the missing proposals


@pytest.mark.slow  # (a killed process and its re-run: the full run's, not the fast tier's)
def test_kill_9_mid_infer_then_rerun_pays_no_call_twice_and_infers_the_same(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    fault_server.responder = hidden_rule_model
    fault_server.latency_s = 0.05
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _pairs()))
    args = ["constitution", "infer", str(data), "--model", "teacher", "--api-base", fault_server.base_url,
            "--concurrency", "4", "-q"]  # fmt: skip
    clean = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "clean" / "c.yaml"),
                                     "--cache-path", str(tmp_path / "c1.sqlite")])  # fmt: skip
    assert clean.exit_code == 0, clean.output
    want = fault_server.paid  # what one uninterrupted run pays (proposals, then the tests)

    cmd = [sys.executable, "-m", "cai_kit", *args, "--out", str(tmp_path / "killed" / "c.yaml"),
           "--cache-path", str(tmp_path / "c2.sqlite")]  # fmt: skip
    env = {**os.environ, "CAI_KIT_CACHE_DIR": str(tmp_path / "cc")}
    killed_at = want + 20  # mid-way through the tests of the candidates
    fault_server.hold_after = killed_at  # then the server holds the rest: none in transit
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and fault_server.paid < killed_at:
        time.sleep(0.02)
    time.sleep(1.0)  # the client has stored every answer it received; the rest are held
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    fault_server.hold_after = None
    assert fault_server.paid == killed_at, "the job finished before it could be killed"
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert fault_server.paid == 2 * want  # the killed run and its re-run paid no call twice
    killed, whole = ((tmp_path / d / "c.yaml").read_text() for d in ("killed", "clean"))
    assert killed.replace("/killed/", "/clean/") == whole
