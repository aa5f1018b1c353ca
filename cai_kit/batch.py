"""`--batch-api`: the engine's calls go out as provider Batch API jobs, in waves, resumably.

The engine hands every uncached call of a batchable backend to a `BatchCollector` instead of
calling the backend (`Engine.call`, one branch). The collector holds the call until every
running item waits on one (`item_scope()` marks an item as running; without items, a short
idle window), then sends all held calls as one wave: one batch per provider (split at the
provider's size limits). Multi-step work (revise's critique -> revision rounds, judging both
orders) thus runs as successive waves, each one batch.

Resumable, never paying twice. Before anything waits on a batch, `RUN_DIR/batches/ledger.jsonl`
records it (an fsync'ed line per event) with the cache keys of its calls (`<tag>.keys`); the
call's cache key is the line's `custom_id`. A re-run after `kill -9` finds its calls in an open
batch and polls that batch instead of submitting again; a wave killed between "submitting" and
"submitted" is found again by its tag in the batch's metadata. Answers go into the call cache
(or `RUN_DIR/batches/results.sqlite` with --no-cache), so a later synchronous re-run is all
cache hits. Per-request errors, and calls of an expired, cancelled or failed batch, raise
`CallFailed`: the record is `failed`, and a re-run (or `retry-failed`) sends it again.

    engine.batch = BatchCollector(engine, run_dir)   # run_job does this for --batch-api
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cai_kit.batch_providers import BatchClient, BatchState, batch_client_for
from cai_kit.cache import CallCache
from cai_kit.errors import BackendError, BudgetExceeded, redact
from cai_kit.llm.base import Backend, ChatMessages, Completion, GenParams
from cai_kit.pricing import price_for_backend

if TYPE_CHECKING:
    from cai_kit.engine import Engine

_ITEM: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "cai_batch_item", default=None
)
IDLE_S = 0.5  # without item tracking: send a wave when no call came for this long
POLL_FRACTION = 0.01  # poll again after 1% of the time waited so far...
POLL_MIN_S, POLL_MAX_S = 0.1, 30.0  # ...within these bounds


@dataclass
class _Wave:
    """One batch: its calls' keys and the futures of the calls waiting for it."""

    tag: str
    client: BatchClient
    keys: set[str]
    waiters: dict[str, list[asyncio.Future[Completion]]] = field(default_factory=dict)
    batch_id: str | None = None
    task: asyncio.Task[None] | None = None
    reserved: float = 0.0  # --max-cost: the worst case held for this batch until it ends
    settled: bool = False


