"""`cai-kit judge-report` shows the known judge biases (first-shown and longer-response shares)
and reads gold labels in both layouts, with judges scripted on the provider test server."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from tests.fixtures.fault_server import FaultServer


def _shown(body: dict[str, Any]) -> tuple[str, str]:
    text = body["messages"][-1]["content"]
    a, b = re.findall(r"<<<RESPONSE-[AB]-\w+>>>\n(.*?)\n<<<END-RESPONSE", text, re.DOTALL)
    return a, b


def _judge_run(server: FaultServer, tmp_path: Path, rows: list[dict[str, str]]) -> Path:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["judge", str(pairs), "--judge-model", "j", "--api-base", server.base_url,
                                 "--mode", "letter", "--out", str(out), "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    return out


# Half the pairs have the longer answer first, half second; the short one is the better one.
ROWS = [
    {"prompt": f"q{i}", "response_a": "No." if i % 2 else "No, and here is a long padded reason " * 3,
     "response_b": "No, and here is a long padded reason " * 3 if i % 2 else "No."}
    for i in range(6)
]  # fmt: skip


def test_a_judge_that_always_picks_the_longer_answer_shows_a_100_percent_longer_share(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.responder = lambda body, rng: (
        "A" if len(_shown(body)[0]) > len(_shown(body)[1]) else "B"
    )
    out = _judge_run(fault_server, tmp_path, ROWS)
    r = CliRunner().invoke(app, ["judge-report", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "judge_report.json").read_text())
    assert rep["longer_share"] == 1.0 and rep["longer_decisive"] == 6
    assert rep["first_shown_share"] == 0.5 and rep["first_shown_decisive"] == 12
    assert rep["position_consistency"] == 1.0  # consistent, and still length-biased
    assert "won by the longer response" in r.output and "100.0% of 6" in r.output
    assert "68%" in r.output  # the reference value is printed next to it
    assert "may reward length" in " ".join(r.output.split())


def test_a_judge_that_always_answers_a_shows_a_100_percent_first_shown_share(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.responder = lambda body, rng: "A"
    out = _judge_run(fault_server, tmp_path, ROWS)
    r = CliRunner().invoke(app, ["judge-report", str(out)])
    rep = json.loads((out / "judge_report.json").read_text())
    assert rep["first_shown_share"] == 1.0 and rep["longer_share"] is None  # all ties
    assert "first-shown response won 100%" in " ".join(r.output.split())


@pytest.mark.parametrize("conversational", [False, True])
def test_gold_accepts_trl_prompt_chosen_rejected(
    fault_server: FaultServer, tmp_path: Path, conversational: bool
) -> None:
    fault_server.responder = lambda body, rng: (
        "A" if len(_shown(body)[0]) < len(_shown(body)[1]) else "B"
    )
    out = _judge_run(fault_server, tmp_path, ROWS)  # a judge that prefers the short answer
    gold = tmp_path / "gold.jsonl"
    with open(gold, "w") as fh:
        for i, row in enumerate(ROWS[:4]):
            short, long = sorted((row["response_a"], row["response_b"]), key=len)
            chosen, rejected = (short, long) if i < 3 else (long, short)  # gold disagrees once
            if conversational:
                fh.write(json.dumps({"prompt": [{"role": "user", "content": row["prompt"]}],
                                     "chosen": [{"role": "assistant", "content": chosen}],
                                     "rejected": [{"role": "assistant", "content": rejected}]}) + "\n")  # fmt: skip
            else:
                fh.write(
                    json.dumps({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected})
                    + "\n"
                )
    r = CliRunner().invoke(app, ["judge-report", str(out), "--gold", str(gold)])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "judge_report.json").read_text())
    assert rep["gold_matched"] == 4 and rep["gold_agreement"] == pytest.approx(0.75)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "chosen": "x"}) + "\n")
    r = CliRunner().invoke(app, ["judge-report", str(out), "--gold", str(bad)])
    assert r.exit_code == 1 and "bad.jsonl:1" in r.output and "chosen and rejected" in r.output


def _no_none(output: str) -> None:
    words = set(re.findall(r"\w+", output))
    assert not words & {"None", "nan", "NaN"}, output


def test_judge_report_says_n_a_and_why_instead_of_none(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """Issue 25: tokens and cost per labelled pair printed a bare `None`."""
    fault_server.default = "401"  # every judgement fails: no labelled pair
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:2]))
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["judge", str(pairs), "--judge-model", "j", "--api-base", fault_server.base_url,
                                 "--mode", "letter", "--out", str(out), "-q"])  # fmt: skip
    assert "0 done; 2 failed" in r.output, r.output
    r = CliRunner().invoke(app, ["judge-report", str(out)])
    assert r.exit_code == 0, r.output
    _no_none(r.output)
    text = " ".join(r.output.split())
    assert "tokens / labelled pair │ n/a (no pair labelled A or B)" in text, r.output
    assert "cost / labelled pair (USD) │ n/a (no pair labelled A or B)" in text, r.output
    assert "tie rate │ n/a" in text, r.output  # not 0.0%: no verdict to count ties among

    fault_server.default = "ok"
    fault_server.responder = lambda body, rng: "A" if len(_shown(body)[0]) > len(_shown(body)[1]) else "B"  # fmt: skip
    r = CliRunner().invoke(app, ["judge", str(pairs), "--judge-model", "j", "--api-base", fault_server.base_url,
                                 "--mode", "letter", "--out", str(out), "-q"])  # fmt: skip
    assert "2 done; 0 failed" in r.output, r.output
    r = CliRunner().invoke(app, ["judge-report", str(out)])
    assert "tokens / labelled pair │ 40 " in " ".join(r.output.split()), r.output  # 2 calls of 20
    r = CliRunner().invoke(app, ["judge", str(pairs), "--judge-model", "j", "--api-base", fault_server.base_url,
                                 "--mode", "letter", "--out", str(out), "-q"])  # fmt: skip
    assert "0 done; 0 failed; 2 already done" in r.output, r.output  # the manifest: this run's
    r = CliRunner().invoke(app, ["judge-report", str(out)])
    _no_none(r.output)
    assert "n/a (the last run reused earlier work" in " ".join(r.output.split()), r.output
    (out / "manifest.json").unlink()  # records alone (e.g. copied from elsewhere)
    r = CliRunner().invoke(app, ["judge-report", str(out)])
    assert r.exit_code == 0, r.output
    _no_none(r.output)
    assert "n/a (no usage recorded)" in " ".join(r.output.split()), r.output


def _gold_run(tmp_path: Path, n: int = 32) -> tuple[Path, Path]:
    """A run of `make_run` pairs (judge A, B, tie, failed by i % 4; principles `helpful` for
    even i, `harmless` for odd, both when i % 6 == 0) and a gold file: A, except B for
    i % 4 == 1 below 20; pair 1's gold row shows the responses swapped."""
    from tests.fixtures.review_run import make_run

    run_dir = tmp_path / "run"
    pairs, _ = make_run(run_dir, n_pairs=n, n_revisions=0)
    gold = tmp_path / "gold.jsonl"
    with open(gold, "w") as fh:
        for i, p in enumerate(pairs):
            label = "B" if i % 4 == 1 and i < 20 else "A"
            a, b = p.response_a, p.response_b
            if i == 1:  # the same pair, shown the other way round
                a, b, label = b, a, "A"
            fh.write(json.dumps({"prompt": p.messages[0].content, "response_a": a, "response_b": b, "label": label}) + "\n")  # fmt: skip
    return run_dir, gold


