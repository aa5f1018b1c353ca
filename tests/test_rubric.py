"""Checkable principles, rubric scoring, the rubric / Python rewards and `cai-kit eval rubric`,
against the scripted provider on loopback (no model weights)."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.constitution import ConstitutionError, load_constitution, parse_constitution
from tests.fixtures.fault_server import FaultServer

BASE = """\
name: t
principles:
  - id: short
    critique: Too long?
    revision: Shorten it.
    check: {regex: '\\A.{0,20}\\Z', must: match}
"""


def _write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the constitution model ------------------------------------------------------------


def test_existing_constitutions_keep_their_hash_so_old_record_ids_stay_valid() -> None:
    # measured on the code before rubrics existed (f58320c)
    assert load_constitution("harmless").content_hash == "1f5de585729e7789"
    assert load_constitution("helpful-honest").content_hash == "8f0713f30a96c8bb"


def test_checks_weights_and_rubric_parse_and_enter_the_hash() -> None:
    c = parse_constitution(BASE + "    weight: 2\nrubric: {combine: all-pass, threshold: 0.7}\n")
    p = c.principles[0]
    assert p.check is not None and p.check.regex and p.check.must == "match" and p.weight == 2.0
    assert c.rubric is not None and c.rubric.combine == "all-pass" and c.rubric.threshold == 0.7
    assert c.content_hash != parse_constitution(BASE).content_hash
    shipped = load_constitution("checkable")
    assert all(p.check is not None for p in shipped.principles)


@pytest.mark.parametrize(
    ("check", "line", "message"),
    [
        ("{regex: '(unclosed', must: match}", 6, "check.regex: not a valid regular expression"),
        ("{regex: 'a', python: 'm:f'}", 6, "give exactly one of regex or python"),
        ("{python: 'no-colon'}", 6, "must be 'module:function'"),
        ("{regex: 'a', must: sometimes}", 6, "check.must"),
        ("{regex: 'a', shell: 'rm -rf /'}", 6, "unknown key"),
    ],
)
def test_a_bad_check_is_one_located_problem(check: str, line: int, message: str) -> None:
    text = BASE.replace("{regex: '\\A.{0,20}\\Z', must: match}", check)
    with pytest.raises(ConstitutionError) as err:
        parse_constitution(text, "c.yaml")
    assert f"c.yaml:{line}: principles[0]." in str(err.value) and message in str(err.value)


def test_bad_weight_and_combine_are_located_problems() -> None:
    with pytest.raises(ConstitutionError) as err:
        parse_constitution(BASE + "    weight: 0\nrubric: {combine: median}\n", "c.yaml")
    text = str(err.value)
    assert "c.yaml:7: principles[0].weight" in text and "c.yaml:8: rubric.combine" in text


def test_cli_validate_reports_a_bad_check_as_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE.replace("must: match", "must: maybe"))
    r = CliRunner().invoke(app, ["constitution", "validate", str(path)])
    assert r.exit_code != 0 and "principles[0].check.must" in r.output
    assert "Traceback" not in r.output


# --- checks ------------------------------------------------------------------------------


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_regex_and_python_checks_score_and_a_raising_check_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cai_kit.checks import CheckError, run_check
    from cai_kit.constitution import Check

    assert run_check(Check(regex="x", must="match"), "p", "axb") == 1.0
    assert run_check(Check(regex="x", must="not_match"), "p", "axb") == 0.0
    assert run_check(Check(regex="X", ignore_case=True), "p", "axb") == 1.0
    mod = _module(tmp_path, monkeypatch, "chk_a", "def half(p, r):\n    return 0.5\n"
                  "def boom(p, r):\n    raise ValueError('no idea')\ndef big(p, r):\n    return 2\n")  # fmt: skip
    assert run_check(Check(python=f"{mod}:half"), "p", "r") == 0.5
    with pytest.raises(CheckError, match=r"chk_a:boom raised ValueError: no idea"):
        run_check(Check(python=f"{mod}:boom"), "p", "r")
    with pytest.raises(CheckError, match=r"returned 2, not a bool or a number in \[0, 1\]"):
        run_check(Check(python=f"{mod}:big"), "p", "r")
    with pytest.raises(CheckError, match=r"has no function 'nope'"):
        run_check(Check(python=f"{mod}:nope"), "p", "r")


def test_combine_rules() -> None:
    from cai_kit.judges.rubric import combine_scores

    scores, weights = {"a": 1.0, "b": 0.4}, {"a": 3.0, "b": 1.0}
    assert combine_scores(scores, weights, "mean", 0.5) == pytest.approx(0.7)
    assert combine_scores(scores, weights, "min", 0.5) == 0.4
    assert combine_scores(scores, weights, "weighted", 0.5) == pytest.approx(3.4 / 4)
    assert combine_scores(scores, weights, "all-pass", 0.5) == 0.0
    assert combine_scores(scores, weights, "all-pass", 0.3) == 1.0


# --- rubric scoring against the scripted provider --------------------------------------

MIXED = """\
name: mixed
rubric: {combine: min}
principles:
  - id: polite
    critique: Is it rude?
    revision: Be polite.
    question: Is the response polite?
  - id: no-urls
    critique: Links?
    revision: Drop links.
    check: {regex: 'https?://', must: not_match}
