"""Continue one of our own training loops (PPO, online DPO) from where a stop left it.

When the judge stops a run (--max-cost reached, too many failed verdicts), the finished steps
are kept in OUT/resume_state/ and the same command run again trains only the remaining ones:

    mark = StepMark.take(rng)              # in the loop, at the start of every step
    save(trainer, out, settings)           # after the stop (every rank)
    start = load(trainer, out, settings)   # before training: the finished steps, or 0
    clear(out)                             # after a run that reached its last step

What is kept: the trainable weights (LoRA adapters, the value head; all weights under --full)
and the optimiser, through accelerate's `save_state` (every rank's RNG too, DeepSpeed and FSDP
included), each rank's prompt-draw state, and on rank 0 `state.json`: the finished steps'
history, the loop's own state (PPO's KL coefficient and reward statistics), the judge's calls and
cost up to the stop (the stopped step's included: the re-run's totals continue from them) and
the settings.
The RNG states are those of the start of the step that was stopped, so the re-run draws that
step as an uninterrupted run would have, and the judge's answers already paid for come from
the call cache. A re-run with other settings (another model, learning rate, prompt set, number
of processes) is refused rather than mixed with the saved steps.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cai_kit.errors import ConfigError

STATE_DIR = "resume_state"


@dataclass
class StepMark:
    """The random state at the start of one step: what a resumed run starts that step from."""

    draws: Any  # the loop's own random.Random state (which prompts it draws)
    cpu: torch.Tensor
    cuda: list[torch.Tensor] | None

    @classmethod
    def take(cls, rng: random.Random) -> StepMark:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return cls(rng.getstate(), torch.get_rng_state(), cuda)

    def restore_torch(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


class ResumableLoop:
    """What PPO's and online DPO's loops share to stop and continue: the history, the draws and
    judge totals a stopped run left (`load`), the stopped step's `StepMark` (`save`), and the
    Ctrl-C watch (`train.interrupt.StopAtStep`, set by `own_loop`)."""

    def _init_resumable(self) -> None:
        self.history: list[dict[str, float]] = []
        self.draws: Any = None  # the prompt draws' random state to start from (load)
        self.judge_before: dict[str, float] = {}  # judge_calls/judge_cost billed before a stop
        self.interrupt: Any = None  # train.interrupt.StopAtStep: Ctrl-C stops at a step's end
        self.mark: StepMark | None = None  # the random state at the start of the current step

    def begin_step(self, rng: random.Random) -> None:
        """Mark where this step starts (a stop here: the re-run starts it as is), then stop
        every rank here if Ctrl-C was pressed since the last step."""
        from cai_kit.train.rewards import stop_together

        self.mark = StepMark.take(rng)
        if self.interrupt is not None:
            stop_together(self.interrupt.reason())

    def judge_so_far(self, judge: dict[str, float]) -> dict[str, float]:
        """`judge_calls`/`judge_cost` of this run plus what was billed before its stop."""
        return {k: v + self.judge_before.get(k, 0.0) for k, v in judge.items()}


def _trainable_only(models: list[Any], weights: list[dict[str, Any]], _dir: str) -> None:
    """accelerate's pre-save hook: keep the weights that train (the frozen base is reloaded
    from the model the command names), so a LoRA run saves megabytes, not the whole model."""
    for model, state in zip(models, weights, strict=True):
        keep = {n for n, p in model.named_parameters() if p.requires_grad}
        for name in [n for n in state if n not in keep]:
            del state[name]


def save(trainer: Any, out: Path, settings: dict[str, Any]) -> None:
    """Keep the finished steps of a stopped run (call it on every rank). `trainer.mark` is the
    StepMark of the stopped step (None: the loop ended between steps, the RNG is as it is)."""
    acc, mark = trainer.accelerator, trainer.mark
    path = out / STATE_DIR
    if mark is not None:
        mark.restore_torch()
    handle = acc.register_save_state_pre_hook(_trainable_only)
    try:
        acc.save_state(str(path), safe_serialization=False)
    finally:
        handle.remove()
    rank = acc.process_index
    draws = mark.draws if mark is not None else None
    (path / f"draws_{rank}.json").write_text(json.dumps(_plain_state(draws)))
    if acc.is_main_process:
        state = {"step": len(trainer.history), "settings": settings, "loop": trainer.loop_state(),
                 "history": trainer.history,
                 "judge_spent": getattr(trainer, "judge_spent", {})}  # fmt: skip
        (path / "state.json").write_text(json.dumps(state, indent=1))
    acc.wait_for_everyone()


def load(trainer: Any, out: Path, settings: dict[str, Any]) -> int:
    """Restore a stopped run from OUT/resume_state (every rank): weights, optimiser, RNG,
    history (`trainer.history`), prompt draws (`trainer.draws`) and the loop's own state
    (`trainer.load_loop_state`); returns the number of finished steps (0: nothing to resume).
    A run saved with other settings is a ConfigError."""
    path = out / STATE_DIR
    if not (path / "state.json").is_file():
        return 0
    state = json.loads((path / "state.json").read_text())
    check_settings(settings, state["settings"], state["step"], path)
    trainer.accelerator.load_state(str(path), strict=False)  # weights, optimiser, every RNG
    draws = json.loads((path / f"draws_{trainer.accelerator.process_index}.json").read_text())
    trainer.draws = _tuple_state(draws)
    trainer.history = list(state["history"])
    trainer.judge_before = dict(state.get("judge_spent") or {})  # billed before the stop
    trainer.load_loop_state(state["loop"])
    return int(state["step"])


def clear(trainer: Any, out: Path) -> None:
    """Remove the resume state once the run has reached its last step (rank 0)."""
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        shutil.rmtree(out / STATE_DIR, ignore_errors=True)


def check_settings(settings: dict[str, Any], saved: dict[str, Any], step: int, path: Path) -> None:
    """Refuse to continue a stopped run with other settings (one sentence naming them)."""
    now, then = _flat(settings), _flat(saved)
    changed = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
    if changed:
        raise ConfigError(
            f"{path.parent} holds a run stopped after step {step} with other settings "
            f"({', '.join(changed)}): re-run with the same settings to continue it, or delete "
            f"{path} (or use another --out) to start over."
        )


def settings_of(kind: str, base: str, full: bool, config: Any, prompts: list[str],
                processes: int) -> dict[str, Any]:  # fmt: skip
    """What a resumed run must share with the stopped one (not --steps, --max-cost, the judge):
    `config` is the trainer's config dataclass, or a dict of the options that shape training."""
    from dataclasses import asdict, is_dataclass

    from cai_kit.records import stable_hash

    config = asdict(config) if is_dataclass(config) else dict(config)  # type: ignore[arg-type]
    return {"kind": kind, "base_model": base, "full": full, "config": config,
            "prompts": stable_hash(prompts), "processes": processes}  # fmt: skip


def continue_hint(finished: int, steps: int, stopped: Exception) -> str:
    """What re-running the same command does, for the stop message."""
    from cai_kit.errors import BudgetExceeded
    from cai_kit.train.interrupt import Interrupted

    if isinstance(stopped, BudgetExceeded):
        how = " with a higher --max-cost"
    elif isinstance(stopped, Interrupted):
        how = ""
    else:
        how = " once the judge answers again"
    return f"Re-run the same command{how}: training continues from step {finished + 1} of {steps}."


def _flat(settings: dict[str, Any]) -> dict[str, Any]:
    """{"config": {"learning_rate": x}} -> {"learning_rate": x}: the names a user knows."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        out.update(_flat(value) if isinstance(value, dict) else {key: value})
    return out


def _plain_state(state: Any) -> Any:
    """random.Random.getstate() as JSON (tuples become lists)."""
    if isinstance(state, tuple):
        return [_plain_state(x) for x in state]
    return state


def _tuple_state(state: Any) -> Any:
    if isinstance(state, list):
        return tuple(_tuple_state(x) for x in state)
    return state
