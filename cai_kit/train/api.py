"""The RL trainers from plain Python: the calls `cai-kit train ppo|online-dpo|grpo` make.

    from cai_kit import rewards, train
    reward = rewards.rubric("harmless", model="openai/gpt-4o-mini")
    path, history = train.online_dpo(["Say hi", "Say bye"], reward, "out/odpo", model="hf:...", steps=2)

`prompts` is a list of strings or a prompt file (as for revise); `reward` a `RewardSource`
(`cai_kit.rewards`), a plain `(prompts, responses) -> list[float]` function, or for online
DPO also a pairwise judge (`rewards.pairwise`). Each writes OUT as its command does (the
model, log_history.json, train_config.yaml, training_curves.png), continues a run a stop left
there, closes the reward when it ends, and returns the output path and the history.
Progress lines go to `say` (print; rank 0 only under torchrun).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from cai_kit.train.rewards import RewardSource, as_reward_source

Prompts = str | Path | list[str]


class TrainResult(NamedTuple):
    """Where the model was saved, and one dict of statistics per logged step."""

    path: Path
    history: list[dict[str, Any]]


def read_history(path: Path) -> list[dict[str, Any]]:
    """The steps a run logged (its log_history.json; none under torchrun's other ranks)."""
    logged = path / "log_history.json"
    return json.loads(logged.read_text()) if logged.is_file() else []


def prompt_texts(prompts: Prompts, limit: int | None = None) -> list[str]:
    """A list of strings as it is (up to `limit`), or the prompts of a prompt file."""
    from cai_kit.prompts import load_prompts

    if isinstance(prompts, list):
        return list(prompts[:limit] if limit is not None else prompts)
    return [r.prompt_text for r in load_prompts(str(prompts), limit=limit).records]


def _options(prompts: Prompts, model: str, **values: Any) -> dict[str, Any]:
    """What train_config.yaml records of the call."""
    given = f"{len(prompts)} prompts" if isinstance(prompts, list) else str(prompts)
    return {"prompts": given, "model": model, **values}


def _ppo_line(steps: int) -> Callable[[int, dict[str, float]], str]:
    def line(step: int, s: dict[str, float]) -> str:
        failed = f"  judge_failed {s['judge_failed']:.0f}" if "judge_failed" in s else ""
        return (f"step {step + 1}/{steps}: reward {s['reward']:.3f}  kl {s['kl']:.3f}  entropy {s['entropy']:.2f}  "
                f"clipfrac {s['clipfrac']:.3f}  value_loss {s['value_loss']:.4f}{failed}")  # fmt: skip

    return line


def _online_dpo_line(steps: int) -> Callable[[int, dict[str, float]], str]:
    def line(step: int, s: dict[str, float]) -> str:
        loss = f"loss {s['loss']:.4f}  " if "loss" in s else "no decisive pair  "
        return (f"step {step + 1}/{steps}: {loss}decisive {s['decisive']:.0f}  ties {s['ties']:.0f}  "
                f"failed {s['failed']:.0f}")  # fmt: skip

    return line


def ppo(prompts: Prompts, reward: RewardSource | Callable[..., Any], out: str | Path, *,
        model: str = "local", config: Any = None, steps: int = 20, full: bool = False,
        limit: int | None = None, report_to: list[str] | None = None,
        say: Callable[[str], None] = print) -> TrainResult:  # fmt: skip
    """Our PPO (`ppo_trainer.PPOTrainer`, `config` a `PPOConfig`), LoRA unless `full`."""
    from cai_kit.train.ppo_trainer import PPOConfig, PPOTrainer

    keys = ("reward", "kl", "policy_loss", "entropy", "clipfrac", "judge_failed")
    return _own_loop("ppo", PPOTrainer, config or PPOConfig(), as_reward_source(reward), prompts, out, model,
                     steps, full, limit, report_to, _ppo_line(steps), keys, say)  # fmt: skip


def online_dpo(prompts: Prompts, judge: Any, out: str | Path, *, model: str = "local",
               config: Any = None, steps: int = 20, full: bool = False, limit: int | None = None,
               report_to: list[str] | None = None, say: Callable[[str], None] = print) -> TrainResult:  # fmt: skip
    """Online DPO with AI feedback (`online_dpo_trainer`, `config` an `OnlineDPOConfig`):
    `judge` a pairwise judge, or a reward source / function scoring each sample alone."""
    from cai_kit.train.online_dpo_trainer import OnlineDPOConfig, OnlineDPOTrainer, as_pair_source

    cfg = config or OnlineDPOConfig()
    keys = ("loss", "reward_margin", "reward_accuracy", "decisive", "ties", "failed")
    return _own_loop("online-dpo", OnlineDPOTrainer, cfg, as_pair_source(judge, cfg.tie_margin), prompts, out,
                     model, steps, full, limit, report_to, _online_dpo_line(steps), keys, say)  # fmt: skip


def _own_loop(kind: str, trainer_class: Any, cfg: Any, source: Any, prompts: Prompts, out: str | Path,
              model: str, steps: int, full: bool, limit: int | None, report_to: list[str] | None,
              line: Callable[[int, dict[str, float]], str], keys: tuple[str, ...],
              say: Callable[[str], None]) -> TrainResult:  # fmt: skip
    """Load the policy into `trainer_class` and run it to the end (`own_loop.run_own_loop`);
    the source is closed if anything fails before training starts."""
    from cai_kit.train.common import (
        load_model,
        load_tokenizer,
        lora_config,
        quiet_libraries,
        resolve_model,
    )
    from cai_kit.train.own_loop import run_own_loop

    with quiet_libraries():  # a notebook sees what the CLI shows, not the libraries' noise
        try:
            texts, base = prompt_texts(prompts, limit), resolve_model(model)
            trainer = trainer_class(cfg, load_model(base), load_tokenizer(base),
                                    peft_config=None if full else lora_config())  # fmt: skip
        except BaseException:
            source.close()
            raise
        options = _options(prompts, model, steps=steps, full=full, limit=limit, report_to=report_to)
        history = run_own_loop(trainer, kind, texts, source, Path(out), base, steps, full, report_to,
                               options, line, keys, say)  # fmt: skip
    return TrainResult(Path(out), history)


def grpo(prompts: Prompts, reward: RewardSource | Callable[..., Any], out: str | Path, *,
         model: str = "local", max_steps: int = 10, num_generations: int = 4, batch_size: int = 4,
         max_completion_length: int = 64, lr: float = 1e-5, full: bool = False, seed: int = 0,
         limit: int | None = None, report_to: list[str] | None = None) -> TrainResult:  # fmt: skip
    """TRL's GRPO with `reward` scoring each completion (`online.train_grpo`)."""
    import os

    from cai_kit.train.common import quiet_libraries
    from cai_kit.train.online import check_group_size, train_grpo

    source, out = as_reward_source(reward), Path(out)
    try:
        check_group_size(batch_size, num_generations, int(os.environ.get("WORLD_SIZE", "1")))
        texts = prompt_texts(prompts, limit)
        options = _options(prompts, model, max_steps=max_steps, num_generations=num_generations,
                           batch_size=batch_size, max_completion_length=max_completion_length, lr=lr,
                           full=full, seed=seed, limit=limit, report_to=report_to)  # fmt: skip
        with quiet_libraries():  # a notebook sees what the CLI shows
            path = train_grpo(texts, model, out, source, max_steps=max_steps, num_generations=num_generations,
                              batch_size=batch_size, max_completion_length=max_completion_length, lr=lr,
                              full=full, seed=seed, report_to=report_to, options=options)  # fmt: skip
    finally:
        source.close()
    return TrainResult(path, read_history(path))
