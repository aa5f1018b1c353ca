"""Our PPO: GAE and the KL controller against hand-computed values, and real learning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import tests.fixtures.fault_server as fs
from cai_kit.cli.main import app
from cai_kit.train.ppo import AdaptiveKLController, PPOConfig, PPOTrainer, compute_gae
from tests.fixtures.fault_server import FaultServer


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
    from cai_kit.train.ppo import token_logprobs

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


@pytest.mark.slow
def test_ppo_with_lora_uses_the_adapter_free_base_as_reference(tiny: Path) -> None:
    from transformers import AutoModelForCausalLM

    from cai_kit.train.common import load_tokenizer, lora_config

    tok = load_tokenizer(str(tiny))
    trainer = PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=2, max_new_tokens=6, ppo_epochs=1),
                         AutoModelForCausalLM.from_pretrained(tiny), tok, peft_config=lora_config(r=4, alpha=8))  # fmt: skip
    assert trainer.ref_model is None
    queries = [torch.tensor(tok("Hi")["input_ids"])] * 4
    stats = trainer.step(queries, trainer.generate(queries), [1.0, 0.0, 1.0, 0.0])
    assert stats["kl"] == pytest.approx(0.0, abs=1e-4)  # before the update, policy == reference


@pytest.fixture(scope="module")
def plain_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cai_kit.train.common import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.slow
def test_train_ppo_cli_with_a_judge_as_the_reward(
    plain_tiny: Path, tmp_path: Path, fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter(["Yes", "No"] * 100)
    monkeypatch.setattr(fs, "reply_text", lambda body: next(answers))
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi\nSay bye\n")
    out = tmp_path / "ppo"
    r = CliRunner().invoke(app, ["train", "ppo", str(prompts), "--model", f"hf:{plain_tiny}", "--reward-judge", "j",
                                 "--judge-api-base", fault_server.base_url, "--out", str(out), "--steps", "2",
                                 "--batch-size", "4", "--mini-batch-size", "2", "--max-new-tokens", "4"])  # fmt: skip
    assert r.exit_code == 0, r.output
    history = json.loads((out / "ppo_history.json").read_text())
    assert len(history) == 2 and history[0]["reward"] == pytest.approx(0.5)  # 2 Yes + 2 No
    assert fault_server.paid == 8 and (out / "value_head.pt").is_file()
    r = CliRunner().invoke(app, ["train", "ppo", str(prompts), "--out", str(out)])
    assert r.exit_code == 1 and "exactly one reward source" in r.output
