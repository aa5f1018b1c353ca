"""Ctrl-C in our own training loops (PPO, online DPO): the first one stops at the end of the step
in progress, as a --max-cost stop does, so the finished steps are saved with what a re-run needs
to continue (`train.resume`); a second Ctrl-C stops at once (the step in progress is lost, and so
is what was not saved).

    with StopAtStep() as stop:       # in the thread that gets SIGINT (the main one), else inert
        trainer.interrupt = stop     # the loop calls `stop_together(stop.reason())` at each step

Every rank checks at the same point of a step (`rewards.stop_together`), so ranks that got the
signal at different moments still stop at the same step.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

from cai_kit.errors import CaiKitError
from cai_kit.notices import note


class Interrupted(CaiKitError):
    """Ctrl-C, taken at a step's end: the finished steps are saved and a re-run continues."""


class StopAtStep:
    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> StopAtStep:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # the second Ctrl-C: now
            self.__exit__(None, None, None)
            raise KeyboardInterrupt
        self.requested = True
        note("Ctrl-C: training stops when this step ends, and saves what a re-run needs to "
             "continue (Ctrl-C again to stop now and lose this step).")  # fmt: skip

    def reason(self) -> Interrupted | None:
        """The reason to stop here, if Ctrl-C was pressed since training started."""
        if not self.requested:
            return None
        return Interrupted("Interrupted (Ctrl-C) at the end of a step.")
