"""Running one of our own training loops (PPO, online DPO) to the end, with its run files.

`run_own_loop` continues a run a stop left in OUT (`train.resume`), trains, and writes what
`train_grpo` writes for TRL's loop: the model (adapter under LoRA), log_history.json,
train_config.yaml and training_curves.png (rank 0). A dead judge or --max-cost stops the
loop: the finished steps are saved with what the same call needs to continue, and the stop
is raised as one CaiKitError that says what was kept. The reward or judge and the tracker
are closed either way.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cai_kit.errors import CaiKitError

Say = Callable[[str], None]


def run_own_loop(trainer: Any, kind: str, texts: list[str], source: Any, out: Path, base: str,
                 steps: int, full: bool, report_to: list[str] | None, options: dict[str, Any],
                 line: Callable[[int, dict[str, float]], str], keys: tuple[str, ...],
                 say: Say = print) -> list[dict[str, float]]:  # fmt: skip
    """Train `trainer` (PPOTrainer, OnlineDPOTrainer) for `steps` on `texts` with `source`,
    printing `line(step, stats)` per step on rank 0; returns the history."""
    from cai_kit.train.tracking import Tracker

    cfg = trainer.config
    out.mkdir(parents=True, exist_ok=True)
    try:
        settings = _resume(trainer, out, kind, base, full, steps, texts, say)
    except BaseException:
        source.close()
        raise
    tracker = Tracker(report_to or [], out, kind, config=dataclasses.asdict(cfg),
                      enabled=trainer.is_main_process)  # fmt: skip

    def log(step: int, stats: dict[str, float]) -> None:  # rank 0 only
        tracker.log(stats, step + 1)
        say(line(step, stats))

    stopped = _train(trainer, texts, source, steps, log, tracker, out, settings)
    history = trainer.history
    if kind == "ppo" and history and trainer.is_main_process:
        (out / "ppo_history.json").write_text(json.dumps(history, indent=1))
    try:  # every rank waits until rank 0 has written: a rank that ended first (a stop raises)
        _write(
            out,
            kind,
            base,
            options,
            cfg,
            history,
            steps,
            stopped,
            trainer.is_main_process,
            keys,
            say,
        )
    finally:  # would have torchrun stop rank 0 mid-write
        trainer.accelerator.wait_for_everyone()
    return history


def _resume(trainer: Any, out: Path, kind: str, base: str, full: bool, steps: int,
            texts: list[str], say: Say) -> dict[str, Any]:  # fmt: skip
    """Continue a run that a stop left in OUT (cai_kit.train.resume); returns its settings."""
    from cai_kit.train import resume

    settings = resume.settings_of(
        kind, base, full, trainer.config, texts, trainer.accelerator.num_processes
    )
    finished = resume.load(trainer, out, settings)
    if finished and trainer.is_main_process:
        left = f"training continues from step {finished + 1} of {steps}" if finished < steps \
            else f"--steps {steps}: no step is left"  # fmt: skip
        say(f"Resuming {out}: {finished} step(s) were finished before; {left}.")
    return settings


def _train(trainer: Any, texts: list[str], source: Any, steps: int, log: Any, tracker: Any,
           out: Path, settings: dict[str, Any]) -> CaiKitError | None:  # fmt: skip
    """Train; a dead judge or --max-cost stops it and is returned, not raised, so the steps
    already made are kept: the model is saved when a step finished, with what the same call
    needs to continue from there (OUT/resume_state, removed once the run reaches its last
    step)."""
    from cai_kit.train import resume
    from cai_kit.train.interrupt import StopAtStep

    stopped: CaiKitError | None = None
    try:
        with StopAtStep() as trainer.interrupt:
            trainer.train(texts, source, steps, log)
    except CaiKitError as exc:
        stopped = exc
        trainer.judge_spent = _judge_spent(trainer, source)
    finally:
        source.close()
        tracker.close()
    if stopped is not None and trainer.history:
        resume.save(trainer, out, settings)
    elif stopped is None:
        resume.clear(trainer, out)
    if trainer.history:
        trainer.save(str(out))
    return stopped


def _judge_spent(trainer: Any, source: Any) -> dict[str, float]:
    """What the judge billed in the run up to a stop, all ranks (every rank stops together, so
    the sum is a collective they all reach), the calls of the stopped step included: a re-run
    continues these totals (`resume.save` keeps them), so the log's last `judge_calls` and
    `judge_cost` are what the provider billed for the whole run, once."""
    from cai_kit.train.rewards import sum_over_ranks

    usage = getattr(source, "usage", None)
    if usage is None:
        return dict(trainer.judge_before)
    u = usage()
    calls, cost = sum_over_ranks([u.get("judge_calls", 0.0), u.get("judge_cost", 0.0)])
    return trainer.judge_so_far({"judge_calls": calls, "judge_cost": cost})


def _write(out: Path, kind: str, base: str, options: dict[str, Any], cfg: Any,
           history: list[dict[str, float]], steps: int, stopped: CaiKitError | None, main: bool,
           keys: tuple[str, ...], say: Say) -> None:  # fmt: skip
    """log_history.json, train_config.yaml and training_curves.png on the main process; then
    the reason it stopped early with what was kept, or where it was saved."""
    import yaml

    from cai_kit.train.interrupt import Interrupted
    from cai_kit.train.report import plot_curves
    from cai_kit.train.resume import continue_hint

    if history and main:
        logged = [{**h, "step": i + 1} for i, h in enumerate(history)]
        (out / "log_history.json").write_text(json.dumps(logged, indent=1))
        resolved = {"kind": kind, "base_model": base, "options": {k: plain(v) for k, v in options.items()},
                    f"{kind.replace('-', '_')}_config": dataclasses.asdict(cfg)}  # fmt: skip
        (out / "train_config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        plot_curves(logged, out / "training_curves.png", kind, keys=keys)
    if stopped is not None:
        hint = continue_hint(len(history), steps, stopped)
        kept = (f"The {len(history)} finished step(s) are saved in {out}. {hint}" if history
                else "No step was finished.")  # fmt: skip
        if isinstance(
            stopped, Interrupted
        ):  # the CLI's Ctrl-C exit (130), after saying what was kept
            say(f"{stopped} {kept}")
            raise KeyboardInterrupt
        raise CaiKitError(f"{stopped} {kept}")
    if main:
        say(f"Saved to {out}")


def plain(v: Any) -> Any:
    """A value as YAML writes it: plain types as they are, anything else as its str."""
    return v if isinstance(v, str | int | float | bool | type(None) | list | dict) else str(v)