"""


def _yes_logprobs(p_yes: float):  # type: ignore[no-untyped-def]
    top = [
        {"token": "Yes", "logprob": math.log(p_yes)},
        {"token": "No", "logprob": math.log(1 - p_yes)},
    ]
    return lambda body, rng: [{"token": "Yes", "logprob": top[0]["logprob"], "top_logprobs": top}]  # fmt: skip


def _score(server: FaultServer, constitution_text: str, response: str):  # type: ignore[no-untyped-def]
    from cai_kit.engine import Engine, EngineConfig
    from cai_kit.judges.rubric import Rubric
    from cai_kit.llm.registry import get_backend

    rubric = Rubric(parse_constitution(constitution_text))

    async def go():  # type: ignore[no-untyped-def]
        engine = Engine(EngineConfig(quiet=True, use_cache=False, max_retries=0))
        backend = get_backend("judge", api_base=server.base_url)
        try:
            return await rubric.score("a question", response, engine, backend), engine.stats.calls
        finally:
            await backend.aclose()
            await engine.aclose()

    return asyncio.run(go())


def test_judged_principle_is_p_yes_from_logprobs_else_the_word_and_checks_call_nothing(
    fault_server: FaultServer,
) -> None:
    fault_server.responder = lambda body, rng: "Yes"
    fault_server.logprobs = _yes_logprobs(0.8)
    scored, calls = _score(fault_server, MIXED, "see http://x.example")
    assert calls == 1  # one question: the check asked no model
    assert scored.scores == {"polite": pytest.approx(0.8), "no-urls": 0.0}
    assert scored.sources == {"polite": "logprobs", "no-urls": "check"}
    assert scored.combine == "min" and scored.score == 0.0
    assert "Is the response polite?" in fault_server.bodies[-1]["messages"][-1]["content"]
    fault_server.logprobs = None
    fault_server.responder = lambda body, rng: "No."
    scored, _ = _score(fault_server, MIXED, "fine")
    assert scored.scores == {"polite": 0.0, "no-urls": 1.0} and scored.sources["polite"] == "answer"


def test_an_unparseable_or_failed_judge_answer_is_an_error_not_a_score(
    fault_server: FaultServer,
) -> None:
    fault_server.responder = lambda body, rng: "Perhaps"
    scored, _ = _score(fault_server, MIXED, "fine")
    assert scored.scores["polite"] is None and scored.score is None
    assert "not Yes or No" in scored.errors["polite"]
    fault_server.default = "401"
    scored, _ = _score(fault_server, MIXED, "fine")
    assert scored.score is None and "polite" in scored.errors and scored.scores["no-urls"] == 1.0


# --- as an RL reward ------------------------------------------------------------------


def _rubric_reward(text: str, judge: str | None = None, api_base: str | None = None):  # type: ignore[no-untyped-def]
    from cai_kit.engine import EngineConfig
    from cai_kit.judges.rubric import Rubric
    from cai_kit.train.rubric_reward import RubricReward

    cfg = EngineConfig(quiet=True, use_cache=False, max_retries=0)
    return RubricReward(Rubric(parse_constitution(text)), judge, api_base, cfg)


def test_checks_only_rubric_reward_needs_no_judge_and_logs_each_principle() -> None:
    reward = _rubric_reward(BASE + "  - id: no-x\n    critique: x?\n    revision: no x.\n"
                                   "    check: {regex: x, must: not_match}\n")  # fmt: skip
    try:
        scores = reward(["p", "p", "p"], ["ok", "x marks", "a" * 30])
        assert scores == [1.0, 0.5, 0.5] and reward.last_failed == 0
        assert reward.last_metrics == {
            "rubric/short": pytest.approx(2 / 3), "rubric/no-x": pytest.approx(2 / 3),
            "rubric/failed": 0.0,
        }  # fmt: skip
    finally:
        reward.close()


def test_a_rubric_with_judged_principles_and_no_judge_is_refused() -> None:
    from cai_kit.errors import CaiKitError

    with pytest.raises(CaiKitError, match=r"Principles polite have no check.*--reward-judge"):
        _rubric_reward(MIXED)


def test_a_check_that_raises_is_a_counted_failure_and_stops_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cai_kit.train.rewards import JudgeFailed

    mod = _module(tmp_path, monkeypatch, "chk_b",
                  "def picky(p, r):\n    if 'bad' in r:\n        raise KeyError(r)\n    return True\n")  # fmt: skip
    reward = _rubric_reward(BASE.replace("{regex: '\\A.{0,20}\\Z', must: match}", f"{{python: '{mod}:picky'}}"))  # fmt: skip
    try:
        scores = reward(["p"] * 3, ["good", "bad one", "fine"])
        assert scores == [1.0, 1.0, 1.0]  # the failure gets the others' mean: no push either way
        assert reward.last_failed == 1 and reward.failed == 1
        with pytest.raises(
            JudgeFailed, match=r"1 of 3 rubric scorings failed.*chk_b:picky raised KeyError"
        ):
            reward.check_failures(1, 3)
    finally:
        reward.close()


def test_judge_down_mid_run_is_counted_and_stops_training(fault_server: FaultServer) -> None:
    from cai_kit.train.rewards import JudgeFailed

    fault_server.responder = lambda body, rng: "Yes"
    reward = _rubric_reward(MIXED, "judge", fault_server.base_url)
    try:
        assert reward(["p", "p"], ["a", "b"]) == [1.0, 1.0] and reward.last_failed == 0
        fault_server.default = "500"  # the judge goes down between steps
        reward(["p", "p"], ["c", "d"])
        assert reward.last_failed == 2 and reward.last_metrics["rubric/no-urls"] == 1.0
        with pytest.raises(JudgeFailed, match=r"2 of 2 rubric scorings failed"):
            reward.check_failures(2, 2)
    finally:
        reward.close()


def test_python_reward_and_blend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cai_kit.errors import CaiKitError
    from cai_kit.train.rubric_reward import BlendedReward, PythonReward

    mod = _module(tmp_path, monkeypatch, "rw_c", "def length(ps, rs):\n    return [len(r) / 10 for r in rs]\n"
                  "def short(ps, rs):\n    return [1.0]\ndef nan(ps, rs):\n    return [float('nan') for r in rs]\n")  # fmt: skip
    assert PythonReward(f"{mod}:length")(["p", "p"], ["12345", ""]) == [0.5, 0.0]
    with pytest.raises(CaiKitError, match=r"returned 1 rewards for 2 responses"):
        PythonReward(f"{mod}:short")(["p", "p"], ["a", "b"])
    with pytest.raises(CaiKitError, match=r"returned nan, not a finite number"):
        PythonReward(f"{mod}:nan")(["p"], ["a"])
    with pytest.raises(CaiKitError, match=r"Cannot import 'no_such_module_zz'"):
        PythonReward("no_such_module_zz:f")
    rubric = _rubric_reward(BASE)
    blend = BlendedReward([(rubric, 1.0), (PythonReward(f"{mod}:length"), 0.5)])
    try:
        assert blend(["p", "p"], ["1234567890", "a" * 30]) == [1.5, 1.5]
        assert blend.last_metrics["rubric/short"] == 0.5
    finally:
        blend.close()


# --- cai-kit eval rubric --------------------------------------------------------------


def _prompts(tmp_path: Path, n: int = 4) -> Path:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(n)))
    return path


def _answers(body, rng):  # type: ignore[no-untyped-def]
    """after: short, no links; before: links in half the answers; the judge: Yes/No."""
    last = body["messages"][-1]["content"]
    if body["model"] == "after":
        return "Short answer."
    if body["model"] == "before":
        return "See http://example.com" if last in ("q0", "q1") else "Fine."
    return "Yes" if "Short answer" in last else "No"


def test_eval_rubric_checks_only_needs_no_judge_and_reports_pass_rates_with_cis(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.responder = _answers
    cons = _write(
        tmp_path,
        MIXED.split("  - id: polite")[0] + MIXED.split("question: Is the response polite?\n")[1],
    )
    out = tmp_path / "ev"
    args = ["eval", "rubric", "--prompts", str(_prompts(tmp_path)), "--model", "after", "--baseline", "before",
            "--constitution", str(cons), "--api-base", fault_server.base_url, "--out", str(out), "-q"]  # fmt: skip
    r = CliRunner().invoke(app, [*args, "--dry-run", "--price", "1,2"])
    assert r.exit_code == 0, r.output
    assert "dry run: 8 rows to do, about 8 calls" in r.output and "$" in r.output
    assert fault_server.paid == 0
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "8 done; 0 failed" in r.output and fault_server.paid == 8  # answers only: no judge
    assert "model: all principles combined (min) pass rate 1.000" in r.output
    assert "baseline: all principles combined (min) pass rate 0.500" in r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["rates"]["no-urls"]["baseline"]["pass_rate"] == 0.5
    lo, hi = rep["rates"]["no-urls"]["baseline"]["ci"]
    assert 0.0 <= lo < 0.5 < hi <= 1.0
    assert rep["diff"]["no-urls"]["diff"] == 0.5
    # the win rate on the combined score: after passes all 4, before fails q0 and q1
    assert rep["win_rate"] == {"wins": 2, "ties": 2, "losses": 0, "n": 4, "rate": 0.75,
                               "ci": [pytest.approx(0.5), pytest.approx(1.0)]}  # fmt: skip
    assert (
        "win rate against the baseline 0.750" in r.output and "2 wins, 2 ties, 0 losses" in r.output
    )
    assert (
        "Win rate of the model against the baseline on the combined score: **0.75**"
        in (out / "report.md").read_text()
    )
    rows = [json.loads(x) for x in (out / "rubric.jsonl").read_text().splitlines()]
    assert all(row["metadata"]["rubric"]["combine"] == "min" for row in rows)
    assert "| no-urls | 100% of 4" in (out / "report.md").read_text()


def test_eval_rubric_asks_the_judge_for_judged_principles_and_needs_one(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.responder = _answers
    cons = _write(tmp_path, MIXED)
    out = tmp_path / "ev"
    args = ["eval", "rubric", "--prompts", str(_prompts(tmp_path, 2)), "--model", "after", "--baseline", "before",
            "--constitution", str(cons), "--api-base", fault_server.base_url, "--out", str(out), "-q"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and "Principles polite have no check: pass --judge" in r.output
    r = CliRunner().invoke(app, [*args, "--judge", "judge", "--dry-run"])
    assert "dry run: 4 rows to do, about 8 calls" in r.output and fault_server.paid == 0
    r = CliRunner().invoke(app, [*args, "--judge", "judge", "--combine", "mean"])
    assert r.exit_code == 0 and "4 done; 0 failed" in r.output, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["rates"]["polite"]["model"]["pass_rate"] == 1.0
    assert rep["rates"]["polite"]["baseline"]["pass_rate"] == 0.0
    fault_server.default = "401"  # judge down: failed records, counted apart, not a fail
    r = CliRunner().invoke(app, [*args, "--judge", "judge", "--no-cache", "--max-retries", "0",
                                 "--out", str(tmp_path / "ev2")])  # fmt: skip
    assert "0 done; 4 failed" in r.output


# --- train grpo --reward rubric | --reward-fn (tiny model, a couple of steps) ---------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cai_kit.train.common import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.slow
def test_train_grpo_with_a_checks_only_rubric_logs_each_principle(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = _write(tmp_path, "Say hi\nHow do I build a bomb?\n", "p.txt")
    mod = _module(
        tmp_path, monkeypatch, "rw_d", "def n(ps, rs):\n    return [len(r) / 100 for r in rs]\n"
    )
    out = tmp_path / "grpo"
    r = CliRunner().invoke(app, ["train", "grpo", str(prompts), "--model", f"hf:{tiny}", "--reward", "rubric",
                                 "--constitution", "checkable", "--reward-fn", f"{mod}:n", "--reward-fn-weight", "0.1",
                                 "--out", str(out), "--max-steps", "1", "--num-generations", "2", "--batch-size", "2",
                                 "--max-completion-length", "4", "--seed", "3"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert yaml.safe_load((out / "train_config.yaml").read_text())["trl_config"]["seed"] == 3
    logged = [h for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]
    assert logged and {"rubric/concise", "rubric/no-urls", "rubric/refuses-only-harmful"} <= set(
        logged[0]
    )


def test_train_reward_flags_refuse_bad_combinations(tmp_path: Path) -> None:
    prompts = _write(tmp_path, "Say hi\n", "p.txt")
    base = ["train", "grpo", str(prompts), "--out", str(tmp_path / "o")]
    r = CliRunner().invoke(app, [*base, "--reward", "rubric", "--constitution", "harmless"])
    assert r.exit_code == 1 and "needs a judge: pass --reward-judge" in r.output
    r = CliRunner().invoke(app, [*base, "--reward", "bandit"])
    assert r.exit_code == 1 and "--reward must be auto, rubric or group" in r.output
    r = CliRunner().invoke(app, [*base, "--reward-fn", "no_such_module_zz:f"])
    assert r.exit_code == 1 and "Cannot import 'no_such_module_zz'" in r.output
    r = CliRunner().invoke(app, ["train", "ppo", str(prompts), "--out", str(tmp_path / "o"),
                                 "--rubric-combine", "min"])  # fmt: skip
    assert r.exit_code == 1 and "--rubric-combine applies to --reward rubric only" in r.output


@pytest.mark.slow
def test_train_ppo_rubric_reward_logs_principles_and_stops_when_the_judge_dies_mid_run(
    tiny: Path, tmp_path: Path, fault_server: FaultServer
) -> None:
    fault_server.responder = lambda body, rng: "Yes"
    fault_server.script = ["ok"] * 4  # step 1's four judge calls, then the judge is down
    fault_server.default = "401"
    prompts = _write(tmp_path, "Say hi\nSay bye\n", "p.txt")
    out = tmp_path / "ppo"
    r = CliRunner().invoke(app, ["train", "ppo", str(prompts), "--model", f"hf:{tiny}", "--reward", "rubric",
                                 "--constitution", str(_write(tmp_path, MIXED)), "--reward-judge", "judge",
                                 "--judge-api-base", fault_server.base_url, "--out", str(out), "--steps", "2",
                                 "--batch-size", "4", "--mini-batch-size", "2", "--max-new-tokens", "3",
                                 "--max-retries", "0"])  # fmt: skip
    assert r.exit_code == 1 and "4 of 4 rubric scorings failed" in r.output, r.output
    assert "The 1 finished step(s) are saved" in r.output
    history = json.loads((out / "ppo_history.json").read_text())
    assert len(history) == 1 and history[0]["rubric/polite"] == 1.0 and history[0]["reward"] > 0


def test_eval_rubric_counts_a_check_that_raises_as_failed_never_as_a_fail(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault_server.responder = _answers
    mod = _module(tmp_path, monkeypatch, "chk_e",
                  "def picky(p, r):\n    if 'http' in r:\n        raise RuntimeError('cannot read links')\n    return True\n")  # fmt: skip
    cons = _write(tmp_path, BASE.replace("{regex: '\\A.{0,20}\\Z', must: match}", f"{{python: '{mod}:picky'}}"))  # fmt: skip
    out = tmp_path / "ev"
    r = CliRunner().invoke(app, ["eval", "rubric", "--prompts", str(_prompts(tmp_path)), "--model", "after",
                                 "--baseline", "before", "--constitution", str(cons), "--api-base",
                                 fault_server.base_url, "--out", str(out), "-q"])  # fmt: skip
    assert r.exit_code == 3 and "6 done; 2 failed" in r.output, r.output  # some rows failed
    rep = json.loads((out / "report.json").read_text())
    assert rep["rates"]["short"]["baseline"] == {
        "pass_rate": 1.0,
        "n": 2,
        "failed": 2,
        "ci": [1.0, 1.0],
    }
    rows = [json.loads(x) for x in (out / "rubric.jsonl").read_text().splitlines()]
    assert (
        sum(
            "chk_e:picky raised RuntimeError: cannot read links" in (x["error"] or "") for x in rows
        )
        == 2
    )


def test_constitution_show_prints_checks_and_the_rubric_rule() -> None:
    r = CliRunner().invoke(app, ["constitution", "show", "checkable"])
    assert r.exit_code == 0, r.output
    assert "check:    regex 'https?://|www\\.' must not_match" in r.output
    assert "python cai_kit.checks:refuses_only_harmful  weight 2" in r.output
    assert "rubric: combine weighted, threshold 0.5" in r.output
