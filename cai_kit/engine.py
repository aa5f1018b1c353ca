"""The call engine: many model calls, fast, cheap and safe.

`Engine.call` is the only way cai-kit calls a model. In order, it
  1. serves the call from the content-addressed cache (never pay twice),
  2. joins an identical call already in flight (duplicates in the input are called once),
  3. stops cleanly before the next call would exceed --max-cost,
  4. waits for our own rpm/tpm token buckets and a concurrency slot,
  5. calls the backend with retries: exponential backoff with jitter on 429/5xx/timeouts/
     dropped connections, honouring Retry-After up to a cap; fatal 4xx fail at once.

`run_job` runs one record per input item on top of it: resume by record id (finished
records are skipped, failed ones retried), deterministic sharding, one crash-safe writer,
a progress bar, `manifest.json`, and a clean stop on Ctrl-C or budget with work kept.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cai_kit.cache import CallCache, cache_key
from cai_kit.errors import BackendError, BudgetExceeded, CaiKitError, redact
from cai_kit.llm.base import Backend, ChatMessages, Completion, GenParams
from cai_kit.records import RunManifest, stable_hash


class CallFailed(CaiKitError):
    """A model call that failed after its retries, or at once on a fatal error."""


@dataclass
class EngineConfig:
    concurrency: int | None = None  # None: the backend's default_concurrency
    rpm: float | None = None
    tpm: float | None = None
    max_retries: int = 5
    timeout_s: float = 120.0
    retry_after_cap_s: float = 60.0
    backoff_base_s: float = 0.5
    max_cost: float | None = None
    use_cache: bool = True
    cache_path: Path | None = None
    quiet: bool = False
    dry_run: bool = False


@dataclass
class EngineStats:
    calls: int = 0  # calls sent to a backend and answered (paid)
    cache_hits: int = 0
    failures: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("started")
        d["cost"] = round(self.cost, 6)
        d["elapsed_s"] = round(time.monotonic() - self.started, 3)
        return d


class TokenBucket:
    """Refills `rate_per_min` units per minute, up to one minute's worth."""

    def __init__(self, rate_per_min: float) -> None:
        self.capacity = max(1.0, rate_per_min / 60.0)  # at most one second's worth in a burst
        self.tokens = self.capacity
        self.rate = rate_per_min / 60.0
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, amount: float = 1.0) -> None:
        amount = min(amount, self.capacity)  # a request bigger than a burst waits for a full bucket
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= amount:
                    self.tokens -= amount
                    return
                await asyncio.sleep((amount - self.tokens) / self.rate)


def _estimate_tokens(messages: ChatMessages, params: GenParams) -> int:
    return sum(len(m.get("content", "")) for m in messages) // 4 + params.max_tokens


