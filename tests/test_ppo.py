"""Our PPO: GAE and the KL controller against hand-computed values, and real learning."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import tests.fixtures.fault_server as fs
from cai_kit.cli.main import app
from cai_kit.train.ppo_trainer import AdaptiveKLController, PPOConfig, PPOTrainer, compute_gae
from tests.fixtures.fault_server import FaultServer
from tests.test_train import tensorboard_scalars, trackio_metrics


def test_gae_matches_hand_computation() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 9.9]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last position is padding
    adv, ret = compute_gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # t=2: delta = 1 + 0.9*0 - 0.3 = 0.7                 A2 = 0.7
    # t=1: delta = 0 + 0.9*0.3 - 0.4 = -0.13             A1 = -0.13 + 0.45*0.7 = 0.185
    # t=0: delta = 0 + 0.9*0.4 - 0.5 = -0.14             A0 = -0.14 + 0.45*0.185 = -0.05675
    assert torch.allclose(adv, torch.tensor([[-0.05675, 0.185, 0.7, 0.0]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[0.44325, 0.585, 1.0, 0.0]]), atol=1e-6)


def test_adaptive_kl_controller_moves_toward_the_target() -> None:
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(current_kl=12.0, n_steps=1000)  # error clipped to +0.2: 0.1 * (1 + 0.2 * 0.1)
    assert ctl.value == pytest.approx(0.102)
    ctl.update(current_kl=3.0, n_steps=1000)  # error -0.5 clipped to -0.2
    assert ctl.value == pytest.approx(0.102 * 0.98)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cai_kit.train.common import tiny_model

    # a larger init range gives the random policy real preferences (a near-uniform 49k-way
    # softmax gives PPO almost no signal in a few steps)
    return tiny_model(
        tmp_path_factory.mktemp("tiny") / "model", hidden=32, layers=2, init_range=0.5
    )


@pytest.mark.slow
def test_ppo_raises_a_toy_reward_while_kl_stays_bounded(tiny: Path) -> None:
    from transformers import AutoModelForCausalLM

    from cai_kit.train.common import load_tokenizer

    tok = load_tokenizer(str(tiny))
    half = len(tok) // 2  # reward = share of response tokens from the lower half of the vocabulary
    cfg = PPOConfig(learning_rate=1e-3, batch_size=32, mini_batch_size=16, ppo_epochs=4, max_new_tokens=2,
                    init_kl_coef=0.01, target_kl=20.0, seed=0)  # fmt: skip
    trainer = PPOTrainer(cfg, AutoModelForCausalLM.from_pretrained(tiny), tok)
    queries = [torch.tensor(tok("Question:")["input_ids"])] * cfg.batch_size
    rewards_seen = []
    for _ in range(15):
        responses = trainer.generate(queries)
        stats = trainer.step(
            queries, responses, [float((r < half).float().mean()) for r in responses]
        )
        rewards_seen.append(stats["reward"])
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    first, last = sum(rewards_seen[:3]) / 3, sum(rewards_seen[-3:]) / 3
    assert last > first + 0.08, rewards_seen
    assert stats["kl"] < 30.0  # bounded: the KL penalty holds the policy near the reference
    for key in ("entropy", "clipfrac", "value_loss", "approx_kl", "kl_coef"):
        assert key in stats


@pytest.mark.slow
def test_a_step_raises_the_likelihood_of_rewarded_responses_only(tiny: Path) -> None:
    from transformers import AutoModelForCausalLM

    from cai_kit.train.common import load_tokenizer
    from cai_kit.train.ppo_trainer import token_logprobs

    tok = load_tokenizer(str(tiny))
    trainer = PPOTrainer(
        PPOConfig(batch_size=16, mini_batch_size=16, ppo_epochs=1, max_new_tokens=6),
        AutoModelForCausalLM.from_pretrained(tiny),
        tok,
    )
    queries = [torch.tensor(tok(f"Q{i}")["input_ids"]) for i in range(16)]
    responses = trainer.generate(queries)
    ids, att, mask = trainer._batch(queries, responses)

    def seq_logp() -> torch.Tensor:
        trainer.policy.eval()
        with torch.no_grad():
            return (token_logprobs(trainer.policy(ids, att)[0], ids) * mask).sum(1)

    before = seq_logp()
    trainer.step(queries, responses, [1.0] * 8 + [0.0] * 8)  # the user's own reward numbers
    delta = seq_logp() - before
    assert delta[:8].mean() > 0 > delta[8:].mean()


def _perturb_lora(trainer: PPOTrainer, scale: float = 0.5) -> None:
    """LoRA B starts at zero (adapter == no adapter): move it so the adapter changes outputs."""
    with torch.no_grad():
        for name, p in trainer._lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, scale)


@pytest.mark.slow
def test_ppo_with_lora_uses_the_adapter_free_base_as_reference(tiny: Path) -> None:
    from transformers import AutoModelForCausalLM

    from cai_kit.train.common import load_tokenizer, lora_config
    from cai_kit.train.ppo_trainer import token_logprobs

    tok = load_tokenizer(str(tiny))
    trainer = PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=2, max_new_tokens=6, ppo_epochs=1, learning_rate=0.0),
                         AutoModelForCausalLM.from_pretrained(tiny), tok, peft_config=lora_config(r=4, alpha=8))  # fmt: skip
    assert trainer.ref_model is None
    _perturb_lora(trainer)  # now policy != base: a reference that kept the adapter would show KL 0
    queries = [torch.tensor(tok("Hi")["input_ids"])] * 4
    responses = trainer.generate(queries)
    ids, att, mask = trainer._batch(queries, responses)
    base = AutoModelForCausalLM.from_pretrained(tiny).eval()
    with torch.no_grad():
        base_logp = token_logprobs(base(input_ids=ids, attention_mask=att).logits, ids)
    ref_logp = trainer.reference_logprobs(ids, att)
    assert torch.allclose(ref_logp * mask, base_logp * mask, atol=1e-5)
    policy_logp, _ = trainer.policy_logprobs(ids, att)
    assert ((policy_logp - base_logp).abs() * mask).max() > 0.1
    stats = trainer.step(queries, responses, [1.0, 0.0, 1.0, 0.0])
    expected_kl = float(((policy_logp - base_logp) * mask).sum(1).mean())
    assert stats["kl"] == pytest.approx(expected_kl, rel=1e-4) and abs(stats["kl"]) > 0.1


@pytest.mark.slow
def test_first_minibatch_ratio_is_one_with_zero_lr_despite_lora_dropout(tiny: Path) -> None:
    from transformers import AutoModelForCausalLM

    from cai_kit.train.common import load_tokenizer, lora_config

    tok = load_tokenizer(str(tiny))
    cfg = PPOConfig(
        batch_size=8, mini_batch_size=4, ppo_epochs=1, max_new_tokens=6, learning_rate=0.0
    )
    trainer = PPOTrainer(cfg, AutoModelForCausalLM.from_pretrained(tiny), tok,
                         peft_config=lora_config(r=4, alpha=8, dropout=0.3))  # fmt: skip
    _perturb_lora(trainer)  # with B == 0, dropout before A could not show
    queries = [torch.tensor(tok(f"Q{i}")["input_ids"]) for i in range(8)]
    stats = trainer.step(queries, trainer.generate(queries), [1.0, 0.0] * 4)
    assert stats["clipfrac"] == 0.0
    assert stats["approx_kl"] < 1e-10  # ratio == 1 on every token


@pytest.mark.slow
def test_logprobs_use_the_sampling_temperature(tiny: Path) -> None:
    from transformers import AutoModelForCausalLM

    from cai_kit.train.common import load_tokenizer, lora_config

    tok = load_tokenizer(str(tiny))
    cfg = PPOConfig(batch_size=1, mini_batch_size=1, max_new_tokens=5, temperature=0.7)
    trainer = PPOTrainer(
        cfg, AutoModelForCausalLM.from_pretrained(tiny), tok, peft_config=lora_config(r=4, alpha=8)
    )
    query = torch.tensor(tok("Tell me")["input_ids"])
    out = trainer._lm.generate(input_ids=query[None], attention_mask=torch.ones_like(query)[None], do_sample=True,
                               temperature=0.7, top_k=0, top_p=1.0, max_new_tokens=5, min_new_tokens=5,
                               output_scores=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id)  # fmt: skip
    response = out.sequences[0, len(query) :]
    # what the sampler drew from: the processed scores (logits / 0.7)
    sampled = torch.stack(
        [torch.log_softmax(s[0], -1)[t] for s, t in zip(out.scores, response, strict=True)]
    )
    ids, att, _ = trainer._batch([query], [response])
    n = len(query) - 1
    policy_logp, _ = trainer.policy_logprobs(ids, att)
    assert torch.allclose(policy_logp[0, n : n + 5], sampled, atol=1e-4)
    assert torch.allclose(trainer.reference_logprobs(ids, att)[0, n : n + 5], sampled, atol=1e-4)


@pytest.fixture(scope="module")
def plain_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cai_kit.train.common import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.slow
def test_train_ppo_cli_with_a_judge_as_the_reward(
    plain_tiny: Path,
    tmp_path: Path,
    fault_server: FaultServer,
    monkeypatch: pytest.MonkeyPatch,
    trackio_project: str,
) -> None:
    answers = iter(["Yes", "No"] * 100)
    monkeypatch.setattr(fs, "reply_text", lambda body: next(answers))
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi\nSay bye\n")
    out = tmp_path / "ppo"
    threads = set(threading.enumerate())
    # priced (--price): its judge_cost is a number; an unpriced judge's is NaN, which is not plotted
    r = CliRunner().invoke(app, ["train", "ppo", str(prompts), "--model", f"hf:{plain_tiny}", "--reward-judge", "j",
                                 "--judge-api-base", fault_server.base_url, "--out", str(out), "--steps", "2",
                                 "--batch-size", "4", "--mini-batch-size", "2", "--max-new-tokens", "4",
                                 "--report-to", "trackio,tensorboard",
                                 "--price", "0,1000"])  # fmt: skip
    assert r.exit_code == 0, r.output
    history = json.loads((out / "ppo_history.json").read_text())
    assert len(history) == 2 and history[0]["reward"] == pytest.approx(0.5)  # 2 Yes + 2 No
    assert fault_server.paid == 8 and (out / "value_head.pt").is_file()
    # --report-to tensorboard: every step's statistics, read back from OUT/runs/
    scalars = tensorboard_scalars(out)
    for key in (
        "reward",
        "kl",
        "entropy",
        "clipfrac",
        "policy_loss",
        "judge_failed",
        "judge_calls",
        "judge_cost",
    ):
        assert [s for s, _ in scalars[key]] == [1, 2], key
        assert [v for _, v in scalars[key]] == pytest.approx([h[key] for h in history], abs=1e-6), (
            key
        )
    assert [v for _, v in scalars["judge_calls"]] == [4, 8]  # the run so far
    # ... and to trackio's local store (our Tracker): one run, the same steps and values
    rows = trackio_metrics(trackio_project)
    assert len({run for run, _, _ in rows}) == 1
    assert [step for _, step, _ in rows] == [1, 2]
    for key in ("reward", "kl", "policy_loss", "judge_calls", "judge_cost"):
        assert [m[key] for _, _, m in rows] == pytest.approx([h[key] for h in history], abs=1e-6)
    assert set(threading.enumerate()) <= threads  # trackio's sender/monitor threads ended
    for name in ("train_config.yaml", "training_curves.png", "log_history.json"):
        assert (out / name).is_file(), name
    assert [h["step"] for h in json.loads((out / "log_history.json").read_text())] == [1, 2]
    r = CliRunner().invoke(app, ["train", "ppo", str(prompts), "--out", str(out)])
    assert r.exit_code == 1 and "exactly one reward source" in r.output


def test_a_judge_without_a_key_names_the_judge_api_base_flag_that_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    for var in ("OPENAI_API_KEY", "CAI_KIT_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi\n")
    helps = {}
    for kind in ("ppo", "grpo"):
        helps[kind] = (
            CliRunner().invoke(app, ["train", kind, "--help"], env={"COLUMNS": "300"}).output
        )
        for judge in ("openai/gpt-4o-mini", "some-name"):
            r = CliRunner().invoke(app, ["train", kind, str(prompts), "--reward-judge", judge,
                                         "--out", str(tmp_path / "o")])  # fmt: skip
            assert r.exit_code == 1 and "--judge-api-base" in r.output, r.output
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", r.output):
                assert flag in helps[kind], (flag, r.output)


@pytest.mark.slow
def test_train_ppo_stops_on_a_dead_judge_or_max_cost_and_keeps_finished_steps(
    plain_tiny: Path, tmp_path: Path, fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi\nSay bye\n")
    base = ["train", "ppo", str(prompts), "--model", f"hf:{plain_tiny}", "--reward-judge", "j",
            "--judge-api-base", fault_server.base_url, "--steps", "3", "--batch-size", "4",
            "--mini-batch-size", "2", "--max-new-tokens", "3", "--max-retries", "0"]  # fmt: skip
    fault_server.default = "401"  # a dead judge (bad key): not a constant reward of 0.5
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "dead")])
    assert r.exit_code == 1 and "4 of 4 judge scorings failed" in r.output, r.output
    assert not (tmp_path / "dead" / "ppo_history.json").exists()  # no step was made

    fault_server.default = "ok"
    monkeypatch.setattr(fs, "reply_text", lambda body: "Yes")
    fault_server.report_cost = 0.01  # $0.04 a step: --max-cost 0.055 allows one step, not two
    # (--price 0,5000: a 2-token judge call's worst case is the server's real $0.01)
    out = tmp_path / "capped"
    r = CliRunner().invoke(
        app,
        [
            *base,
            "--out",
            str(out),
            "--max-cost",
            "0.055",
            "--price",
            "0,5000",
            "--concurrency",
            "1",
            "--no-cache",
        ],
    )
    assert (
        r.exit_code == 1 and "max-cost" in r.output and "1 finished step(s) are saved" in r.output
    ), r.output
    history = json.loads((out / "ppo_history.json").read_text())
    assert len(history) == 1 and history[0]["judge_failed"] == 0.0
    assert fault_server.paid == 5 and (out / "value_head.pt").is_file()


def _two_ranks_of_ppo(
    tiny: Path, tmp_path: Path, judge_url: str, *extra: str, prompts_text: str = "Say hi\nSay bye\n"
) -> tuple[int, str, Path]:
    """`train ppo` as 2 processes over torchrun (gloo), rank 0 on "Say hi", rank 1 on "Say bye",
    judged by the scripted server: (exit code, output, OUT). Killed with its workers if it
    takes over 3 minutes (ranks out of step wait forever)."""
    import sys

    from tests.fixtures.processes import run_group

    prompts = tmp_path / "p.txt"
    prompts.write_text(prompts_text)
    out = tmp_path / "ppo"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "cai_kit", "train", "ppo",
           str(prompts), "--model", f"hf:{tiny}", "--reward-judge", "j", "--judge-api-base", judge_url,
           "--out", str(out), "--batch-size", "4", "--mini-batch-size", "2", "--no-cache", *extra]  # fmt: skip
    code, output = run_group(cmd, timeout=180)
    return code, output, out


@pytest.mark.slow
def test_ppo_as_two_processes_splits_prompts_reduces_stats_and_rank_0_saves(
    plain_tiny: Path, tmp_path: Path, fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the judge likes answers to "Say hi" only: rank 0 gets "Say hi", rank 1 "Say bye"
    monkeypatch.setattr(
        fs,
        "reply_text",
        lambda body: "Yes" if "Say hi" in body["messages"][-1]["content"] else "No",
    )
    code, output, out = _two_ranks_of_ppo(plain_tiny, tmp_path, fault_server.base_url,
                                          "--steps", "2", "--max-new-tokens", "4")  # fmt: skip
    assert code == 0, output[-3000:]
    assert output.count("Saved to") == 1 and output.count("step 1/2") == 1
    history = json.loads((out / "ppo_history.json").read_text())
    # every rank's own prompt: 4 rollouts of "Say hi" (reward 1) + 4 of "Say bye" (reward 0)
    assert [h["reward"] for h in history] == [pytest.approx(0.5)] * 2
    assert all(h["rollouts"] == 8 for h in history)
    judged = [json.dumps(b["messages"]) for b in fault_server.bodies]
    assert len(judged) == 16 and sum("Say hi" in j for j in judged) == 8
    assert (out / "value_head.pt").is_file()


@pytest.mark.slow
def test_ppo_as_two_processes_shares_max_cost_and_stops_every_rank_at_the_same_step(
    plain_tiny: Path, tmp_path: Path, fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--max-cost is one cap for the run, not one per process: each of N processes may spend
    cap/N. A rank that reaches its share stops, and so does every other rank at that step
    (else they would wait forever in the next collective); the finished steps are saved, and
    the same command with a higher cap continues from them on both ranks."""
    monkeypatch.setattr(fs, "reply_text", lambda body: "Yes")
    # rank 1 ("Say bye") is judged at $0.02 a call, rank 0 ("Say hi") at $0.01: rank 1 reaches
    # its $0.10 share in step 2 (--price 0,10000 makes a 2-token call's worst case $0.02)
    fault_server.report_cost = lambda body: 0.02 if "Say bye" in json.dumps(body) else 0.01
    # (the old code hung here: a rank that stopped alone left the other in the next collective)
    flags = ["--steps", "3", "--max-new-tokens", "3", "--max-cost", "0.2", "--price", "0,10000",
             "--concurrency", "1"]  # fmt: skip
    code, output, out = _two_ranks_of_ppo(plain_tiny, tmp_path, fault_server.base_url, *flags)
    assert code != 0 and "1 finished step(s) are saved" in output, output[-3000:]
    spent = sum(0.02 if "Say bye" in json.dumps(b) else 0.01 for b in fault_server.bodies)
    assert spent <= 0.2 + 1e-9  # the run's cap, all ranks together
    assert len(json.loads((out / "ppo_history.json").read_text())) == 1
    # re-run with a higher cap: both ranks load their own state and make steps 2 and 3 only
    paid = len(fault_server.bodies)
    flags[flags.index("--max-cost") + 1] = "1"
    code, output, out = _two_ranks_of_ppo(plain_tiny, tmp_path, fault_server.base_url, *flags)
    assert code == 0 and "training continues from step 2 of 3" in output, output[-3000:]
    assert len(json.loads((out / "ppo_history.json").read_text())) == 3
    assert len(fault_server.bodies) - paid == 2 * 8  # 2 steps x 2 ranks x 4 rollouts


