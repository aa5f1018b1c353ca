"""User-facing errors and secret redaction.

A `CaiKitError` is a problem the user can fix: its message is one clear sentence plus what
to do, and the CLI prints it without a traceback. Anything else is a bug and keeps its
traceback. Every message passes through `redact` so that API keys never reach a terminal,
a log, a cache or a dataset.
"""

from __future__ import annotations

import os
import re

# Environment variables whose values are secrets. Any variable whose name ends in one of
# these suffixes is treated as a secret too (e.g. MY_GATEWAY_API_KEY).
_SECRET_SUFFIXES = ("_API_KEY", "_KEY", "_TOKEN", "_SECRET", "_PASSWORD")
_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{8,}|hf_[A-Za-z0-9]{8,}|AIza[0-9A-Za-z_\-]{20,})")


def secret_values() -> list[str]:
    """Values of secret-looking environment variables, longest first."""
    vals = {
        v
        for k, v in os.environ.items()
        if v and len(v) >= 6 and k.upper().endswith(_SECRET_SUFFIXES)
    }
    return sorted(vals, key=len, reverse=True)


def redact(text: str, extra: list[str] | None = None) -> str:
    """Replace every known secret (env values, explicit extras, key-shaped strings) with ***."""
    if not text:
        return text
    for v in [*(extra or []), *secret_values()]:
        if v:
            text = text.replace(v, "***")
    return _KEYLIKE.sub("***", text)


class CaiKitError(Exception):
    """A problem the user can fix; the message says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


class ConfigError(CaiKitError):
    """Bad configuration: unknown model string, missing key, bad flag combination."""


class DataError(CaiKitError):
    """Bad input data: names the file, line and field."""


class BackendError(CaiKitError):
    """A model call failed. `retryable` says whether trying again can help."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        unanswered: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        # the request was sent and its answer never arrived (a timeout, a dropped connection):
        # the provider may still finish and bill it, so --max-cost keeps it reserved
        self.unanswered = unanswered


class RetryableError(BackendError):
    """429, 5xx, timeouts, dropped connections, malformed bodies."""

    retryable = True


class FatalBackendError(BackendError):
    """400/401/403/404 and the like: retrying will not help."""

    retryable = False


class BudgetExceeded(CaiKitError):
    """The next call would exceed --max-cost."""
