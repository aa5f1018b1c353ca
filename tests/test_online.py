"""Online RLAIF: `cai-kit train grpo` with an AI judge (scripted server on loopback) as the reward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tests.fixtures.fault_server as fs
from cai_kit.cli.main import app
from tests.fixtures.fault_server import FaultServer
from tests.fixtures.interrupt import ctrl_c_while_held


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cai_kit.train.common import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.slow
def test_train_grpo_with_a_judge_reward_runs_and_saves(
    tiny: Path, tmp_path: Path, fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        fs,
        "reply_text",
        lambda body: (
            "Yes" if "a" in body["messages"][-1]["content"].split("Response:")[-1][:40] else "No"
        ),
    )
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi\nSay bye\n")
    out = tmp_path / "grpo"
    r = CliRunner().invoke(app, ["train", "grpo", str(prompts), "--model", f"hf:{tiny}", "--reward-judge", "j",
                                 "--judge-api-base", fault_server.base_url, "--out", str(out), "--max-steps", "2",
                                 "--num-generations", "4", "--batch-size", "4", "--max-completion-length", "6"])  # fmt: skip
    assert r.exit_code == 0, r.output
    history = json.loads((out / "log_history.json").read_text())
    assert any("reward" in h for h in history) and fault_server.paid >= 8
    assert (out / "adapter_model.safetensors").is_file()
    for name in ("train_config.yaml", "training_curves.png", "log_history.json"):
        assert (out / name).is_file(), name
    logged = [h for h in history if "loss" in h]
    assert [h["judge_calls"] for h in logged] == [4, 8] and all(
        h["judge_failed"] == 0 for h in logged
    )


# --- the judge as a reward: failures, one engine, d-RLAIF's expected score ----------------


def _scorer(server: FaultServer, **kw):  # type: ignore[no-untyped-def]
    from cai_kit.constitution import load_constitution
    from cai_kit.engine import EngineConfig
    from cai_kit.train.rewards import JudgeReward

    engine = kw.pop("engine", {})
    cfg = EngineConfig(quiet=True, max_retries=0, backoff_base_s=0.01, **engine)
    return JudgeReward("j", load_constitution("harmless"), server.base_url, engine_config=cfg, **kw)


def test_a_dead_judge_is_counted_and_stops_training_instead_of_giving_0_5(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cai_kit.train.rewards import JudgeFailed

    monkeypatch.setattr(fs, "reply_text", lambda body: "Yes")
    scorer = _scorer(fault_server)
    try:
        fault_server.script = ["401"]  # 1 of 20 fails: counted, filled with the others' mean
        scores = scorer(["q"] * 20, [f"response {i}" for i in range(20)])
        assert scorer.last_failed == 1 and scores == [1.0] * 20
        scorer.check_failures(1, 20)  # 5% <= 10%: training goes on
        fault_server.default = "401"
        scores = scorer(["q"] * 4, [f"other {i}" for i in range(4)])
        assert scorer.last_failed == 4 and scorer.failed == 5
        with pytest.raises(JudgeFailed, match=r"4 of 4 judge scorings failed"):
            scorer.check_failures(4, 4)
    finally:
        scorer.close()


def test_one_engine_serves_every_step_so_max_cost_holds_across_steps(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cai_kit.errors import BudgetExceeded

    monkeypatch.setattr(fs, "reply_text", lambda body: "Yes")
    fault_server.report_cost = 0.01
    from cai_kit.engine.pricing import Price

    # p-yes asks for 2 tokens: at $5,000 per million output tokens a call's worst case is the
    # server's real $0.01, so the cap admits exactly 3 calls
    price = Price(0.0, 5000.0)
    scorer = _scorer(fault_server, engine={"max_cost": 0.035, "concurrency": 1, "price": price})
    try:
        scorer(["q", "q"], ["a", "b"])
        assert scorer.engine is not None and scorer.engine.stats.calls == 2
        with pytest.raises(BudgetExceeded):
            for step in range(5):  # each step is a new call: the budget must still add up
                scorer(["q", "q"], [f"c{step}", f"d{step}"])
        assert scorer.engine.stats.cost <= 0.035 + 1e-9 and fault_server.paid == 3
    finally:
        scorer.close()


def _top_logprobs(pairs: list[tuple[str, float]]):  # type: ignore[no-untyped-def]
    import math

    top = [{"token": t, "logprob": math.log(p)} for t, p in pairs]
    return lambda body, rng: [
        {"token": pairs[0][0], "logprob": top[0]["logprob"], "top_logprobs": top}
    ]


def test_expected_score_reward_is_the_mean_rating_under_the_judges_logprobs(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fs, "reply_text", lambda body: "7")
    fault_server.logprobs = _top_logprobs([("7", 0.5), ("9", 0.3), ("10", 0.1), (".", 0.1)])
    scorer = _scorer(fault_server, reward="expected-score")
    try:
        # E = (7*.5 + 9*.3 + 10*.1) / .9 = 8.0 ; reward = (8 - 1) / 9
        assert scorer(["q"], ["r"]) == [pytest.approx(7 / 9)]
        assert (
            "1 (breaks the principles badly) to 10"
            in fault_server.bodies[-1]["messages"][-1]["content"]
        )
        fault_server.logprobs = None  # no log-probs: the number itself
        assert scorer(["q"], ["r2"]) == [pytest.approx(6 / 9)]
        monkeypatch.setattr(fs, "reply_text", lambda body: "I'd say great")
        scorer(["q"], ["r3"])
        assert scorer.last_failed == 1  # unparseable: a failure, not a middling score
    finally:
        scorer.close()


def test_p_yes_reward_from_logprobs_and_unparseable_is_a_failure(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fs, "reply_text", lambda body: "Yes")
    fault_server.logprobs = _top_logprobs([("Yes", 0.6), (" No", 0.2), ("Maybe", 0.2)])
    scorer = _scorer(fault_server)
    try:
        assert scorer(["q"], ["r"]) == [pytest.approx(0.75)]
        fault_server.logprobs = None
        monkeypatch.setattr(fs, "reply_text", lambda body: "Hmm")
        scorer(["q"], ["r2"])
        assert scorer.last_failed == 1
    finally:
        scorer.close()


@pytest.mark.slow
def test_train_grpo_stops_on_a_dead_judge_and_takes_the_engine_flags(
    tiny: Path, tmp_path: Path, fault_server: FaultServer
) -> None:
    fault_server.default = "500"
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi\nSay bye\n")
    r = CliRunner().invoke(app, ["train", "grpo", str(prompts), "--model", f"hf:{tiny}", "--reward-judge", "j",
                                 "--judge-api-base", fault_server.base_url, "--out", str(tmp_path / "g"), "--max-steps", "2",
                                 "--num-generations", "4", "--batch-size", "4", "--max-completion-length", "4",
                                 "--max-retries", "0", "--concurrency", "2", "--no-cache"])  # fmt: skip
    assert r.exit_code == 1 and "4 of 4 judge scorings failed" in r.output, r.output
    assert fault_server.requests == 4  # --max-retries 0 reached the engine


def _two_ranks_of_grpo(
    tiny: Path, tmp_path: Path, judge_url: str, *extra: str
) -> tuple[int, str, Path]:
    """`train grpo` as 2 processes over torchrun (gloo) on the prompts "Say hi" and "Say bye":
    each step, one rank scores the 4 completions of one prompt and the other rank the other's.
    (exit code, output, OUT); killed with its ranks after 5 minutes (ranks out of step hang)."""
    import sys

    from tests.fixtures.processes import run_group

    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi\nSay bye\n")
    out = tmp_path / "g"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "cai_kit", "train", "grpo",
           str(prompts), "--model", f"hf:{tiny}", "--reward-judge", "j", "--judge-api-base", judge_url,
           "--out", str(out), "--num-generations", "4", "--batch-size", "4", "--max-completion-length", "4",
           "--concurrency", "1", "--no-cache", *extra]  # fmt: skip
    code, output = run_group(cmd, timeout=300)
    return code, output, out


def _bye(body: dict) -> bool:
    return "Say bye" in body["messages"][-1]["content"]


@pytest.mark.slow
def test_grpo_as_two_processes_shares_max_cost_stops_together_and_saves_finished_steps(
    tiny: Path, tmp_path: Path, fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of 2 ranks may spend half the cap ($0.045). Only answers to "Say bye" cost ($0.01 a
    call, $0.04 a step), so the rank that scored them in step 1 reaches its share in step 2
    while the other has spent nothing: both stop there together (the old code, stopping one
    rank alone, left the other waiting forever in the next collective); the finished step is
    saved (rank 0 writes)."""
    monkeypatch.setattr(fs, "reply_text", lambda body: "Yes")
    fault_server.report_cost = lambda body: 0.01 if _bye(body) else 0.0
    # --price 0,5000: a 2-token call's worst case is $0.01, so a rank at $0.04 may not call again
    code, output, out = _two_ranks_of_grpo(tiny, tmp_path, fault_server.base_url, "--max-steps", "3",
                                           "--max-cost", "0.09", "--price", "0,5000")  # fmt: skip
    assert code != 0 and "1 finished step(s) are saved" in output, output[-3000:]
    assert "another process reached its share of --max-cost" in output  # the rank that could go on
    assert sum(0.01 for b in fault_server.bodies if _bye(b)) <= 0.09 + 1e-9  # the run's cap
    assert (out / "adapter_config.json").is_file() and (out / "log_history.json").is_file()
    # re-run with a higher cap: both ranks resume from checkpoint-1 (each its own RNG file)
    code, output, out = _two_ranks_of_grpo(tiny, tmp_path, fault_server.base_url, "--max-steps", "3",
                                           "--max-cost", "1", "--price", "0,5000")  # fmt: skip
    assert code == 0 and "training continues from step 2 of 3" in output, output[-3000:]
    logged = [h for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 3] and not list(out.glob("checkpoint-*"))