class BatchCollector:
    def __init__(self, engine: Engine, run_dir: Path) -> None:
        self.engine = engine
        self.dir = Path(run_dir) / "batches"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ledger = self.dir / "ledger.jsonl"
        self._own_cache = engine.cache is None  # --no-cache: answers still kept for a re-run
        self.cache = (
            CallCache(self.dir / "results.sqlite") if engine.cache is None else engine.cache
        )
        self._clients: dict[str, BatchClient | None] = {}
        self._pending: dict[str, list[tuple[str, dict[str, Any], asyncio.Future[Completion]]]] = {}
        self._waves: dict[str, _Wave] = {}  # open batches by tag
        self._wave_of: dict[str, str] = {}  # cache key -> tag of the open batch that holds it
        self._running = 0
        self._waiting: dict[object, int] = {}
        self._check_handle: asyncio.Handle | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._reserved = 0.0
        self._load_ledger()

    # --- which calls ---------------------------------------------------------------------

    def client(self, backend: Backend) -> BatchClient | None:
        ident = _ident(backend)
        if ident not in self._clients:
            self._clients[ident] = client = batch_client_for(backend)
            if client is not None:
                client.price = price_for_backend(backend, self.engine.config.price)
            else:
                print(f"--batch-api: {backend.model} ({backend.kind}) has no Batch API; its "
                      "calls run synchronously.", file=sys.stderr)  # fmt: skip
        return self._clients[ident]

    def accepts(self, backend: Backend) -> bool:
        return self.client(backend) is not None

    # --- items: a wave goes out when every running item waits on a call ------------------

    @contextmanager
    def item_scope(self) -> Iterator[None]:
        token = _ITEM.set(object())
        self._running += 1
        try:
            yield
        finally:
            self._running -= 1
            _ITEM.reset(token)
            self._schedule_check()

    def _schedule_check(self) -> None:
        if self._check_handle is None:
            self._check_handle = asyncio.get_running_loop().call_soon(self._check)

    def _check(self) -> None:
        self._check_handle = None
        if not self._pending:
            return
        if self._running and len(self._waiting) >= self._running:
            self._flush()
        elif not self._running:  # calls made outside run_job: a short idle window
            if self._idle_handle is not None:
                self._idle_handle.cancel()
            self._idle_handle = asyncio.get_running_loop().call_later(IDLE_S, self._flush)

    # --- the call ------------------------------------------------------------------------

    async def call(
        self, key: str, backend: Backend, messages: ChatMessages, params: GenParams
    ) -> Completion:
        """The answer to one call, through a batch (cached by the collector itself)."""
        if self._own_cache and (hit := self.cache.get(key)) is not None:
            return hit
        client = self.client(backend)
        assert client is not None
        while True:
            future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
            item = _ITEM.get()
            self._waiting[item] = self._waiting.get(item, 0) + 1
            try:
                tag = self._wave_of.get(key)
                if tag is not None:  # in a batch already (maybe an earlier run's): never resend
                    wave = self._waves[tag]
                    wave.waiters.setdefault(key, []).append(future)
                    if wave.task is None:  # sent by an earlier run: resume it
                        wave.client = client
                        wave.task = self._spawn(wave, self._resume(wave))
                else:
                    line = client.line(key, messages, params)
                    self._pending.setdefault(_ident(backend), []).append((key, line, future))
                self._schedule_check()
                return await future
            except _Resend:
                continue
            finally:
                self._waiting[item] -= 1
                if not self._waiting[item]:
                    del self._waiting[item]

    def _spawn(self, wave: _Wave, coro: Any) -> asyncio.Task[None]:
        async def guarded() -> None:
            try:
                await coro
            except Exception as exc:  # never leave a call waiting; the batch stays open
                why = (
                    f"batch {wave.batch_id or wave.tag} is still open ({type(exc).__name__}: {exc})"
                )
                self._finish(wave, {}, why, final=False)

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _flush(self) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        pending, self._pending = self._pending, {}
        for ident, calls in pending.items():
            client = self._clients[ident]
            assert client is not None
            for wave, path in self._write_waves(client, self._within_budget(client, calls)):
                wave.task = self._spawn(wave, self._send(wave, path))

    def _write_waves(
        self, client: BatchClient, calls: list[tuple[str, dict[str, Any], Any, float]]
    ) -> Iterator[tuple[_Wave, Path]]:
        """Stream the calls into batch input files (each line serialised once, identical calls
        sent once), split at the provider's limits; each file is one wave, opened at once so
        that later identical calls join it."""
        waiters: dict[str, list[asyncio.Future[Completion]]] = {}
        chunk: list[str] = []
        size, reserved = 0, 0.0
        tmp = self.dir / "wave.input.tmp"
        fh = None

        def close() -> tuple[_Wave, Path]:
            assert fh is not None
            fh.close()
            keys = sorted(chunk)
            tag = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
            path = self.dir / f"{tag}.input.jsonl"
            tmp.replace(path)
            (self.dir / f"{tag}.keys").write_text("\n".join(keys) + "\n", encoding="utf-8")
            wave = _Wave(tag, client, set(keys), {k: waiters[k] for k in keys}, reserved=reserved)
            self._open(wave)
            return wave, path

        for key, line, fut, worst in calls:
            if key in waiters:  # an identical call: one request, both answered
                waiters[key].append(fut)
                continue
            text = json.dumps(line, ensure_ascii=False) + "\n"
            n = len(text.encode())
            if chunk and (len(chunk) >= client.max_requests or size + n > client.max_bytes):
                yield close()
                chunk, size, reserved = [], 0, 0.0
                fh = None
            if fh is None:
                fh = tmp.open("w", encoding="utf-8")
            fh.write(text)
            waiters[key] = [fut]
            chunk.append(key)
            size += n
            reserved += worst
        if chunk:
            yield close()

    # --- one wave: budget, ledger, submit, poll, download -------------------------------

    async def _send(self, wave: _Wave, path: Path) -> None:
        try:
            self._log(event="submitting", tag=wave.tag, provider=redact(wave.client.name),
                      requests=len(wave.keys))  # fmt: skip
            wave.batch_id = await wave.client.submit(path, wave.tag)
            self._log(event="submitted", tag=wave.tag, batch_id=wave.batch_id)
            path.unlink(missing_ok=True)
        except BackendError as exc:  # maybe created anyway: a re-run looks for it by its tag
            self._finish(wave, {}, f"the batch could not be sent: {exc}", final=False)
            return
        await self._wait(wave)

    async def _resume(self, wave: _Wave) -> None:
        """Wait for a batch sent by an earlier run (or find the one a crash left unrecorded)."""
        if wave.batch_id is None:
            wave.batch_id = await wave.client.find(wave.tag)
            if wave.batch_id is None:  # never created: send these calls in a new wave
                self._log(event="finished", tag=wave.tag, batch_id=None, status="never created")
                self._finish(wave, {}, None, resend=True)
                return
            self._log(event="submitted", tag=wave.tag, batch_id=wave.batch_id)
        await self._wait(wave)

    async def _wait(self, wave: _Wave) -> None:
        """Poll until the batch ends, download its answers, settle its calls. A provider that
        can't be reached fails the calls but leaves the batch open for a re-run to collect."""
        assert wave.batch_id is not None
        started, errors = time.monotonic(), 0
        cfg = self.engine.config
        try:
            while True:
                try:
                    state = await wave.client.poll(wave.batch_id)
                    errors = 0
                except BackendError:
                    errors += 1
                    if errors > cfg.max_retries:
                        raise
                    await asyncio.sleep(min(cfg.backoff_base_s * 2**errors, POLL_MAX_S))
                    continue
                if state.done:
                    break
                waited = time.monotonic() - started
                await asyncio.sleep(min(POLL_MAX_S, max(POLL_MIN_S, waited * POLL_FRACTION)))
            answers: dict[str, Completion | str] = {}
            async for key, result in wave.client.results(state):
                answers[key] = result
        except BackendError as exc:
            self._finish(wave, {}, f"batch {wave.batch_id} is still open ({exc})", final=False)
            return
        why = None if state.status in ("completed", "ended") else _why(state)
        self._finish(wave, answers, why)

    def _finish(
        self,
        wave: _Wave,
        answers: dict[str, Completion | str],
        why: str | None,
        *,
        resend: bool = False,
        final: bool = True,
    ) -> None:
        """Cache every answer, then settle the waiting calls: answer, CallFailed or resend."""
        from cai_kit.engine import CallFailed

        if wave.settled:
            return
        wave.settled = True
        stats, price = self.engine.stats, wave.client.price
        ok = failed = 0
        answered: list[tuple[str, Completion]] = []
        for key, result in answers.items():
            if isinstance(result, Completion) and not result.text.strip() and not result.logprobs:
                # paid, but like a synchronous empty reply never kept as an answer
                answers[key] = (f"{result.model or 'the model'} sent an empty reply (finish_reason:"
                                f" {result.finish_reason}); it is not kept as an answer.")  # fmt: skip
                stats.calls += 1
                failed += 1
                continue
            if isinstance(result, Completion):
                if result.cost is None and price is not None:  # at the batch price
                    u = result.usage
                    result.cost = price.cost(u.prompt_tokens, u.completion_tokens, batch=True)
                answered.append((key, result))
                ok += 1
                stats.calls += 1
                stats.prompt_tokens += result.usage.prompt_tokens
                stats.completion_tokens += result.usage.completion_tokens
                stats.cost += result.cost or 0.0
            else:
                failed += 1
        self.cache.put_many(answered)  # before anything is answered: a crash keeps them all
        for key, futures in wave.waiters.items():
            result = answers.get(key)
            for fut in futures:
                if fut.done():
                    continue
                if isinstance(result, Completion):
                    fut.set_result(result)
                elif resend:
                    fut.set_exception(_Resend())
                else:
                    stats.failures += 1
                    reason = " ".join(x for x in (why, result) if x) or "no answer in the batch"
                    fut.set_exception(CallFailed(f"Batch API: {reason}"))
        if final and wave.batch_id is not None:
            (self.dir / f"{wave.tag}.keys").unlink(missing_ok=True)
            self._log(event="finished", tag=wave.tag, batch_id=wave.batch_id, ok=ok,
                      failed=failed + len(wave.keys - answers.keys()), status=why or "completed")  # fmt: skip
        if why:
            print(f"--batch-api: {why} Re-run (or `cai-kit retry-failed RUN_DIR`) to send the "
                  "unanswered calls again.", file=sys.stderr)  # fmt: skip
        self._reserved -= wave.reserved
        self._close(wave)

    def _within_budget(
        self, client: BatchClient, calls: list[tuple[str, dict[str, Any], Any]]
    ) -> list[tuple[str, dict[str, Any], Any, float]]:
        """--max-cost: keep the calls whose worst case (every answer at max_tokens, at the
        batch price), with the batches still running, fits under the cap; stop the others.
        Each kept call carries its worst case, reserved until its batch ends."""
        cap = self.engine.config.max_cost
        if cap is None:
            return [(*call, 0.0) for call in calls]
        price = client.price
        spent = self.engine.stats.cost
        keep, total = [], spent + self._reserved
        for key, line, fut in calls:
            worst = _worst_case(line, price)
            if worst is None or total + worst > cap:
                reason = (
                    f"--max-cost ${cap:g}: the price of {getattr(client, 'model', client.name)} "
                    "is unknown, so its batch can't be capped: pass --price IN,OUT (USD per "
                    "million tokens) or drop --max-cost."
                    if worst is None
                    else f"Stopped before exceeding --max-cost ${cap:g} (spent ${spent:.4f}); "
                    "finished work is kept. Raise the cap and re-run to continue."
                )
                fut.set_exception(BudgetExceeded(reason))
                continue
            total += worst
            keep.append((key, line, fut, worst))
        self._reserved = total - spent
        return keep

    # --- the ledger ----------------------------------------------------------------------

    def _open(self, wave: _Wave) -> None:
        self._waves[wave.tag] = wave
        for key in wave.keys:
            self._wave_of[key] = wave.tag

    def _close(self, wave: _Wave) -> None:
        self._waves.pop(wave.tag, None)
        for key in wave.keys:
            if self._wave_of.get(key) == wave.tag:
                del self._wave_of[key]

    def _log(self, **event: Any) -> None:
        with self.ledger.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({**event, "at": time.time()}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _load_ledger(self) -> None:
        """Open batches of earlier runs: submitted (or maybe submitted) and not finished."""
        if not self.ledger.is_file():
            return
        state: dict[str, dict[str, Any]] = {}
        for raw in self.ledger.read_text(encoding="utf-8").splitlines():
            try:
                ev = json.loads(raw)
            except ValueError:
                continue  # a torn last line from a crash
            entry = state.setdefault(ev["tag"], {})
            entry[ev["event"]] = ev
        for tag, entry in state.items():
            keys_file = self.dir / f"{tag}.keys"
            if "finished" in entry or not keys_file.is_file():
                continue
            keys = set(keys_file.read_text(encoding="utf-8").split())
            batch_id = entry.get("submitted", {}).get("batch_id")
            self._open(_Wave(tag, BatchClient(), keys, batch_id=batch_id))

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for client in self._clients.values():
            if client is not None:
                await client.aclose()
        if self._own_cache:
            self.cache.close()


class _Resend(Exception):
    """A call recorded in a batch that was never created: the engine sends it again."""


_IDENTS: dict[int, tuple[Backend, str]] = {}


def _ident(backend: Backend) -> str:
    """The backend's identity as a dict key (memoised: asked once per call)."""
    hit = _IDENTS.get(id(backend))
    if hit is None or hit[0] is not backend:
        hit = _IDENTS[id(backend)] = (backend, json.dumps(backend.identity(), sort_keys=True))
    return hit[1]


def _worst_case(line: dict[str, Any], price: Any) -> float | None:
    if price is None:
        return None
    body = line.get("body") or line.get("params") or {}
    chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
    return float(price.cost(chars // 4 + 1, int(body.get("max_tokens") or 0), batch=True))


def _why(state: BatchState) -> str:
    words = {
        "expired": "expired before all its requests ran (the provider's 24 h window)",
        "cancelled": "was cancelled",
        "failed": "failed as a whole",
    }
    detail = f": {state.errors}" if state.errors else ""
    return f"batch {state.batch_id} {words.get(state.status, state.status)}{detail}."
