"""What the engine (`core.py`), the job runner (`jobs.py`) and the Batch API collector
(`batch.py`) share, so that none of them imports another to get it:

- `CallFailed`: a call that failed after its retries (the row is `failed`, a re-run retries it);
- `Deferred`: --batch-api unwinds a row whose call waits in this wave's batch;
- `BatchRoute`: what `Engine.call` asks of the collector that --batch-api puts in front of
  the backends (`batch.BatchCollector` is the one implementation).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from cai_kit.errors import CaiKitError
from cai_kit.llm.base import Backend, ChatMessages, Completion, GenParams


class CallFailed(CaiKitError):
    """A model call that failed after its retries, or at once on a fatal error."""


class Deferred(BaseException):
    """--batch-api: raised into a row whose call went into this wave's batch; `run_job` runs
    the row again after the wave, when its answered calls are cache hits (`cai_kit.engine.batch`).
    A BaseException, so that job code's `except Exception` never takes it for a failure."""


class BatchRoute(Protocol):
    """The engine's view of --batch-api: which calls go into a batch, and their answers."""

    def accepts(self, backend: Backend, key: str) -> bool:
        """Whether this call goes to the collector: with --batch-api, every call of a backend
        with a Batch API; without, a call that is in a batch still open from an earlier run."""
        ...

    async def call(
        self, key: str, backend: Backend, messages: ChatMessages, params: GenParams
    ) -> Completion:
        """The batch's answer to the call with this cache key, or `Deferred` until it comes."""
        ...

    def replayed(self, key: str) -> bool:
        """Whether a cache hit is a deferred row meeting its own answered call again."""
        ...

    def forget(self, key: str) -> None:
        """Drop an unusable cached answer at once, keeping it for this run's replayed rows."""
        ...

    def kept(self, key: str) -> Completion | None:
        """An answer `forget` dropped from the cache in this run, for a replayed row."""
        ...

    def item_scope(self) -> AbstractContextManager[None]:
        """Marks one job item as running (a wave goes out when every running item waits)."""
        ...

    async def aclose(self) -> None: ...
