"""Experiment tracking: `--report-to none|tensorboard|trackio|wandb|mlflow` (comma-separate several).

TRL's trainers get the names through their config (`report_to`) and log with transformers'
own integration callbacks. Our own loops (PPO, SPIN) log through `Tracker`, the one adapter
here, so both end up in the same places:

    names = parse_report_to("tensorboard,wandb")    # checked: known, and installed
    tracker = Tracker(names, out_dir, "ppo", config={...})
    tracker.log({"reward": 0.4, "kl": 0.1}, step=1)
    tracker.close()

TensorBoard writes OUT/runs/<time>_<host>/ (the directory transformers uses too); trackio
writes its local SQLite store, $TRACKIO_DIR/<project>.db (default $HF_HOME/trackio/), project
$TRACKIO_PROJECT or cai-kit-<kind> for our loops and TRL's alike; it needs no network unless
TRACKIO_SPACE_ID / TRACKIO_SERVER_URL ask for a Space or server. wandb and mlflow use their own
settings (WANDB_PROJECT, WANDB_MODE, MLFLOW_TRACKING_URI, ...). Each integration is an
optional extra: a missing one is one sentence naming the extra to install.
"""

from __future__ import annotations

import importlib.util
import math
import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

from cai_kit.errors import ConfigError

# integration -> the module that must be importable
INTEGRATIONS = {
    "tensorboard": "tensorboard",
    "trackio": "trackio",
    "wandb": "wandb",
    "mlflow": "mlflow",
}


def parse_report_to(value: str | list[str] | None, *, check_installed: bool = True) -> list[str]:
    """`none` / `tensorboard,wandb` / a list -> the integration names, each known (and installed,
    unless check_installed=False); a bad or missing one is a ConfigError of one sentence."""
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    names: list[str] = []
    for item in items:
        name = str(item).strip().lower()
        if name in ("", "none"):
            continue
        if name not in INTEGRATIONS:
            raise ConfigError(
                f"--report-to {name!r} is not one of none, {', '.join(INTEGRATIONS)} "
                "(comma-separate several)."
            )
        if name not in names:
            names.append(name)
    if check_installed:
        for name in names:
            if importlib.util.find_spec(INTEGRATIONS[name]) is None:
                raise ConfigError(
                    f"--report-to {name} needs the {name} package: pip install 'cai-kit[{name}]'."
                )
    return names


def trackio_project(kind: str) -> str:
    """The trackio project a run of `kind` logs to: $TRACKIO_PROJECT, else cai-kit-<kind>."""
    return os.environ.get("TRACKIO_PROJECT") or f"cai-kit-{kind}"


def tensorboard_dir(out: Path) -> Path:
    """A new run directory under OUT/runs/, named as transformers names its own."""
    stamp = datetime.now().strftime("%b%d_%H-%M-%S")
    return Path(out) / "runs" / f"{stamp}_{socket.gethostname()}"


class Tracker:
    """Writes numeric metrics of our own training loops to every chosen integration.

    `enabled=False` (a rank other than 0) makes every call a no-op, so callers need no checks."""

    def __init__(self, names: list[str], out: Path, kind: str, config: dict[str, Any] | None = None,
                 enabled: bool = True) -> None:  # fmt: skip
        self.names = names if enabled else []
        self._tb: Any = None
        self._mlflow: Any = None
        self._wandb: Any = None
        self._trackio: Any = None
        self._trackio_run: tuple[str, str, dict[str, Any]] = ("", "", {})  # project, name, config
        config = config or {}
        if "tensorboard" in self.names:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(tensorboard_dir(out)))
        if "trackio" in self.names:
            import trackio

            # named, not one of trackio's generated names: an inner run started before our first
            # point (SPIN's first DPO) would otherwise be given the same name
            project, name = trackio_project(kind), f"{kind}-{datetime.now():%Y%m%d-%H%M%S}"
            trackio.init(project=project, name=name, config=config)
            self._trackio, self._trackio_run = trackio, (project, name, config)
        if "wandb" in self.names:
            import wandb

            wandb.init(project=os.environ.get("WANDB_PROJECT", "cai-kit"), name=f"{kind} {out}",
                       config=config, dir=str(out))  # fmt: skip
            self._wandb = wandb
        if "mlflow" in self.names:
            import mlflow

            mlflow.start_run(run_name=f"{kind} {out}")
            mlflow.log_params({k: str(v)[:250] for k, v in config.items()})
            self._mlflow = mlflow

    def log(self, metrics: dict[str, Any], step: int) -> None:
        scalars = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }
        if not self.names or not scalars:
            return
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._trackio is not None:
            self._resume_trackio()
            self._trackio.log(scalars, step=step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)
        if self._mlflow is not None:
            self._mlflow.log_metrics(scalars, step=step)

    def _trackio_current(self) -> bool:
        run = self._trackio.context_vars.current_run.get()
        return run is not None and run.name == self._trackio_run[1]

    def _resume_trackio(self) -> None:
        """trackio has one current run per process: an inner TRL run (each SPIN iteration's DPO)
        finishes ours when it starts, so continue ours under its name before logging ("allow":
        a run is stored with its first point, so ours may not be there yet)."""
        if not self._trackio_current():
            project, name, config = self._trackio_run
            self._trackio.init(project=project, name=name, config=config, resume="allow")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._trackio is not None and self._trackio_current():
            self._trackio.finish()
        if self._wandb is not None:
            self._wandb.finish()
        if self._mlflow is not None:
            self._mlflow.end_run()
        self.names = []