def test_gold_agreement_and_kappa_per_principle(tmp_path: Path) -> None:
    """Issue 23: agreement and kappa with gold for the pairs judged under each principle."""
    from cai_kit.eval.judge_report import cohen_kappa

    run_dir, gold = _gold_run(tmp_path)
    r = CliRunner().invoke(app, ["judge-report", str(run_dir), "--gold", str(gold)])
    assert r.exit_code == 0, r.output
    rep = json.loads((run_dir / "judge_report.json").read_text())
    per = rep["gold_per_principle"]
    # matched: i % 4 in (0, 1, 2) (3 failed); judge A/B/tie; gold B for 1, 5, 9, 13, 17
    helpful = [i for i in range(32) if i % 4 in (0, 2)]  # every even i
    harmless = [i for i in range(32) if i % 4 == 1 or (i % 6 == 0 and i % 4 != 3)]
    assert per["helpful"]["matched"] == len(helpful) == 16
    assert per["helpful"]["agreement"] == pytest.approx(8 / 16)  # the judge's A's
    assert per["harmless"]["matched"] == len(harmless) == 14
    assert per["harmless"]["agreement"] == pytest.approx(8 / 14)  # 1..17 B, 0 12 24 A
    judge = lambda i: ("A", "B", "tie")[i % 4]  # noqa: E731
    gold_of = lambda i: "B" if i % 4 == 1 and i < 20 else "A"  # noqa: E731
    seen = [("A", "A") if i == 1 else (gold_of(i), judge(i)) for i in harmless]  # 1: swapped
    want = cohen_kappa(seen)
    assert per["harmless"]["kappa"] == pytest.approx(want, abs=1e-4)
    lo, hi = per["harmless"]["agreement_ci"]
    assert 0 <= lo < 8 / 14 < hi <= 1
    text = " ".join(r.output.split())
    assert "Gold agreement per principle" in text
    assert "harmless │ 14 │ 57.1%" in text, r.output
    _no_none(r.output)


