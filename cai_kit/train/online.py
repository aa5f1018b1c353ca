"""Online RLAIF without a preference dataset: TRL's GRPO with our judge or reward model as reward.

GRPO samples `num_generations` completions per prompt and uses their rewards relative to
each other as advantages (no value model). `reward_funcs` accepts callables, so the AI judge
(d-RLAIF: P(acceptable) under the constitution) or a trained reward model plugs in directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai_kit.train.common import has_cuda, load_model, load_tokenizer, lora_config, resolve_model


def _text(x: Any) -> str:
    if isinstance(x, list):  # conversational: a list of messages
        return " ".join(m.get("content", "") for m in x if isinstance(m, dict))
    return str(x)


def as_trl_reward(scorer: Any) -> Any:
    """Wrap a `(prompts, responses) -> floats` scorer into TRL's reward_funcs signature."""

    def reward(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        from cai_kit.errors import BudgetExceeded
        from cai_kit.train.rewards import stop_together

        user = [_text(p[-1:] if isinstance(p, list) else p) for p in prompts]
        stop = None
        try:
            scores = list(scorer(user, [_text(c) for c in completions]))
        except BudgetExceeded as exc:  # this rank's share of --max-cost is spent
            scores, stop = [], exc
        stop_together(stop)  # every rank calls the reward at the same point of a step
        if hasattr(scorer, "check_failures"):  # the judge: a dead judge stops training
            scorer.check_failures(scorer.last_failed, len(scores))
        return scores

    reward.__name__ = type(scorer).__name__
    return reward


def _JudgeFailures(scorer: Any) -> Any:
    """Adds `judge_failed` (failed judge scorings since the last log) to each logged step."""
    from transformers import TrainerCallback

    class JudgeFailures(TrainerCallback):
        seen = 0

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if state.log_history and "loss" in state.log_history[-1]:
                state.log_history[-1]["judge_failed"] = scorer.failed - self.seen
                self.seen = scorer.failed

    return JudgeFailures()


def _RewardMetrics(scorer: Any) -> Any:
    """Adds the reward's own per-step metrics (`last_metrics`, e.g. `rubric/<principle>`: the
    mean score of each rubric principle in the step's last scoring) to each logged step."""
    from transformers import TrainerCallback

    class RewardMetrics(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if state.log_history and "loss" in state.log_history[-1]:
                state.log_history[-1].update(scorer.last_metrics)

    return RewardMetrics()


def train_grpo(prompts: list[str], model: str, out: Path, scorer: Any, *, max_steps: int = 10, num_generations: int = 4,
               batch_size: int = 4, max_completion_length: int = 64, lr: float = 1e-5, full: bool = False, seed: int = 0) -> Path:  # fmt: skip
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    base = resolve_model(model)
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])
    args = GRPOConfig(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=batch_size, num_generations=num_generations,
        max_completion_length=max_completion_length, learning_rate=lr, bf16=has_cuda(), use_cpu=not has_cuda(),
        report_to=[], logging_steps=1, save_strategy="no", seed=seed,
    )  # fmt: skip
    trainer = GRPOTrainer(model=load_model(base), reward_funcs=as_trl_reward(scorer), args=args, train_dataset=ds,
                          processing_class=load_tokenizer(base), peft_config=None if full else lora_config())  # fmt: skip
    if hasattr(scorer, "failed"):
        trainer.add_callback(_JudgeFailures(scorer))
    if hasattr(scorer, "last_metrics"):
        trainer.add_callback(_RewardMetrics(scorer))
    from cai_kit.errors import CaiKitError

    stopped: CaiKitError | None = None
    try:
        trainer.train()
    except CaiKitError as exc:  # a dead judge or --max-cost: every rank stops at the same step
        stopped = exc
    steps = trainer.state.global_step
    if stopped is not None and not steps:
        raise CaiKitError(f"{stopped} No step was finished.")
    trainer.save_model(str(out))  # the model (adapter under LoRA) and tokenizer; rank 0 writes
    if trainer.is_world_process_zero():
        import json

        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    if stopped is not None:
        raise CaiKitError(f"{stopped} The {steps} finished step(s) are saved in {out}.")
    return out