class Engine:
    def __init__(self, config: EngineConfig | None = None) -> None:
        from cai_kit.paths import call_cache_path

        self.config = config or EngineConfig()
        self.stats = EngineStats()
        self.cache = (
            CallCache(self.config.cache_path or call_cache_path())
            if self.config.use_cache
            else None
        )
        self._semaphores: dict[int, asyncio.Semaphore] = {}
        self._inflight: dict[str, asyncio.Future[Completion]] = {}
        self._in_flight = 0  # calls sent and not answered yet (for the budget check)
        self._rpm = TokenBucket(self.config.rpm) if self.config.rpm else None
        self._tpm = TokenBucket(self.config.tpm) if self.config.tpm else None

    def _semaphore(self, backend: Backend) -> asyncio.Semaphore:
        if id(backend) not in self._semaphores:
            n = self.config.concurrency or backend.default_concurrency
            self._semaphores[id(backend)] = asyncio.Semaphore(max(1, n))
        return self._semaphores[id(backend)]

    async def call(
        self, backend: Backend, messages: ChatMessages, params: GenParams, *, sample_index: int = 0
    ) -> Completion:
        key = cache_key(backend.identity(), messages, params.to_dict(), sample_index)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.stats.cache_hits += 1
            return hit
        if key in self._inflight:  # an identical call is on its way: share its answer
            self.stats.cache_hits += 1
            return await asyncio.shield(self._inflight[key])
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            completion = await self._call_uncached(backend, messages, params)
            if self.cache is not None:
                self.cache.put(key, completion)
            future.set_result(completion)
            return completion
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: sharers re-raise it themselves
            raise
        finally:
            del self._inflight[key]

    def _check_budget(self) -> None:
        """Stop before the next call could push spending past --max-cost, counting the calls
        already in flight at the average cost per call so far."""
        cap = self.config.max_cost
        if cap is None:
            return
        per_call = self.stats.cost / self.stats.calls if self.stats.calls else 0.0
        if self.stats.cost + (self._in_flight + 1) * per_call > cap:
            raise BudgetExceeded(
                f"Stopped before exceeding --max-cost ${cap:g} (spent ${self.stats.cost:.4f}); "
                "finished work is kept. Raise the cap and re-run to continue."
            )

    async def _call_uncached(
        self, backend: Backend, messages: ChatMessages, params: GenParams
    ) -> Completion:
        cfg = self.config
        attempt = 0
        while True:
            if self._rpm:
                await self._rpm.take(1)
            if self._tpm:
                await self._tpm.take(_estimate_tokens(messages, params))
            async with self._semaphore(backend):
                self._check_budget()
                self._in_flight += 1
                try:
                    completion = await asyncio.wait_for(
                        backend.chat(messages, params), cfg.timeout_s
                    )
                    error: BackendError | None = None
                except asyncio.TimeoutError:
                    error = BackendError(f"No answer within {cfg.timeout_s:g} s.")
                    error.retryable = True
                except BackendError as exc:
                    error = exc
                finally:
                    self._in_flight -= 1
            if error is None:
                self.stats.calls += 1
                self.stats.prompt_tokens += completion.usage.prompt_tokens
                self.stats.completion_tokens += completion.usage.completion_tokens
                self.stats.cost += completion.cost or 0.0
                return completion
            if not error.retryable or attempt >= cfg.max_retries:
                self.stats.failures += 1
                tries = f" after {attempt + 1} attempts" if error.retryable else ""
                raise CallFailed(f"{error}{tries}") from None
            delay = cfg.backoff_base_s * (2**attempt) * (0.5 + random.random())
            if error.retry_after is not None:
                delay = max(delay, error.retry_after)
            attempt += 1
            self.stats.retries += 1
            await asyncio.sleep(min(delay, cfg.retry_after_cap_s))

    async def aclose(self) -> None:
        if self.cache is not None:
            self.cache.close()


# --- jobs ------------------------------------------------------------------------------


@dataclass
class JobSpec:
    """One output record per input item; the record id decides whether work is done."""

    name: str
    items: Sequence[Any]
    item_id: Callable[[Any], str]
    process: Callable[[Any, Engine], Awaitable[BaseModel]]
    output: Path
    record_type: type[BaseModel]
    run_dir: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    estimate: Callable[[Any], int] | None = None  # approx calls per item, for --dry-run
    shard: tuple[int, int] | None = None
    backends: list[Backend] = field(default_factory=list)  # closed when the job ends


@dataclass
class JobSummary:
    total: int = 0
    already_done: int = 0
    done: int = 0
    failed: int = 0
    stopped: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    estimated_calls: int | None = None

    def line(self) -> str:
        s = self.stats
        parts = [f"{self.done} done", f"{self.failed} failed", f"{self.already_done} already done"]
        if self.estimated_calls is not None:
            return f"dry run: {self.total} rows to do, about {self.estimated_calls} calls; nothing was called."
        parts.append(
            f"{s.get('calls', 0)} calls, {s.get('cache_hits', 0)} cache hits, {s.get('retries', 0)} retries"
        )
        parts.append(
            f"{s.get('prompt_tokens', 0) + s.get('completion_tokens', 0)} tokens, ${s.get('cost', 0):.4f}"
        )
        text = "; ".join(parts)
        if self.failed:
            text += (
                ". Re-run the same command (or `cai-kit retry-failed RUN_DIR`) to retry failures"
            )
        if self.stopped:
            text += f". Stopped: {self.stopped}"
        return text


def in_shard(item_id: str, shard: tuple[int, int] | None) -> bool:
    """Deterministic 1/N split by record id (I is 1-based)."""
    if shard is None:
        return True
    i, n = shard
    return int(stable_hash("shard", item_id), 16) % n == i - 1


def _write_manifest(spec: JobSpec, summary: JobSummary, started: str, status: str) -> None:
    from cai_kit.records import Provenance

    m = dict(spec.manifest)
    manifest = RunManifest(
        command=m.pop("command", spec.name),
        argv=[redact(a) for a in m.pop("argv", [])],
        started_at=started,
        finished_at=None if status == "running" else datetime.now(timezone.utc).isoformat(),
        status=status,  # type: ignore[arg-type]
        provenance=Provenance.model_validate(m.pop("provenance", {})),
        inputs=m.pop("inputs", {}),
        outputs={"records": spec.output.name, **m.pop("outputs", {})},
        stats={"total": summary.total, "done": summary.done, "failed": summary.failed,
               "already_done": summary.already_done, "stopped": summary.stopped, **summary.stats},
    )  # fmt: skip
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    tmp = spec.run_dir / "manifest.json.tmp"
    tmp.write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    tmp.replace(spec.run_dir / "manifest.json")


