"""`run_job`: one record per input item, on top of the engine (`core.Engine`).

It resumes by record id (finished records are skipped, failed ones retried), shards
deterministically by prompt (`JobSpec.shard_key`: the union of the N shards is exactly the
unsharded run), writes through one crash-safe writer, shows a progress bar, keeps
`manifest.json`, and stops cleanly on Ctrl-C or budget with work kept. A fixed number of
workers takes the items one after another, so memory does not grow with the input; with
--batch-api the items run in passes, one provider batch wave each (`cai_kit.engine.batch`).

    summary = run_job(JobSpec(name="revise", items=prompts, ...), EngineConfig(max_cost=5))
    print(summary.line())
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from cai_kit.engine.base import CallFailed, Deferred
from cai_kit.engine.batch_providers import NO_BATCH_API
from cai_kit.engine.budget import Budget, with_budget
from cai_kit.engine.core import Engine, EngineConfig, fit_call
from cai_kit.engine.loop import run_sync
from cai_kit.engine.spend import spend_text, stats_spend
from cai_kit.errors import BudgetExceeded, redact
from cai_kit.llm.base import Backend, GenParams
from cai_kit.notices import say
from cai_kit.records import RunManifest, stable_hash

if TYPE_CHECKING:
    from cai_kit.engine.batch import BatchCollector

# How every job command exits (README "Exit codes", the commands' --help), so that a script can
# tell a finished run from one to retry. 2 is click's own code for a usage error.
EXIT_OK = 0  # every row done (or nothing left to do)
EXIT_FAILED = 1  # an error, or no row done: every row failed
EXIT_PARTIAL = 3  # some rows done, some failed: `cai-kit retry-failed RUN` redoes those
EXIT_STOPPED = 4  # stopped by --max-cost before the end: finished work is kept
_SEVERITY = (EXIT_OK, EXIT_PARTIAL, EXIT_STOPPED, EXIT_FAILED)  # worst last

# Outside a terminal (a log, a pipe, CI) progress is a whole plain line this often, and at the end.
PLAIN_PROGRESS_EVERY_S = 10.0


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
    estimate: Callable[[Any], int] | None = None  # calls per item, only without estimate_tokens
    # --dry-run preview: per item, (backend, prompt tokens, completion tokens) of each call the
    # item makes (cai_kit.engine.cost_preview); the call count shown is the number of these tuples
    estimate_tokens: Callable[[Any], list[tuple[Backend, int, int]]] | None = None
    shard: tuple[int, int] | None = None
    # What --shard splits by: the item's prompt id, so every sample and pair of a prompt
    # lands in one shard. None: the item id (fine when an item is one whole prompt).
    shard_key: Callable[[Any], str] | None = None
    backends: list[Backend] = field(default_factory=list)  # closed when the job ends


@dataclass(frozen=True)
class JobProgress:
    """Where a job stands, handed to `EngineConfig.progress` after every finished row."""

    job: str
    done: int
    failed: int
    total: int  # rows this run has to do (those already done before are not counted)
    stats: dict[str, Any]  # calls, tokens, cost so far (`EngineStats.as_dict`)


@dataclass
class JobSummary:
    total: int = 0
    already_done: int = 0
    done: int = 0
    failed: int = 0
    stopped: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    estimated_calls: int | None = None
    cost_preview: str | None = None  # tokens and price (synchronous and Batch API), dry run
    cost_basis: str = ""  # how the preview was made (an estimate, the worst case)
    run_dir: Path | None = None  # where `retry-failed` finds the run
    sync_retry: bool = False  # rows failed because the provider has no Batch API

    @property
    def exit_code(self) -> int:
        """EXIT_OK, EXIT_FAILED (rows failed and none is done), EXIT_PARTIAL or EXIT_STOPPED."""
        if self.estimated_calls is not None:
            return EXIT_OK
        if self.failed and not self.done + self.already_done:
            return EXIT_FAILED
        if self.stopped:
            return EXIT_STOPPED
        return EXIT_PARTIAL if self.failed else EXIT_OK

    def retry_command(self) -> str:
        """The command that redoes the failed rows, from any directory."""
        run = os.path.abspath(self.run_dir) if self.run_dir is not None else "RUN_DIR"
        return f"cai-kit retry-failed {run}" + (" --sync" if self.sync_retry else "")

    def line(self) -> str:
        s = self.stats
        parts = [f"{self.done} done", f"{self.failed} failed", f"{self.already_done} already done"]
        if self.estimated_calls is not None:
            cost = f"; {self.cost_preview}" if self.cost_preview else ""
            basis = f" {self.cost_basis}" if self.cost_preview and self.cost_basis else ""
            return f"dry run: {self.total} rows to do, about {self.estimated_calls} calls{cost}; nothing was called.{basis}"
        unanswered = s.get("sent_may_be_billed", 0)
        parts.append(
            f"{s.get('calls', 0)} calls, {s.get('cache_hits', 0)} cache hits, {s.get('retries', 0)} retries"
            + (f", {unanswered} sent, may be billed (no answer came)" if unanswered else "")
        )
        parts.append(f"{token_counts(s)}, {stats_spend(s, hint=True)}")
        text = "; ".join(parts)
        if self.failed and self.sync_retry:
            text += f". The provider has no Batch API: `{self.retry_command()}` redoes them"
        elif self.failed:
            text += (
                f". `{self.retry_command()}` (or the same command again) retries the failed rows"
            )
        if self.stopped:
            text += f". Stopped: {self.stopped}"
        return text


def token_counts(stats: dict[str, Any]) -> str:
    """ "1234 tokens" plus, where nonzero, how many of them the provider's prompt cache served
    (billed at its cached rate) and how many were hidden reasoning (billed as output)."""
    text = f"{stats.get('prompt_tokens', 0) + stats.get('completion_tokens', 0)} tokens"
    parts = [f"{stats[k]} {k.removesuffix('_tokens')}" for k in ("cached_tokens", "reasoning_tokens") if stats.get(k)]  # fmt: skip
    return f"{text} ({', '.join(parts)})" if parts else text


def worst_exit(*summaries: JobSummary) -> int:
    """One exit code for a command that ran several jobs (e.g. prefs: sampling, judging)."""
    return max((s.exit_code for s in summaries), key=_SEVERITY.index, default=EXIT_OK)


def in_shard(key: str, shard: tuple[int, int] | None) -> bool:
    """Deterministic 1/N split by a key, the prompt id for every job (I is 1-based)."""
    if shard is None:
        return True
    i, n = shard
    return int(stable_hash("shard", key), 16) % n == i - 1


def _write_manifest(spec: JobSpec, summary: JobSummary, started: str, status: str) -> None:
    from cai_kit.records import Provenance

    m = dict(spec.manifest)
    manifest = RunManifest(
        command=m.pop("command", spec.name),
        argv=[redact(a) for a in m.pop("argv", [])],
        cwd=os.getcwd(),
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


def run_job(spec: JobSpec, config: EngineConfig) -> JobSummary:
    """Run the items that are not done yet; see the module docstring. Every job of a command
    spends through the command's one ledger (`config.budget`, `budget.with_budget`): once the
    cap has stopped a job, a later job does not start, and a row that failed earlier in the
    same command (an earlier round) is left for a re-run instead of being sent again."""
    from cai_kit.io import latest_status

    config = with_budget(config)
    ledger = config.budget
    assert ledger is not None
    done_ids = {i for i, s in latest_status(spec.output, spec.record_type).items() if s == "ok"}
    todo, seen, pending = [], set(), []
    for item in spec.items:
        iid = spec.item_id(item)
        key = spec.shard_key(item) if spec.shard_key else iid
        if iid in seen or not in_shard(key, spec.shard):
            continue
        seen.add(iid)
        if iid not in done_ids:  # (the id is computed once per item: a re-run is mostly this)
            pending.append(item)
        todo.append(item)
    summary = JobSummary(total=len(todo), run_dir=spec.run_dir)
    summary.already_done = len(todo) - len(pending)
    started = datetime.now(timezone.utc).isoformat()
    if not config.dry_run:  # failed earlier in this command: retried on a re-run
        earlier = ledger.failed_earlier(spec.output)
        left = [it for it in pending if not earlier or spec.item_id(it) not in earlier]
        summary.failed, pending = len(pending) - len(left), left
    if config.dry_run:
        summary.total = len(pending)
        if spec.estimate_tokens is not None:  # the calls themselves: their count and price
            from cai_kit.engine.cost_preview import CostPreview

            calls = (c for it in pending for c in spec.estimate_tokens(it))
            preview = CostPreview.of(calls, batch_api=config.batch_api, price=config.price,
                                     fit=lambda b, c, e: b.output_cap(fit_call(config, b, GenParams(
                                         max_tokens=c, reasoning_effort=e))))  # fmt: skip
            summary.estimated_calls, summary.cost_preview = preview.calls, preview.line()
            summary.cost_basis = preview.basis()
            worst = preview.batch_cost if config.batch_api else preview.sync_cost
            summary.cost_preview += _against_the_cap(ledger, worst, preview.unknown)
        else:
            summary.estimated_calls = (
                sum(spec.estimate(it) for it in pending) if spec.estimate else len(pending)
            )
        return summary

    if ledger.stopped:  # the cap stopped an earlier job of this command: this one never starts
        summary.stopped = f"not started: {ledger.message()}"
        summary.stats = {"cost": 0.0, "calls": 0}
        _write_manifest(spec, summary, started, "stopped")
        return summary
    engine = Engine(config)
    engine.job = spec.name
    collector: BatchCollector | None = None
    if config.batch_api or (spec.run_dir / "batches" / "ledger.jsonl").is_file():
        from cai_kit.engine.batch import BatchCollector, has_open_batches

        # without --batch-api, a batch an earlier run left open is still waited for
        if config.batch_api or has_open_batches(spec.run_dir):
            engine.batch = collector = BatchCollector(engine, spec.run_dir)
    _write_manifest(spec, summary, started, "running")
    status = "finished"
    try:
        run_sync(_run_items(spec, engine, collector, pending, summary))  # in a notebook too
        if engine.budget_stop:  # state the spend after the calls in flight were paid too
            summary.stopped = engine.budget_message()
        if summary.stopped:
            status = "stopped"
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or an awaiting task cancelled
        summary.stopped = "interrupted (Ctrl-C); finished work is kept"
        status = "stopped"
        raise
    finally:
        summary.stats = engine.stats.as_dict()
        summary.stats["command"] = ledger.as_dict()  # the whole command so far (every job)
        _write_manifest(spec, summary, started, status)
    return summary


def _against_the_cap(ledger: Budget, worst: float, unknown: set[str]) -> str:
    """--dry-run: the worst case of the whole command so far (this job and those previewed
    before it) next to --max-cost, before anything starts."""
    total = ledger.add_preview(worst)
    cap = ledger.cap
    if cap is None:
        return ""
    if unknown:
        return f"; --max-cost ${cap:g} can't be compared: a price is unknown"
    fits = "fits under" if total <= cap + 1e-12 else "is over; the run would stop at"
    return f"; worst case of the whole command so far ${total:.4f} {fits} --max-cost ${cap:g}"


class _InfoColumn:
    """The progress bar's live figures, computed when the bar is drawn (10 times a second),
    not once per finished row."""

    def __init__(
        self, engine: Engine, collector: BatchCollector | None, summary: JobSummary
    ) -> None:
        from rich.progress import ProgressColumn
        from rich.text import Text

        outer = self

        class Column(ProgressColumn):
            def render(self, task: Any) -> Text:
                return Text(outer.text())

        self.engine, self.collector, self.summary = engine, collector, summary
        self.column = Column()

    def text(self) -> str:
        s = self.engine.stats
        rate = s.calls / max(time.monotonic() - s.started, 1e-6)
        tokens = s.prompt_tokens + s.completion_tokens
        spent = spend_text(s.cost, s.unpriced_calls)
        text = f"failed {self.summary.failed} | {rate:.1f} calls/s | {tokens} tok | {spent}"
        batch = self.collector.status() if self.collector is not None else ""
        return f"{text} | {batch}" if batch else text


class _PlainProgress:
    """Progress outside a terminal: one whole line every PLAIN_PROGRESS_EVERY_S and at the end,
    never redrawn or wrapped, so a log or a CI page reads it line by line:

        generate: 12/40 rows | failed 0 | 3.1 calls/s | 2480 tok | $0.0012 | 0:00:04
    """

    def __init__(self, name: str, total: int, info: _InfoColumn) -> None:
        self.name, self.total, self.info = name, total, info
        self.started = time.monotonic()

    def line(self) -> str:
        s = self.info.summary
        seconds = int(time.monotonic() - self.started)
        elapsed = f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        rows = f"{s.done + s.failed}/{self.total} rows"
        return f"{self.name}: {rows} | {self.info.text()} | {elapsed}"

    def print(self) -> None:
        say(self.line())  # the `cai_kit` logger: stderr by default (cai_kit.notices)

    async def every(self) -> None:
        while True:
            await asyncio.sleep(PLAIN_PROGRESS_EVERY_S)
            self.print()


async def _run_items(
    spec: JobSpec,
    engine: Engine,
    collector: BatchCollector | None,
    pending: list[Any],
    summary: JobSummary,
) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cai_kit.io import JsonlWriter

    width = max(
        1,
        (
            engine.config.concurrency
            or max((b.default_concurrency for b in spec.backends), default=8)
        )
        * 2,
    )  # items in flight: enough to keep every call slot busy
    if collector is not None and engine.config.batch_api:  # rows are let go, many at once
        width = collector.rows_in_flight
    stop = asyncio.Event()
    info = _InfoColumn(engine, collector, summary)
    report = engine.config.progress  # a caller's own display (the Python API's progress=)
    own = report is None and not engine.config.quiet
    live = own and sys.stderr.isatty()  # else: plain lines (or none: -q, or a callback)
    progress = Progress(
        TextColumn(f"[bold]{spec.name}[/bold]"), BarColumn(bar_width=20), MofNCompleteColumn(),
        info.column, TimeElapsedColumn(), console=Console(stderr=True),
        disable=not live, transient=False,
    )  # fmt: skip
    task = progress.add_task(spec.name, total=len(pending))
    plain = _PlainProgress(spec.name, len(pending), info) if own and not live else None

    def advance() -> None:
        if live:
            progress.advance(task)
        if report is not None:
            report(JobProgress(spec.name, summary.done, summary.failed, len(pending), engine.stats.as_dict()))  # fmt: skip

    async def one(item: Any, writer: JsonlWriter, deferred: list[Any]) -> None:
        try:
            with engine.item_scope():
                record = await spec.process(item, engine)
        except Deferred:  # --batch-api: its call is in this wave's batch; run again after it
            deferred.append(item)
            return
        except BudgetExceeded as exc:
            summary.stopped = str(exc)
            stop.set()
            return
        except CallFailed:  # a process that did not record its own failure: retried on re-run
            summary.failed += 1
            failed_ids.append(spec.item_id(item))
            advance()
            return
        writer.write(record)
        if getattr(record, "status", "ok") == "ok":
            summary.done += 1
        else:
            summary.failed += 1
            failed_ids.append(spec.item_id(item))
            summary.sync_retry |= NO_BATCH_API in (getattr(record, "error", None) or "")
        advance()

    async def run_pass(items: list[Any], writer: JsonlWriter) -> list[Any]:
        deferred: list[Any] = []
        queue = iter(items)

        async def worker() -> None:
            for item in queue:  # shared by the workers: each item is taken once
                if stop.is_set():
                    return
                await one(item, writer, deferred)

        await asyncio.gather(*(worker() for _ in range(min(width, len(items)))))
        return deferred

    failed_ids: list[str] = []
    ticker = asyncio.get_running_loop().create_task(plain.every()) if plain else None
    with progress, JsonlWriter(spec.output) as writer:
        try:
            rows = await run_pass(pending, writer)
            while collector is not None and await collector.end_pass() and rows:
                stop.clear()  # after a budget stop, rows whose answers came can still finish
                rows = await run_pass(rows, writer)
        finally:
            engine.ledger.mark_failed(spec.output, failed_ids)
            if ticker is not None and plain is not None:
                ticker.cancel()
                plain.print()  # the last line: where the job ended
            for b in spec.backends:
                await b.aclose()
            await engine.aclose()