@pytest.mark.slow
def test_grpo_as_two_processes_counts_judge_failures_over_all_ranks_and_stops_together(
    tiny: Path, tmp_path: Path, fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The judge cannot parse some answers to "Say bye" (one rank's share of a step): 0 of them
    in step 1, 2 in step 2, all 4 from step 3 on. With --max-judge-failures 0.4 the step's
    share over both ranks decides (2 of 8 go on, 4 of 8 stop), not one rank's (2 of 4 would stop
    that rank alone and hang the other), and judge_failed in the log is the total."""
    byes = []

    def reply(body: dict) -> str:
        if not _bye(body):
            return "Yes"
        byes.append(1)
        return "Hmm" if len(byes) in (5, 6) or len(byes) > 8 else "Yes"

    monkeypatch.setattr(fs, "reply_text", reply)
    code, output, out = _two_ranks_of_grpo(tiny, tmp_path, fault_server.base_url, "--max-steps", "4",
                                           "--max-judge-failures", "0.4", "--max-retries", "0")  # fmt: skip
    assert code != 0 and "4 of 8 judge scorings failed" in output, output[-3000:]
    assert "2 finished step(s) are saved" in output
    logged = [h for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]
    assert [h["judge_failed"] for h in logged] == [0, 2]  # both ranks, not rank 0's
    assert [h["judge_calls"] for h in logged] == [
        8,
        16,
    ]  # answered calls, both ranks, the run so far


def test_a_grpo_batch_that_splits_a_group_is_one_sentence_naming_both_flags(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi\n")
    r = CliRunner().invoke(app, ["train", "grpo", str(prompts), "--reward-judge", "j", "--judge-api-base",
                                 fault_server.base_url, "--out", str(tmp_path / "g"), "--batch-size", "3",
                                 "--num-generations", "4"])  # fmt: skip
    assert r.exit_code == 1, r.output
    assert "--batch-size 3 is not a multiple of --num-generations 4" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert fault_server.requests == 0  # nothing was loaded or judged


@pytest.mark.slow
def test_grpo_stopped_by_max_cost_continues_from_its_checkpoint_when_re_run(
    tiny: Path, tmp_path: Path, fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TRL's GRPO: the stop saves OUT/checkpoint-1; the re-run with a higher cap resumes from
    it, trains only steps 2 and 3, and the finished run keeps no checkpoint behind."""
    monkeypatch.setattr(fs, "reply_text", lambda body: "Yes")
    fault_server.report_cost = 0.01  # 4 completions, $0.04 a step: --max-cost 0.055 allows 5
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi\nSay bye\n")
    out = tmp_path / "g"
    base = ["train", "grpo", str(prompts), "--model", f"hf:{tiny}", "--reward-judge", "j",
            "--judge-api-base", fault_server.base_url, "--out", str(out), "--max-steps", "3",
            "--num-generations", "4", "--batch-size", "4", "--max-completion-length", "4",
            "--price", "0,5000", "--concurrency", "1"]  # fmt: skip
    r = CliRunner().invoke(app, [*base, "--max-cost", "0.055"])
    assert r.exit_code == 1 and "1 finished step(s) are saved" in r.output, r.output
    assert "with a higher --max-cost: training continues from step 2 of 3" in r.output, r.output
    assert (out / "checkpoint-1").is_dir() and fault_server.paid == 5

    r = CliRunner().invoke(app, [*base, "--max-cost", "1"])
    assert r.exit_code == 0, r.output
    assert "training continues from step 2 of 3" in r.output
    logged = [h for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 3]
    assert fault_server.paid == 12  # steps 2 and 3 only (the stopped step's answer: cached)
    assert not list(out.glob("checkpoint-*"))


@pytest.mark.slow
def test_ctrl_c_stops_grpo_at_the_next_steps_start_and_a_re_run_continues(
    tiny: Path, tmp_path: Path, fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT to a real `cai-kit train grpo` while step 2 waits on the judge: the step finishes,
    checkpoint-2 is saved, exit 130; the same command trains steps 3-4 only, none paid twice.
    (Before: TRL's loop got KeyboardInterrupt mid-step and saved nothing.)"""
    import subprocess
    import sys

    monkeypatch.setattr(fs, "reply_text", lambda body: "Yes")
    fault_server.report_cost = 0.01
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi\nSay bye\n")
    out = tmp_path / "g"
    cmd = [sys.executable, "-m", "cai_kit", "train", "grpo", str(prompts), "--model", f"hf:{tiny}",
           "--reward-judge", "j", "--judge-api-base", fault_server.base_url, "--out", str(out),
           "--max-steps", "4", "--num-generations", "4", "--batch-size", "4",
           "--max-completion-length", "4", "--price", "0,5000", "--concurrency", "1"]  # fmt: skip
    code, output = ctrl_c_while_held(cmd, fault_server, paid=6)  # in step 2
    assert code == 130, output[-3000:]
    assert "Interrupted (Ctrl-C) at the end of a step. The 2 finished step(s) are saved" in output
    assert "Re-run the same command: training continues from step 3 of 4." in output
    assert (out / "checkpoint-2").is_dir() and fault_server.paid == 8

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "training continues from step 3 of 4" in again.stdout + again.stderr
    logged = [h for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 3, 4]
    assert fault_server.paid == 16  # 4 steps x 4 scores, none paid twice
    assert not list(out.glob("checkpoint-*"))