def run_async(coro: Awaitable[Any]) -> Any:
    """`asyncio.run`, on uvloop when it is installed (a faster loop and sockets for the same
    code; CAI_KIT_UVLOOP=0 turns it off)."""
    if os.environ.get("CAI_KIT_UVLOOP", "1") != "0":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro)  # type: ignore[arg-type]
    return asyncio.run(coro)  # type: ignore[arg-type]


def run_job(spec: JobSpec, config: EngineConfig) -> JobSummary:
    """Run the items that are not done yet; see the module docstring."""
    from cai_kit.io import latest_by_id

    existing = latest_by_id(spec.output, spec.record_type)
    done_ids = {i for i, r in existing.items() if getattr(r, "status", "ok") == "ok"}
    todo, seen, pending = [], set(), []
    for item in spec.items:
        iid = spec.item_id(item)
        if iid in seen or not in_shard(iid, spec.shard):
            continue
        seen.add(iid)
        if iid not in done_ids:  # (the id is computed once per item: a re-run is mostly this)
            pending.append(item)
        todo.append(item)
    summary = JobSummary(total=len(todo))
    summary.already_done = len(todo) - len(pending)
    started = datetime.now(timezone.utc).isoformat()
    if config.dry_run:
        summary.total = len(pending)
        summary.estimated_calls = (
            sum(spec.estimate(it) for it in pending) if spec.estimate else len(pending)
        )
        return summary

    engine = Engine(config)
    _write_manifest(spec, summary, started, "running")
    status = "finished"
    try:
        run_async(_run_items(spec, engine, pending, summary))
        if summary.stopped:
            status = "stopped"
    except KeyboardInterrupt:
        summary.stopped = "interrupted (Ctrl-C); finished work is kept"
        status = "stopped"
        raise
    finally:
        summary.stats = engine.stats.as_dict()
        _write_manifest(spec, summary, started, status)
    return summary


class _InfoColumn:
    """The progress bar's live figures, computed when the bar is drawn (10 times a second),
    not once per finished row."""

    def __init__(self, engine: Engine, summary: JobSummary) -> None:
        from rich.progress import ProgressColumn
        from rich.text import Text

        outer = self

        class Column(ProgressColumn):
            def render(self, task: Any) -> Text:
                return Text(outer.text())

        self.engine, self.summary, self.column = engine, summary, Column()

    def text(self) -> str:
        s = self.engine.stats
        rate = s.calls / max(time.monotonic() - s.started, 1e-6)
        tokens = s.prompt_tokens + s.completion_tokens
        return f"failed {self.summary.failed} | {rate:.1f} calls/s | {tokens} tok | ${s.cost:.4f}"


async def _run_items(
    spec: JobSpec, engine: Engine, pending: list[Any], summary: JobSummary
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cai_kit.io import JsonlWriter

    width = max(
        1,
        (
            engine.config.concurrency
            or max((b.default_concurrency for b in spec.backends), default=8)
        )
        * 2,
    )
    slots = asyncio.Semaphore(width)  # items in flight: enough to keep every call slot busy
    stop = asyncio.Event()
    progress = Progress(
        TextColumn(f"[bold]{spec.name}[/bold]"), BarColumn(), MofNCompleteColumn(),
        _InfoColumn(engine, summary).column, TimeElapsedColumn(),
        disable=engine.config.quiet, transient=False,
    )  # fmt: skip
    task = progress.add_task(spec.name, total=len(pending))
    advance = (lambda: None) if engine.config.quiet else (lambda: progress.advance(task))

    async def one(item: Any, writer: JsonlWriter) -> None:
        async with slots:
            if stop.is_set():
                return
            try:
                record = await spec.process(item, engine)
            except BudgetExceeded as exc:
                summary.stopped = str(exc)
                stop.set()
                return
            except CallFailed:  # a process that did not record its own failure: retried on re-run
                summary.failed += 1
                advance()
                return
            writer.write(record)
            if getattr(record, "status", "ok") == "ok":
                summary.done += 1
            else:
                summary.failed += 1
            advance()

    with progress, JsonlWriter(spec.output) as writer:
        try:
            await asyncio.gather(*(one(it, writer) for it in pending))
        finally:
            for b in spec.backends:
                await b.aclose()
            await engine.aclose()
