"""One bridge from sync code to a coroutine, safe where an event loop already runs.

`run_sync(coro)` is how every sync entry point of the library runs its async work:

- no loop is running in this thread (a script, the CLI): `asyncio.run`, on uvloop when it is
  installed (`CAI_KIT_UVLOOP=0` turns it off), exactly as before;
- a loop is running (a Jupyter cell, an `async def` calling the sync API): the coroutine runs
  on a fresh loop in a worker thread while this thread waits. `asyncio.run` would raise
  "cannot be called from a running event loop" there, and nesting loops (nest_asyncio) breaks
  libraries that rely on the loop's invariants, so the work gets a loop of its own.

Ctrl-C while waiting (KeyboardInterrupt, e.g. the notebook's stop button) cancels the
coroutine on the worker loop, waits for it to unwind (finished rows are already written, the
job's manifest says "stopped"), then raises KeyboardInterrupt.

`in_worker(fn, *args)` is the async side: it awaits a sync entry point in a worker thread, and
cancelling the awaiting task cancels the calls in flight on that thread's loop. The `a*`
variants of the public API (`cai_kit.arevise`, ...) are built on it.

`LoopThread` is for an object that makes many calls over one loop (a judge client whose HTTP
sessions must outlive each call, as `asyncio.Runner` gave them): one loop on a thread of its
own for the object's life, `run(coro)` from sync code anywhere (a notebook too), Ctrl-C
cancelling the call in flight, `close()` once.

    summary = run_sync(job())                           # anywhere, in or out of a loop
    records = await in_worker(revise, prompts, "harmless")
    with LoopThread() as loop:                          # one loop for many calls
        scores = [loop.run(score(batch)) for batch in batches]
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _Scope:
    """The loops (and their main tasks) started on behalf of one waiter, to cancel them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]] = []
        self.cancelled = False

    def add(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        with self._lock:
            self._tasks.append((loop, task))
            if self.cancelled:
                loop.call_soon_threadsafe(task.cancel)

    def remove(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        with self._lock:
            self._tasks.remove((loop, task))

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            for loop, task in self._tasks:
                loop.call_soon_threadsafe(task.cancel)


_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar(
    "cai_kit_scope", default=None
)


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def run_sync(coro: Awaitable[T]) -> T:
    """Run `coro` to the end from sync code, in or out of a running loop (module docstring)."""
    if running_loop() is None:
        return _run_here(coro)
    return _run_on_worker(coro)


def _run_here(coro: Awaitable[T]) -> T:
    """A new loop in this thread (uvloop when installed), its task known to the waiter's scope."""
    scope = _SCOPE.get()

    async def main() -> T:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if scope is not None and task is not None:
            scope.add(loop, task)
        try:
            return await coro
        finally:
            if scope is not None and task is not None:
                scope.remove(loop, task)

    if os.environ.get("CAI_KIT_UVLOOP", "1") != "0":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main())  # type: ignore[no-any-return]
    return asyncio.run(main())


def _run_on_worker(coro: Awaitable[T]) -> T:
    scope = _Scope()
    box: dict[str, Any] = {}
    finished = threading.Event()  # (not Thread.join: an interrupted join marks a live thread done)

    def target() -> None:
        _SCOPE.set(scope)  # a new thread starts with an empty context
        try:
            box["value"] = _run_here(coro)
        except BaseException as exc:  # handed to the waiting thread
            box["error"] = exc
        finally:
            finished.set()

    # Under asyncio.run, Ctrl-C does not raise here: asyncio's handler cancels the main task
    # (the caller), which can't run while this thread waits, so the wait watches for that too.
    caller = asyncio.current_task()
    threading.Thread(target=target, name="cai-kit-loop", daemon=True).start()
    try:
        while not finished.wait(0.1):  # a wait with a timeout lets KeyboardInterrupt through
            if caller is not None and caller.cancelling():
                scope.cancel()
                finished.wait()
                raise asyncio.CancelledError
    except KeyboardInterrupt:
        scope.cancel()  # the calls in flight are cancelled; written rows stay written
        finished.wait()
        raise
    if "error" in box:
        error = box.pop("error")
        if isinstance(error, asyncio.CancelledError) and scope.cancelled:
            raise KeyboardInterrupt from None
        raise error
    return box["value"]  # type: ignore[no-any-return]


async def in_worker(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Await the sync `fn(*args, **kwargs)` on a thread of its own (no pool: many calls side
    by side never queue); cancelling this coroutine cancels the loop(s) `fn` runs through
    `run_sync` and waits for them to unwind before CancelledError goes on."""
    scope = _Scope()
    ctx = contextvars.copy_context()
    ctx.run(_SCOPE.set, scope)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def target() -> None:
        value, error = None, None
        try:
            value = ctx.run(fn, *args, **kwargs)
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # the caller's loop is gone: nobody waits
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(
        target=target, name=f"cai-kit-{getattr(fn, '__name__', 'call')}", daemon=True
    ).start()
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        scope.cancel()
        with contextlib.suppress(BaseException):  # the cancellation asked for, or its error
            await future
        raise


class LoopThread:
    """One event loop on a thread of its own, for many `run` calls (see the module docstring).
    Works the same in a script, the CLI or a notebook, since the loop never runs in the
    caller's thread."""

    def __init__(self, name: str = "cai-kit-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and wait for it; KeyboardInterrupt (or, under asyncio.run,
        the caller's task cancelled) cancels it there, waits for it to unwind, and goes on."""
        ended = threading.Event()

        async def watched() -> T:
            try:
                return await coro
            finally:
                ended.set()

        future = asyncio.run_coroutine_threadsafe(watched(), self.loop)
        caller = asyncio.current_task() if running_loop() is not None else None
        try:
            while True:
                try:
                    return future.result(timeout=0.1)
                except TimeoutError:
                    if caller is not None and caller.cancelling():
                        raise asyncio.CancelledError from None
        except (KeyboardInterrupt, asyncio.CancelledError):
            future.cancel()  # cancels the task on the loop
            ended.wait()  # until it has unwound (its finally blocks ran)
            raise

    def close(self) -> None:
        """Stop the loop after its pending callbacks and close it (idempotent)."""
        if self.loop.is_closed():
            return

        async def shutdown() -> None:
            await self.loop.shutdown_asyncgens()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()

    def __enter__(self) -> LoopThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def coroutine_of(fn: Callable[..., T]) -> Callable[..., Coroutine[Any, Any, T]]:
    """The `a*` variant of a sync entry point: same arguments, awaited (`in_worker`)."""

    @functools.wraps(fn)
    async def variant(*args: Any, **kwargs: Any) -> T:
        return await in_worker(fn, *args, **kwargs)

    variant.__name__ = variant.__qualname__ = "a" + fn.__name__
    variant.__doc__ = f"`{fn.__name__}` for async callers: awaits it in a worker thread (`cai_kit.engine.loop.in_worker`).\n\n{fn.__doc__ or ''}"  # fmt: skip
    return variant