def test_gold_kappa_per_principle_says_n_a_and_why(tmp_path: Path) -> None:
    run_dir, gold = _gold_run(tmp_path, n=3)
    rows = [json.loads(x) for x in gold.read_text().splitlines()]
    gold.write_text(json.dumps(rows[0]) + "\n")  # pair 0: gold A, judge A: chance agreement 1
    r = CliRunner().invoke(app, ["judge-report", str(run_dir), "--gold", str(gold)])
    assert r.exit_code == 0, r.output
    rep = json.loads((run_dir / "judge_report.json").read_text())
    assert rep["gold_per_principle"]["helpful"]["kappa"] is None
    _no_none(r.output)
    assert "n/a: kappa is undefined when" in " ".join(r.output.split()), r.output


def test_judge_report_lists_the_pairs_that_disagree_with_gold_with_review_links(
    tmp_path: Path,
) -> None:
    """Issue 23: which rows disagree, each with a link that opens it in `cai-kit review`."""
    run_dir, gold = _gold_run(tmp_path)
    r = CliRunner().invoke(app, ["judge-report", str(run_dir), "--gold", str(gold),
                                 "--review-url", "http://127.0.0.1:9999/"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rep = json.loads((run_dir / "judge_report.json").read_text())
    gold_of = lambda i: "B" if i % 4 == 1 and i < 20 else "A"  # noqa: E731
    want = [i for i in range(32) if i % 4 in (0, 1, 2) and ("A", "B", "tie")[i % 4] != gold_of(i)]
    assert len(want) == 11
    got = rep["gold_disagreements"]
    assert [d["id"] for d in got] == [f"pair{i:04d}" for i in want]  # all of them, in file order
    first = got[0]  # pair 2: gold A, judge tie
    assert (first["gold"], first["judge"]) == ("A", "tie")
    assert first["prompt"] == "Question 2: when does water boil?"
    assert first["link"] == "http://127.0.0.1:9999/#kind=pair&id=pair0002"
    text = " ".join(r.output.split())
    assert "Disagreements with gold (11 of 24 matched pairs;" in text, r.output
    assert "pair0002" in text and "#kind=pair&id=pair0002" in text
    assert f"pair{want[9]:04d}" in text and f"pair{want[10]:04d}" not in text  # 10 printed
    assert "and 1 more (all in judge_report.json)" in text, r.output
    r = CliRunner().invoke(app, ["judge-report", str(run_dir), "--gold", str(gold), "--disagreements", "3"])  # fmt: skip
    assert "and 8 more" in " ".join(r.output.split()), r.output


def test_judge_report_plots_the_agreement_figure_with_gold(tmp_path: Path) -> None:
    """Issue 23: with --gold, a figure of the confusion matrix and agreement by principle."""
    run_dir, gold = _gold_run(tmp_path)
    r = CliRunner().invoke(app, ["judge-report", str(run_dir)])
    assert r.exit_code == 0, r.output
    assert not (run_dir / "judge_report_gold.png").exists()  # no gold, no figure
    r = CliRunner().invoke(app, ["judge-report", str(run_dir), "--gold", str(gold)])
    assert r.exit_code == 0, r.output
    png = run_dir / "judge_report_gold.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", r.output
    assert "judge_report_gold.png" in r.output


def test_a_failed_record_is_not_matched_to_gold_whatever_label_it_carries(tmp_path: Path) -> None:
    """docs/review.md: pairs whose judgement failed are not matched (a failed best-worst record
    can carry a label A or B)."""
    from tests.fixtures.review_run import make_pair

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ok, failed = make_pair(0), make_pair(4).model_copy(update={"status": "failed"})  # both A
    (run_dir / "prefs.jsonl").write_text(ok.model_dump_json() + "\n" + failed.model_dump_json() + "\n")  # fmt: skip
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps({"prompt": p.messages[0].content, "response_a": p.response_a, "response_b": p.response_b, "label": "B"}) + "\n" for p in (ok, failed)))  # fmt: skip
    r = CliRunner().invoke(app, ["judge-report", str(run_dir), "--gold", str(gold)])
    assert r.exit_code == 0, r.output
    rep = json.loads((run_dir / "judge_report.json").read_text())
    assert rep["gold_matched_with_ties"] == 1 and rep["gold_matched"] == 1
    assert [d["id"] for d in rep["gold_disagreements"]] == ["pair0000"]
