"""Independent calls made together, so that `--batch-api` sends them in one wave.

With `--batch-api` a wave goes out when every running item waits on a call, so calls an item
awaits one after another cost one provider batch (up to 24 h) each, while calls awaited
together go in the same wave. Synchronously they simply run side by side.

    replies = await settle([engine.call(...) for q in questions])  # values or exceptions
    replies = raise_first(replies)  # the values, or the first exception in order

`settle` lets every call run to its end (one failure cancels no sibling: each may be paid and
cached already) and keeps the order of its inputs; a row deferred to the next wave
(`cai_kit.engine.base.Deferred`) or a cancellation is raised, never returned as a call's failure. `raise_first` then raises the exception a
loop awaiting them one by one would have raised (the first in order), so a caller's records
and error handling stay those of the sequential loop; `in_order` does both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

T = TypeVar("T")


async def settle(aws: Iterable[Awaitable[T]]) -> list[T | BaseException]:
    """Await all together; results in input order, exceptions as values (none cancels another).
    Cancelling the caller cancels them all."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for r in results:  # a deferred row (--batch-api), a cancellation: never a call's result
        if isinstance(r, BaseException) and not isinstance(r, Exception):
            raise r
    return results


def raise_first(results: list[T | BaseException]) -> list[T]:
    """The values, or raise the first exception in order (what a sequential loop would raise)."""
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]


async def in_order(aws: Iterable[Awaitable[T]]) -> list[T]:
    """`settle` then `raise_first`."""
    return raise_first(await settle(aws))
