"""The TRL-backed trainers from plain Python: the calls `cai-kit train sft|dpo|kto|orpo|reward|spin`
make (`run.train`, `spin.run_spin`), returning `TrainResult(path, history)`.

    from cai_kit import train
    rows = [{"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away."}] * 8
    path, history = train.dpo(rows, "runs/dpo", model="local", max_steps=2, beta=0.1)

`data` is what the command takes (a JSONL file or a `cai-kit export` directory) or a list of row
dicts, which is written to OUT/data/train.jsonl first: the run records a file that exists, and a
second call (e.g. `resume=True`) finds the same one. The options are `run.TrainOptions`' fields
with its defaults, the ones the CLI flags fall back to; the main ones are keyword arguments,
the rest (`epochs`, `grad_accum`, `max_length`, `eval_fraction`, `lora_r`, `merge`, `resume`,
...) pass through `**options`, and `trl={...}` sets any field of the TRL config (`--set`).
OUT gets the model, `train_config.yaml`, `log_history.json`, `training_curves.png` and a card.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from cai_kit.errors import ConfigError, DataError
from cai_kit.train.api import TrainResult, read_history
from cai_kit.train.run import TrainOptions
from cai_kit.train.self_play import SPIN

Data = str | Path | list[dict[str, Any]]
ReportTo = str | list[str] | None

_D = TrainOptions()  # the defaults, defined once (the CLI's flags fall back to the same)
_NAMES = {f.name for f in dataclasses.fields(TrainOptions)} - {"data", "out", "model"}


def sft(data: Data, out: str | Path, *, model: str = _D.model, max_steps: int = _D.max_steps,
        batch_size: int = _D.batch_size, lr: float | None = _D.lr, seed: int = _D.seed, full: bool = _D.full,
        report_to: ReportTo = None, **options: Any) -> TrainResult:  # fmt: skip
    """Supervised fine-tuning on messages, prompt/completion, Alpaca or Dolly rows."""
    return _fit("sft", data, out, model, dict(max_steps=max_steps, batch_size=batch_size, lr=lr, seed=seed,
                                              full=full, report_to=report_to, **options))  # fmt: skip


def dpo(data: Data, out: str | Path, *, model: str = _D.model, loss: str = _D.loss, beta: float | None = _D.beta,
        max_steps: int = _D.max_steps, batch_size: int = _D.batch_size, lr: float | None = _D.lr,
        seed: int = _D.seed, full: bool = _D.full, report_to: ReportTo = None, **options: Any) -> TrainResult:  # fmt: skip
    """DPO (and every TRL loss: `loss="ipo"`, `"hinge"`, ..., comma-separated to combine) on
    prompt/chosen/rejected rows; `beta` None is TRL's default (0.1)."""
    return _fit("dpo", data, out, model, dict(loss=loss, beta=beta, max_steps=max_steps, batch_size=batch_size,
                                              lr=lr, seed=seed, full=full, report_to=report_to, **options))  # fmt: skip


def kto(data: Data, out: str | Path, *, model: str = _D.model, beta: float | None = _D.beta,
        max_steps: int = _D.max_steps, batch_size: int = _D.batch_size, lr: float | None = _D.lr,
        seed: int = _D.seed, full: bool = _D.full, report_to: ReportTo = None, **options: Any) -> TrainResult:  # fmt: skip
    """KTO on unpaired prompt/completion/label rows (paired rows are unpaired for you)."""
    return _fit("kto", data, out, model, dict(beta=beta, max_steps=max_steps, batch_size=batch_size, lr=lr,
                                              seed=seed, full=full, report_to=report_to, **options))  # fmt: skip


