"""Online RLAIF without a preference dataset: TRL's GRPO with our judge or reward model as reward.

GRPO samples `num_generations` completions per prompt and uses their rewards relative to
each other as advantages (no value model). `reward_funcs` accepts callables, so the AI judge
(d-RLAIF: P(acceptable) under the constitution) or a trained reward model plugs in directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai_kit.notices import say
from cai_kit.train.common import has_cuda, load_model, load_tokenizer, lora_config, resolve_model
from cai_kit.train.rewards import RewardSource, as_reward_source


def _text(x: Any) -> str:
    if isinstance(x, list):  # conversational: a list of messages
        return " ".join(m.get("content", "") for m in x if isinstance(m, dict))
    return str(x)


class JudgeTotals:
    """The judge's statistics of the run, totals over every process (filled by the reward)."""

    def __init__(self) -> None:
        self.failed = 0.0  # failed scorings over the run
        self.calls = 0.0
        self.cost = 0.0


def as_trl_reward(scorer: RewardSource, totals: JudgeTotals | None = None) -> Any:
    """Wrap a `(prompts, responses) -> floats` scorer into TRL's reward_funcs signature.

    Every rank calls the reward at the same point of a step: `score_step` stops all ranks
    together for any rank's reason and counts judge failures over all ranks (into `totals`)."""

    def reward(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        from cai_kit.train.rewards import score_step

        user = [_text(p[-1:] if isinstance(p, list) else p) for p in prompts]
        scores, judge = score_step(scorer, user, [_text(c) for c in completions])
        if totals is not None and judge:
            totals.failed += judge["judge_failed"]
            totals.calls, totals.cost = judge["judge_calls"], judge["judge_cost"]
        return scores

    reward.__name__ = type(scorer).__name__
    return reward


def _JudgeStats(totals: JudgeTotals) -> Any:
    """Adds judge_failed (failed judge scorings since the last log, all ranks), judge_calls and
    judge_cost (the run so far, all ranks) to each logged step: to log_history and, as this
    callback runs before the reporting ones, to --report-to's integrations."""
    from transformers import TrainerCallback

    class JudgeStats(TrainerCallback):
        seen = 0.0

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs is None or "loss" not in logs:
                return
            stats = {"judge_failed": totals.failed - self.seen, "judge_calls": totals.calls,
                     "judge_cost": totals.cost}  # fmt: skip
            self.seen = totals.failed
            logs.update(stats)
            if state.log_history:
                state.log_history[-1].update(stats)

    return JudgeStats()


def check_group_size(batch_size: int, num_generations: int, processes: int = 1) -> None:
    """GRPO compares the completions of one prompt: a step's batch must hold whole groups."""
    from cai_kit.errors import ConfigError

    if num_generations < 2:
        raise ConfigError(
            f"--num-generations {num_generations}: GRPO needs at least 2 completions per prompt."
        )
    if (batch_size * processes) % num_generations:
        over = f" x {processes} processes" if processes > 1 else ""
        raise ConfigError(
            f"--batch-size {batch_size}{over} is not a multiple of --num-generations {num_generations}: "
            f"each prompt's {num_generations} completions must fit in a batch "
            f"(e.g. --batch-size {num_generations})."
        )


def _RewardMetrics(scorer: RewardSource) -> Any:
    """Adds the reward's own per-step metrics (`last_metrics`, e.g. `rubric/<principle>`: the
    mean score of each rubric principle in the step's last scoring) to each logged step: to
    log_history and, as it runs before the reporting callbacks, to --report-to's integrations."""
    from transformers import TrainerCallback

    class RewardMetrics(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs is None or "loss" not in logs:
                return
            logs.update(scorer.last_metrics)
            if state.log_history:
                state.log_history[-1].update(scorer.last_metrics)

    return RewardMetrics()


def _StopAtStepBegin(stop: Any) -> Any:
    """Ctrl-C (`train.interrupt.StopAtStep`) stops GRPO as a --max-cost stop does: at the next
    step's start (after `_StepStart` took its random state), every rank alike."""
    from transformers import TrainerCallback

    from cai_kit.train.rewards import stop_together

    class StopAtStepBegin(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            stop_together(stop.reason())

    return StopAtStepBegin()


def _StepStart() -> Any:
    """Keeps the random state of the start of the current step (`snapshot`), so that a run
    stopped inside a step is saved as it was before that step: the re-run draws it again."""
    import random

    import numpy as np
    import torch
    from transformers import TrainerCallback

    class StepStart(TrainerCallback):
        snapshot: tuple[Any, ...] | None = None

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
            self.snapshot = (random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda)

        def restore(self) -> None:
            if self.snapshot is None:
                return
            py, nps, cpu, cuda = self.snapshot
            random.setstate(py)
            np.random.set_state(nps)
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)

    return StepStart()


def _checkpoints(out: Path) -> list[Path]:
    """OUT/checkpoint-N folders, oldest first (a stopped run's saved steps)."""
    found = [p for p in out.glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[11:]))


def train_grpo(prompts: list[str], model: str, out: Path, scorer: RewardSource | Any, *, max_steps: int = 10, num_generations: int = 4,
               batch_size: int = 4, max_completion_length: int = 64, lr: float = 1e-5, full: bool = False, seed: int = 0,
               report_to: list[str] | None = None, options: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """Train and write OUT: the model (adapter under LoRA), train_config.yaml, log_history.json
    and training_curves.png (rank 0 writes).

    A stop (--max-cost reached, a dead judge) after k finished steps also saves TRL's checkpoint
    OUT/checkpoint-k (weights, optimiser, scheduler, the random state at the start of the
    stopped step); the same call again resumes from it and trains only the remaining steps."""
    import json
    import os
    import shutil

    import yaml
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from cai_kit.errors import CaiKitError
    from cai_kit.train.interrupt import Interrupted, StopAtStep
    from cai_kit.train.report import plot_curves
    from cai_kit.train.resume import check_settings, continue_hint, settings_of
    from cai_kit.train.tracking import trackio_project

    scorer = as_reward_source(scorer)  # a plain function too
    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_group_size(batch_size, num_generations, world)
    base = resolve_model(model)
    shape = {"num_generations": num_generations, "batch_size": batch_size, "lr": lr, "seed": seed,
             "max_completion_length": max_completion_length}  # fmt: skip
    settings = settings_of("grpo", base, full, shape, prompts, world)
    saved, step = _checkpoints(out), 0
    if saved:  # a stopped run: continue it, if it ran with these settings
        kept = saved[-1] / "cai_kit_resume.json"
        step = int(saved[-1].name[11:])
        check_settings(
            settings, json.loads(kept.read_text()) if kept.is_file() else {}, step, saved[-1]
        )
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])
    args = GRPOConfig(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=batch_size, num_generations=num_generations,
        max_completion_length=max_completion_length, learning_rate=lr, bf16=has_cuda(), use_cpu=not has_cuda(),
        report_to=report_to or [], logging_steps=1, save_strategy="no", seed=seed,
        project=trackio_project("grpo"),  # trackio's project, when report_to has it
    )  # fmt: skip
    totals = JudgeTotals()
    trainer = GRPOTrainer(model=load_model(base), reward_funcs=as_trl_reward(scorer, totals), args=args, train_dataset=ds,
                          processing_class=load_tokenizer(base), peft_config=None if full else lora_config())  # fmt: skip
    if scorer.judged:  # before the reporting callbacks, which then see its stats
        trainer.callback_handler.callbacks.insert(0, _JudgeStats(totals))
    # e.g. rubric/<principle>, also seen by the integrations
    trainer.callback_handler.callbacks.insert(0, _RewardMetrics(scorer))

    step_start = _StepStart()
    trainer.add_callback(step_start)
    if saved and trainer.is_world_process_zero():
        left = (f"training continues from step {step + 1} of {max_steps}" if step < max_steps
                else f"--max-steps {max_steps}: no step is left")  # fmt: skip
        say(f"Resuming {out}: {step} step(s) were finished before; {left}.")
    stopped: CaiKitError | None = None
    try:
        with StopAtStep() as stop:  # Ctrl-C: at the next step's start, saved like a stop
            trainer.add_callback(_StopAtStepBegin(stop))  # after step_start: its state is kept
            trainer.train(resume_from_checkpoint=str(saved[-1]) if saved else None)
    except CaiKitError as exc:  # a dead judge, --max-cost, Ctrl-C: every rank at the same step
        stopped = exc
    steps = trainer.state.global_step
    if stopped is not None and not steps:
        if isinstance(stopped, Interrupted):
            raise KeyboardInterrupt
        raise CaiKitError(f"{stopped} No step was finished.")
    if stopped is not None and step != steps:  # (step: where this call resumed, else 0)
        step_start.restore()  # the RNG as the stopped step began: the re-run draws it again
        trainer._save_checkpoint(trainer.model, trial=None)  # OUT/checkpoint-<steps>, every rank
        if trainer.is_world_process_zero():
            (out / f"checkpoint-{steps}" / "cai_kit_resume.json").write_text(json.dumps(settings))
    if trainer.is_world_process_zero():  # older checkpoints, or all of them once finished
        for old in _checkpoints(out):
            if stopped is None or old.name != f"checkpoint-{steps}":
                shutil.rmtree(old, ignore_errors=True)
    trainer.save_model(str(out))  # the model (adapter under LoRA) and tokenizer; rank 0 writes
    if trainer.is_world_process_zero():
        history = trainer.state.log_history
        resolved = {"kind": "grpo", "base_model": base, "options": options or {},
                    "trl_config": {k: _plain(v) for k, v in args.to_dict().items()}}  # fmt: skip
        (out / "train_config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        (out / "log_history.json").write_text(json.dumps(history, indent=1))
        plot_curves(history, out / "training_curves.png", "grpo",
                    keys=("loss", "reward", "kl", "entropy", "judge_failed"))  # fmt: skip
    if stopped is not None:
        hint = continue_hint(steps, max_steps, stopped)
        kept = f"{stopped} The {steps} finished step(s) are saved in {out}. {hint}"
        if isinstance(stopped, Interrupted):  # the CLI's Ctrl-C exit (130), after saying so
            say(kept)
            raise KeyboardInterrupt
        raise CaiKitError(kept)
    return out


def _plain(v: Any) -> Any:
    return v if isinstance(v, str | int | float | bool | type(None) | list | dict) else str(v)