@pytest.mark.slow
def test_ppo_with_fewer_prompts_than_processes_is_refused_by_every_rank(
    plain_tiny: Path, tmp_path: Path, fault_server: FaultServer
) -> None:
    """Every rank refuses alike: the rank that had a prompt used to run on alone until torchrun
    stopped it (rank 1 refused; rank 0 went to its first collective)."""
    code, output, _ = _two_ranks_of_ppo(plain_tiny, tmp_path, fault_server.base_url, "--steps", "1",
                                        prompts_text="Say hi\n")  # fmt: skip
    assert code == 1, output[-3000:]
    assert (
        output.count("1 prompt(s) for 2 processes: give at least one prompt per process.") == 2
    ), output[-3000:]


@pytest.mark.slow
def test_ppo_stopped_by_max_cost_continues_from_its_last_step_when_re_run(
    plain_tiny: Path, tmp_path: Path, fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop message promises that a re-run continues: it trains only the remaining steps,
    draws the stopped step again as an uninterrupted run would (its paid judge call comes from
    the cache), and ends with the same statistics as a run that was never stopped."""
    monkeypatch.setattr(fs, "reply_text", lambda body: "Yes")
    fault_server.report_cost = 0.01  # 4 calls, $0.04 a step: --max-cost 0.055 allows 5 calls
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi\nSay bye\n")
    out = tmp_path / "capped"
    base = ["train", "ppo", str(prompts), "--model", f"hf:{plain_tiny}", "--reward-judge", "j",
            "--judge-api-base", fault_server.base_url, "--steps", "3", "--batch-size", "4",
            "--mini-batch-size", "2", "--max-new-tokens", "3", "--price", "0,5000",
            "--concurrency", "1"]  # fmt: skip
    r = CliRunner().invoke(app, [*base, "--out", str(out), "--max-cost", "0.055"])
    assert r.exit_code == 1 and "1 finished step(s) are saved" in r.output, r.output
    assert "with a higher --max-cost: training continues from step 2 of 3" in r.output, r.output
    assert fault_server.paid == 5  # step 1 and one call of step 2
    r = CliRunner().invoke(app, [*base, "--out", str(out), "--max-cost", "1", "--lr", "1e-3"])
    assert r.exit_code == 1 and "with other settings (learning_rate)" in r.output, r.output

    r = CliRunner().invoke(app, [*base, "--out", str(out), "--max-cost", "1"])
    assert r.exit_code == 0, r.output
    assert "1 step(s) were finished before; training continues from step 2 of 3" in r.output
    resumed = json.loads((out / "ppo_history.json").read_text())
    assert len(resumed) == 3 and fault_server.paid == 12  # 3 steps x 4 calls, none paid twice
    # the run's judge totals carry across the stop: every call the provider billed, once
    assert resumed[-1]["judge_calls"] == 12 and resumed[-1]["judge_cost"] == pytest.approx(0.12)
    assert [h["step"] for h in json.loads((out / "log_history.json").read_text())] == [1, 2, 3]
    assert not (out / "resume_state").exists()  # the run reached its last step

    whole = tmp_path / "whole"
    r = CliRunner().invoke(app, [*base, "--out", str(whole), "--no-cache"])
    assert r.exit_code == 0, r.output
    straight = json.loads((whole / "ppo_history.json").read_text())
    for key in ("kl", "policy_loss", "value_loss", "kl_coef", "response_length"):
        assert [h[key] for h in resumed] == pytest.approx([h[key] for h in straight]), key