def orpo(data: Data, out: str | Path, *, model: str = _D.model, beta: float | None = _D.beta,
         max_steps: int = _D.max_steps, batch_size: int = _D.batch_size, lr: float | None = _D.lr,
         seed: int = _D.seed, full: bool = _D.full, report_to: ReportTo = None, **options: Any) -> TrainResult:  # fmt: skip
    """ORPO on prompt/chosen/rejected rows (no reference model)."""
    return _fit("orpo", data, out, model, dict(beta=beta, max_steps=max_steps, batch_size=batch_size, lr=lr,
                                               seed=seed, full=full, report_to=report_to, **options))  # fmt: skip


def reward(data: Data, out: str | Path, *, model: str = _D.model, max_steps: int = _D.max_steps,
           batch_size: int = _D.batch_size, lr: float | None = _D.lr, seed: int = _D.seed, full: bool = _D.full,
           report_to: ReportTo = None, **options: Any) -> TrainResult:  # fmt: skip
    """A reward model on chosen/rejected pairs (a margin column is used when present); score it
    with `cai-kit reward score`, or reward PPO and GRPO with `cai_kit.rewards.reward_model(path)`."""
    return _fit("reward", data, out, model, dict(max_steps=max_steps, batch_size=batch_size, lr=lr, seed=seed,
                                                 full=full, report_to=report_to, **options))  # fmt: skip


def spin(data: Data, out: str | Path, *, model: str = "local", iterations: int = SPIN.iterations,
         max_steps: int = SPIN.max_steps, batch_size: int = SPIN.batch_size, lr: float = SPIN.lr,
         beta: float = SPIN.beta, max_new_tokens: int = SPIN.max_new_tokens,
         report_to: ReportTo = None) -> TrainResult:  # fmt: skip
    """SPIN on SFT `messages` rows: each iteration the model's own answers are rejected and the
    SFT targets chosen, DPO for `max_steps`. Returns the last iteration's model and every
    iteration's logged steps, each with its `iteration`; OUT/iter_k/{data,model} are kept."""
    from cai_kit.train.common import quiet_libraries
    from cai_kit.train.self_play import run_spin

    opts = {"max_steps": max_steps, "batch_size": batch_size, "lr": lr, "beta": beta,
            "report_to": _report_to(report_to)}  # fmt: skip
    with quiet_libraries():  # a notebook sees what the CLI shows
        models = run_spin(
            Path(_data_path(data, out)), model, Path(out), iterations, opts, max_new_tokens
        )
    history = [
        {**h, "iteration": k} for k, m in enumerate(models, start=1) for h in read_history(m)
    ]
    return TrainResult(models[-1], history)


def _fit(
    kind: str, data: Data, out: str | Path, model: str, options: dict[str, Any]
) -> TrainResult:
    from cai_kit.train.common import quiet_libraries
    from cai_kit.train.run import train

    unknown = sorted(set(options) - _NAMES)
    if unknown:
        raise ConfigError(
            f"Unknown training option(s) {', '.join(unknown)}: the options are TrainOptions' fields "
            "(cai_kit.train.TrainOptions); put TRL config fields in trl={...}."
        )
    options["report_to"] = _report_to(options["report_to"])
    with quiet_libraries():  # a notebook sees what the CLI shows, not the libraries' noise
        path = train(
            kind, TrainOptions(data=_data_path(data, out), out=str(out), model=model, **options)
        )
    return TrainResult(path, read_history(path))


def _report_to(value: ReportTo) -> str:
    """`report_to` as TrainOptions keeps it: comma-separated names, or "none"."""
    if isinstance(value, list):
        return ",".join(value) or "none"
    return value or "none"


def _data_path(data: Data, out: str | Path) -> str:
    """A path as given; a list of rows written to OUT/data/train.jsonl (atomically: under
    torchrun every rank writes the same rows, and none may read a half-written file)."""
    if not isinstance(data, list):
        return str(data)
    if not data or not all(isinstance(row, dict) for row in data):
        raise DataError("Training data given as a list must be a non-empty list of row dicts.")
    target = Path(out) / "data" / "train.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f"train.jsonl.{os.getpid()}.part")
    part.write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in data), encoding="utf-8"
    )
    os.replace(part, target)
    return str(target.parent)
