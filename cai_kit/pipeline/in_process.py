"""How the pipeline runs a data stage's library call in its own process, as its CLI command
would run in a subprocess:

    code = run_call(call, ledger=budget, max_cost=None, argv=["cai-kit", "revise", ...], log=fh)

The call's output, warnings and logging go to the stage's log; a user error is the command's
`Error: ...` line and exit 1; a bug is its traceback in the log and exit 1 (the pipeline stops
there; each stage writes only its own directory, so no other stage's work is touched). The
stage's own cap (`stage_max_cost:`) is a child ledger of the pipeline's. Afterwards what the call
loaded is let go, so that a training subprocess gets the memory.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from typing import TextIO

from cai_kit.engine.budget import Budget
from cai_kit.errors import CaiKitError, redact
from cai_kit.pipeline.calls import Call, StageContext

# A stage's process, or this one while a call runs: no loading bars, no library chatter,
# output as it happens (for progress).
QUIET_ENV = {
    "PYTHONUNBUFFERED": "1",
    "PYTHONWARNINGS": "ignore",
    "TQDM_DISABLE": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def run_call(
    call: Call,
    *,
    ledger: Budget | None,
    max_cost: float | None,
    argv: list[str],
    log: TextIO,
    tick: Callable[[], None] | None = None,
) -> int:
    """Run `call` with its output in `log`; `tick` (a live progress line) every half second
    while it runs. Returns the exit code its command would have."""
    budget = ledger
    if max_cost is not None:  # the stage's own cap inside the pipeline's
        budget = Budget(max_cost, parent=ledger, label="the stage's --max-cost")

    def say(line: str) -> None:
        log.write(line + "\n")
        log.flush()

    ticking = threading.Event()
    if tick is not None:
        threading.Thread(target=_every_half_second, args=(tick, ticking), daemon=True).start()
    handler = logging.StreamHandler(log)
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with _quiet(), redirect_stdout(log), redirect_stderr(log):
            return call(StageContext(budget=budget, argv=argv, say=say, max_cost=max_cost))
    except CaiKitError as exc:
        say(f"Error: {redact(str(exc))}")
        return 1
    except Exception:  # a bug: its traceback in the log, as a crashed process would leave
        log.write(traceback.format_exc())
        return 1
    finally:
        ticking.set()
        root.removeHandler(handler)
        _free_memory()


def _every_half_second(tick: Callable[[], None], done: threading.Event) -> None:
    while not done.wait(0.5):
        tick()


@contextmanager
def _quiet() -> Iterator[None]:
    """QUIET_ENV and no warnings while a call runs here (what a stage's process gets)."""
    saved = {k: os.environ.get(k) for k in QUIET_ENV}
    os.environ.update(QUIET_ENV)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _free_memory() -> None:
    """Let go of what a call loaded (prefs and eval sample from an `hf:` model here) before a
    training subprocess needs the memory: the objects, and torch's cached GPU blocks."""
    gc.collect()
    torch = sys.modules.get("torch")  # only if a stage loaded it: never imported for this
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
