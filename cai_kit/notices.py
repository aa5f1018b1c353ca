"""What the library tells the person running it, through `logging` instead of bare prints.

Every message goes to the `cai_kit` logger: notes (`note`: "Note: no price is known for ...")
and warnings (`warn`) at WARNING, progress and Batch API status lines (`say`) at INFO. So that a script or a notebook
sees them without configuring logging (as the CLI always has), the logger comes with one
handler, `STDERR`, that writes each message as one line to the current `sys.stderr`, exactly
as the CLI printed them. The logger propagates as any other, so a program that configures
logging itself (a root handler) sees them there too, and removes `STDERR` not to see them twice;
one that wants them elsewhere removes it and adds its own:

    import logging
    from cai_kit.notices import STDERR
    logging.getLogger("cai_kit").removeHandler(STDERR)          # silence, or:
    logging.getLogger("cai_kit").addHandler(my_handler)         # route them

Progress has a callback of its own (`EngineConfig.progress`, see `engine.jobs.JobProgress`).
Part of the ground: anything in the package may import it; it imports only `logging`.
"""

from __future__ import annotations

import logging
import sys

LOGGER = logging.getLogger("cai_kit")


class _StderrLines(logging.Handler):
    """One line per message on the `sys.stderr` of the moment (a test's capture, a notebook's
    stream), with the note prefix the CLI has always shown."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            prefix = getattr(record, "cai_kit_prefix", "")
            print(f"{prefix}{record.getMessage()}", file=sys.stderr, flush=True)
        except Exception:  # a closed stream must not stop a job
            self.handleError(record)


STDERR = _StderrLines(level=logging.INFO)
# Only this module's own messages: the apps' loggers below it (`cai_kit.serve`,
# `cai_kit.review`) keep going to whatever handlers the program configured, as before.
STDERR.addFilter(lambda record: record.name == LOGGER.name)
if not any(isinstance(h, _StderrLines) for h in LOGGER.handlers):
    LOGGER.addHandler(STDERR)
    LOGGER.setLevel(logging.INFO)


def note(text: str) -> None:
    """A note the user should read (an unknown price, a setting that was adjusted)."""
    LOGGER.warning(text, extra={"cai_kit_prefix": "Note: "})


def warn(text: str) -> None:
    """A warning (a key about to cross the network in plain text)."""
    LOGGER.warning(text, extra={"cai_kit_prefix": "Warning: "})


def say(text: str) -> None:
    """A status line (progress outside a terminal, a Batch API wave)."""
    LOGGER.info(text)
