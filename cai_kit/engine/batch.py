"""`--batch-api`: the engine's calls go out as provider Batch API jobs, in waves, resumably,
in memory that does not grow with the number of rows.

How a job runs (`run_job` drives it, pass after pass):
  1. A pass runs the rows that are not done, a bounded number at a time (`ROWS_IN_FLIGHT`).
     The engine hands every uncached call of a batchable backend to the collector (`call`),
     which appends it to the wave's batch input file (one line, `custom_id` = the call's cache
     key; identical calls once) and blocks the row. When every running row is blocked, the
     blocked rows are *deferred*: `Deferred` unwinds them and frees their memory, and the
     next rows start. A row that makes no new call finishes and is written as usual.
  2. At the end of the pass (`end_pass`) the wave's input files are submitted as batches (one
     per provider, split at its size limits; a full file goes out at once), polled, and their
     answers streamed into the call cache.
  3. The next pass runs the deferred rows again from the start: the calls answered so far are
     now cache hits (not counted as hits: they are this run's own calls being replayed), so
     each row goes on to its next step. Multi-step work (revise's critique -> revision rounds,
     judging both orders) thus runs as successive waves, each one batch per provider.
Only the input (the prompts) and a set of small hashes of the calls answered in this run stay
in memory for the whole job; rows, requests and answers live on disk between waves.

Resumable, never paying twice. Before anything waits on a batch, `RUN_DIR/batches/ledger.jsonl`
records it (an fsync'ed line per event) with the cache keys of its calls (`<tag>.keys`). A
re-run after `kill -9` (with --batch-api or without: `run_job` then puts a collector in front
of the calls of open batches only) finds a row's call in an open batch and polls that batch
instead of sending the call again; a wave killed between "submitting" and "submitted" is found again by its tag
in the batch's metadata. Answers go into the call cache (or `RUN_DIR/batches/results.sqlite`
with --no-cache) in one transaction per batch, so a later synchronous re-run is all cache hits.
Per-request errors, and calls of an expired, cancelled or failed batch, raise `CallFailed` in
the next pass: the record is `failed`, and a re-run (or `retry-failed`) sends it again. Only
answer lines for the calls a batch was sent for are taken, once each. `--max-cost` reserves
each call's worst case in the engine's one ledger (`Engine.reserve`) until its batch ends; the
ledger file records it, so a reopened batch is reserved again (one from an older version's
ledger, which recorded none, is held at its calls' worst case as rows meet them). Past
--batch-deadline a batch is cancelled.

    engine.batch = BatchCollector(engine, run_dir)   # run_job does this for --batch-api
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cai_kit.engine.base import CallFailed, Deferred
from cai_kit.engine.batch_providers import NO_BATCH_API, BatchClient, BatchState, batch_client_for
from cai_kit.engine.cache import CallCache
from cai_kit.engine.core import Engine
from cai_kit.engine.pricing import batch_factor, price_for_backend, prompt_tokens_upper
from cai_kit.errors import BackendError, BudgetExceeded, CaiKitError, redact
from cai_kit.llm.base import Backend, ChatMessages, Completion, GenParams
from cai_kit.notices import say

_ITEM: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "cai_batch_item", default=None
)
# rows run at once in a pass (their calls are written out, then they are let go)
ROWS_IN_FLIGHT = int(os.environ.get("CAI_KIT_BATCH_ROWS", "1024"))
POLL_FRACTION = 0.01  # poll again after 1% of the time waited so far...
POLL_MIN_S, POLL_MAX_S = 0.1, 30.0  # ...within these bounds
DEADLINE_S = 24 * 3600.0  # a batch is cancelled this long after it was submitted (the
# providers' completion window; --batch-deadline sets another)...
CANCEL_GRACE_S = 600.0  # ...and waited for this long to confirm it (OpenAI: up to 10 minutes)


@dataclass
class _Input:
    """The batch input file being written for one provider in this wave."""

    client: BatchClient
    path: Path
    fh: IO[str]
    keys: IO[str]
    digest: Any
    requests: int = 0
    size: int = 0
    reserved: float = 0.0


@dataclass
class _Wave:
    """One batch: sent by this run (`requests` lines) or an open one found in the ledger."""

    tag: str
    client: BatchClient
    requests: int = 0
    batch_id: str | None = None
    reserved: float = 0.0  # --max-cost: the worst case held for this batch until it ends
    task: asyncio.Task[None] | None = None
    keys: frozenset[str] = frozenset()  # an earlier run's open batch: its calls...
    since: float | None = None  # ...and when it was being submitted
    unrecorded: bool = False  # ...whose ledger (an older version's) recorded no reservation
    provider: str = ""  # ...and the provider the ledger names
    per_call: float = 0.0  # then: the largest worst case of its calls met so far


def has_open_batches(run_dir: Path) -> bool:
    """Whether an earlier run left a batch open in this run directory (a job without
    --batch-api then still waits for it rather than sending its calls again)."""
    return any(
        "finished" not in entry and (Path(run_dir) / "batches" / f"{tag}.keys").is_file()
        for tag, entry in _read_ledger(Path(run_dir) / "batches" / "ledger.jsonl").items()
    )


class BatchCollector:
    def __init__(self, engine: Engine, run_dir: Path) -> None:
        self.engine = engine
        # without --batch-api, only the calls in batches still open from earlier runs come here
        self.collect_only = not engine.config.batch_api
        self.dir = Path(run_dir) / "batches"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ledger = self.dir / "ledger.jsonl"
        if engine.cache is None:  # --no-cache: this run directory's own cache. Rows are replayed
            # from the cache pass after pass, so every answer (batched or not) must be kept.
            engine.cache = CallCache(self.dir / "results.sqlite")
        self.cache = engine.cache
        self._kept: dict[str, Completion] = {}  # unusable answers forgotten in the cache
        self.rows_in_flight = max(1, ROWS_IN_FLIGHT)
        self.waves = 0  # waves sent by this run
        self._clients: dict[str, BatchClient | None] = {}
        self._inputs: dict[str, _Input] = {}  # by backend: this wave's input files
        self._written: set[int] = set()  # hash(key) of the calls in this wave's files
        self._n_inputs = 0
        self._sent: list[_Wave] = []  # this wave's batches (sent, or resumed from the ledger)
        self._open: dict[str, _Wave] = {}  # earlier runs' open batches by tag
        self._wave_of: dict[str, str] = {}  # cache key -> tag of such a batch
        self._answered: set[int] = set()  # hash(key): answered or counted as a hit, this run
        self._failed: dict[str, str] = {}  # cache key -> why no batch answered it (this run)
        self._blocked: list[asyncio.Future[Completion]] = []
        self._running = 0
        self._waiting: dict[object, int] = {}
        self._check_handle: asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._progress: dict[str, tuple[int, int]] = {}  # this wave's batches: (answered, of)
        self._known_ids: frozenset[str] = frozenset()  # batch ids the ledger names
        self.cancel_reason: str | None = None  # set by cancel_open: batches are cancelled now
        self._load_ledger()

    # --- which calls ---------------------------------------------------------------------

    def client(self, backend: Backend) -> BatchClient | None:
        ident = _ident(backend)
        if ident not in self._clients:
            self._clients[ident] = client = batch_client_for(backend)
            if client is not None:
                client.price = price_for_backend(backend, self.engine.config.price)
                if self.engine.config.price is not None and batch_factor(backend) is None:
                    say(f"--batch-api: no batch discount is known for {backend.model} at "
                          "its --api-base; its batches are counted at the full --price.")  # fmt: skip
            else:
                say(f"--batch-api: {backend.model} ({backend.kind}) has no Batch API; its "
                      "calls run synchronously.")  # fmt: skip
        return self._clients[ident]

    def accepts(self, backend: Backend, key: str) -> bool:
        if self.collect_only and key not in self._wave_of and key not in self._failed:
            return False
        return self.client(backend) is not None

    def forget(self, key: str) -> None:
        """`Engine.forget` (an unusable answer, asked again by a re-run): dropped from the
        cache at once (a kill -9 must not leave it there), and kept in memory for this run,
        so that a row replayed in a later pass reads the same answer (`kept`)."""
        if key not in self._kept and (hit := self.cache.get(key)) is not None:
            self._kept[key] = hit
        self.cache.delete(key)

    def kept(self, key: str) -> Completion | None:
        """An answer this run forgot in the cache, for a row that meets its call again."""
        return self._kept.get(key)

    def status(self) -> str:
        """The current wave at the provider, for the progress bar: requests answered so far
        (from the last polls), or the last wave's once it has ended."""
        if not self._progress:
            return ""
        done = sum(d for d, _ in self._progress.values())
        total = sum(t for _, t in self._progress.values())
        return f"wave {self.waves}: {done:,}/{total:,} requests answered"

    def replayed(self, key: str) -> bool:
        """Whether a cache hit is a deferred row meeting a call again that this run has paid
        or already counted as a hit (it is not a new hit for the summary)."""
        h = hash(key)
        if h in self._answered:
            return True
        self._answered.add(h)
        return False

    # --- rows: they are deferred when every running one is blocked on a batched call ------

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
        if self._blocked and len(self._waiting) >= self._running:
            blocked, self._blocked = self._blocked, []
            for fut in blocked:
                if not fut.done():
                    fut.set_exception(Deferred())

    # --- the call ------------------------------------------------------------------------

    async def call(
        self, key: str, backend: Backend, messages: ChatMessages, params: GenParams
    ) -> Completion:
        """The answer to one call if a batch has given it; otherwise the call joins this
        wave's batch and the row is deferred (`Deferred`) until the wave has ended."""
        if (why := self._failed.get(key)) is not None:
            self.engine.stats.failures += 1
            raise CallFailed(f"Batch API: {why}")
        item = _ITEM.get()
        if item is None:
            raise CaiKitError("--batch-api calls are made by job rows (run_job), not alone.")
        client = self.client(backend)
        assert client is not None
        if (tag := self._wave_of.get(key)) is not None:  # an earlier run sent it: never resend
            if self._open[tag].unrecorded:
                self._hold_reopened(self._open[tag], client, messages, params)
            self._resume(self._open[tag], client)
        else:
            self._write(client, _ident(backend), key, messages, params)
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self._blocked.append(future)
        self._waiting[item] = self._waiting.get(item, 0) + 1
        try:
            self._schedule_check()
            return await future
        finally:
            self._waiting[item] -= 1
            if not self._waiting[item]:
                del self._waiting[item]

    def _write(
        self, client: BatchClient, ident: str, key: str, messages: ChatMessages, params: GenParams
    ) -> None:
        """Append the call to this wave's input file for its provider (once per identical
        call); a file at the provider's limits is submitted at once and a new one begun."""
        h = hash(key)
        if h in self._written:
            return
        line = client.line(key, messages, params)
        text = json.dumps(line, ensure_ascii=False) + "\n"
        n = len(text.encode())
        inp = self._inputs.get(ident)
        if inp is not None and (inp.requests >= client.max_requests
                                or inp.size + n > client.max_bytes):  # fmt: skip
            self._submit(self._inputs.pop(ident))
            inp = None
        sent = params.replace(max_tokens=_sent_cap(line, params))  # (thinking budgets added)
        worst = self._reserve(client, messages, sent)  # may stop the row: BudgetExceeded
        if inp is None:
            self._n_inputs += 1
            path = self.dir / f"wave-{os.getpid()}-{self._n_inputs}.input.tmp"
            inp = self._inputs[ident] = _Input(
                client, path, path.open("w", encoding="utf-8"),
                path.with_suffix(".keys.tmp").open("w", encoding="utf-8"),
                hashlib.sha256(os.urandom(16)),
            )  # fmt: skip
        inp.fh.write(text)
        inp.keys.write(key + "\n")
        inp.digest.update(key.encode())
        inp.requests += 1
        inp.size += n
        inp.reserved += worst
        self._written.add(h)

    def _reserve(self, client: BatchClient, messages: ChatMessages, params: GenParams) -> float:
        """--max-cost: hold the call's worst case (its prompt bounded as a synchronous call's
        is, system prompt included, and every token of max_tokens answered, at the batch
        price) in the engine's one ledger until its batch can no longer bill it, or stop the
        row if it might not fit under the cap next to everything else reserved. The worst case
        is kept even without a cap (the ledger records it, for a run that reopens the batch)."""
        price = client.price
        worst = (
            None if price is None
            else float(price.worst_case(prompt_tokens_upper(messages), params.max_tokens, batch=True))
        )  # fmt: skip
        cap = self.engine.config.max_cost
        if worst is None:
            if cap is None:
                return 0.0
            raise BudgetExceeded(
                f"--max-cost ${cap:g}: the price of {getattr(client, 'model', client.name)} is "
                "unknown, so its batch can't be capped: pass --price IN,OUT (USD per million "
                "tokens) or drop --max-cost."
            )
        self.engine.reserve(worst, f"the next batched call could cost up to ${worst:.4f}")
        return worst

    def _hold_reopened(
        self, wave: _Wave, client: BatchClient, messages: ChatMessages, params: GenParams
    ) -> None:
        """A batch reopened from a ledger that recorded no reservation (an older version): the
        provider may still bill all its calls, so each is held at the largest worst case of its
        calls that rows of this run have met (the others' prompts are not kept), from the first
        one met, and recorded in the ledger for a later run. Held, not checked against the cap:
        the batch is sent, and what fits next to it is what the cap still allows."""
        if client.price is None:
            return
        worst = float(
            client.price.cost(prompt_tokens_upper(messages), params.max_tokens, batch=True)
        )
        if worst <= wave.per_call:
            return
        wave.per_call = worst
        more = worst * wave.requests - wave.reserved
        if more > 0:
            self.engine.release(-more)
            wave.reserved += more
            self._log(event="reserved", tag=wave.tag, reserved=wave.reserved)

    # --- a wave: submit, poll, collect ----------------------------------------------------

    async def end_pass(self) -> bool:
        """Send this wave's batches and wait for all of them (and for the earlier runs'
        batches its rows met). False when there was nothing to wait for."""
        for ident in list(self._inputs):
            self._submit(self._inputs.pop(ident))
        self._written.clear()
        sent, self._sent = self._sent, []
        if not sent:
            return False
        self.waves += 1
        self._progress = {w.tag: (0, w.requests) for w in sent}
        if not self.engine.config.quiet:
            n = sum(w.requests for w in sent)
            say(f"--batch-api: wave {self.waves}: {len(sent)} batch(es)"
                  + (f", {n} requests" if n else "") + "; waiting for the provider.")  # fmt: skip
        await asyncio.gather(*(w.task for w in sent if w.task is not None))
        return True

    def _submit(self, inp: _Input) -> None:
        inp.fh.close()
        inp.keys.close()
        tag = inp.digest.hexdigest()[:16]
        path = self.dir / f"{tag}.input.jsonl"
        inp.path.with_suffix(".keys.tmp").replace(self.dir / f"{tag}.keys")
        inp.path.replace(path)
        wave = _Wave(tag, inp.client, inp.requests, reserved=inp.reserved)
        wave.task = self._spawn(wave, self._send(wave, path))
        self._sent.append(wave)

    def _resume(self, wave: _Wave, client: BatchClient) -> None:
        if wave.task is None:  # the first row to meet it: wait for it in this wave
            wave.client = client
            if not self.engine.config.quiet or self.collect_only:
                say(f"--batch-api: {len(wave.keys)} call(s) of this job are in batch "
                      f"{wave.batch_id or '(being looked up: wave ' + wave.tag + ')'}, sent by an "
                      "earlier run and still open: waiting for it instead of sending them again "
                      f"(until {_deadline_words(self._deadline_s())} after it was sent; "
                      "--batch-deadline sets another; cancelling it at the provider ends it "
                      "sooner).")  # fmt: skip
            wave.task = self._spawn(wave, self._find_and_wait(wave))
            self._sent.append(wave)

    def _spawn(self, wave: _Wave, coro: Any) -> asyncio.Task[None]:
        async def guarded() -> None:
            try:
                await coro
            except Exception as exc:  # never leave a row waiting; the batch stays open
                self._settle(wave, self._still_open(wave, f"{type(exc).__name__}: {exc}"),
                             final=False)  # fmt: skip

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _send(self, wave: _Wave, path: Path) -> None:
        try:
            wave.since = time.time()
            self._log(event="submitting", tag=wave.tag, provider=redact(wave.client.name),
                      requests=wave.requests, reserved=wave.reserved)  # fmt: skip
            wave.batch_id = await wave.client.submit(path, wave.tag)
            self._log(event="submitted", tag=wave.tag, batch_id=wave.batch_id)
            path.unlink(missing_ok=True)
        except BackendError as exc:  # maybe created anyway: a re-run looks for it by its tag
            if NO_BATCH_API in str(exc):  # refused at the door (404): no batch was created
                self._settle(wave, str(exc))
                return
            self._settle(wave, f"the batch could not be sent: {exc} A re-run looks for it at "
                         "the provider (it may have been created) before sending its calls "
                         "again.", final=False)  # fmt: skip
            return
        await self._wait(wave)

    async def _find_and_wait(self, wave: _Wave) -> None:
        """Wait for a batch sent by an earlier run (or find the one a crash left unrecorded)."""
        if wave.batch_id is None:
            wave.batch_id = await wave.client.find(wave.tag, wave.since, wave.requests,
                                                   self._known_ids)  # fmt: skip
            if wave.batch_id is None:  # never created: the next pass sends its calls again
                self._log(event="finished", tag=wave.tag, batch_id=None, status="never created")
                (self.dir / f"{wave.tag}.keys").unlink(missing_ok=True)
                self._release(wave)
                self._forget_open(wave)
                return
            self._log(event="submitted", tag=wave.tag, batch_id=wave.batch_id)
        await self._wait(wave)

    def _deadline_s(self) -> float:
        if self.cancel_reason is not None:  # `cai-kit batches cancel`
            return 0.0
        d = self.engine.config.batch_deadline_s
        return DEADLINE_S if d is None else d

    async def _wait(self, wave: _Wave) -> None:
        """Poll until the batch ends, then collect it. Past its deadline (from submission) it
        is cancelled, and what it answered before that is collected. A provider that can't be
        reached fails the calls but leaves the batch open (and reserved) for a re-run."""
        assert wave.batch_id is not None
        started, errors = time.monotonic(), 0
        cfg = self.engine.config
        deadline = (wave.since or time.time()) + self._deadline_s()
        cancelled_at: float | None = None
        while True:
            try:
                state = await wave.client.poll(wave.batch_id)
                errors = 0
            except BackendError as exc:
                errors += 1
                if errors > cfg.max_retries:
                    self._settle(wave, self._still_open(wave, str(exc)), final=False)
                    return
                await asyncio.sleep(min(cfg.backoff_base_s * 2**errors, POLL_MAX_S))
                continue
            self._progress[wave.tag] = _answered_of(state.counts, wave.requests)
            if state.done:
                break
            now = time.time()
            if cancelled_at is None and now >= deadline:
                cancelled_at = now
                self._log(event="cancelling", tag=wave.tag, batch_id=wave.batch_id)
                try:
                    await wave.client.cancel(wave.batch_id)
                except BackendError as exc:
                    why = f"past --batch-deadline, and cancelling it failed: {exc}"
                    self._settle(wave, self._still_open(wave, why), final=False)
                    return
            elif cancelled_at is not None and now - cancelled_at > CANCEL_GRACE_S:
                why = "past --batch-deadline; asked to cancel, not confirmed by the provider"
                self._settle(wave, self._still_open(wave, why), final=False)
                return
            waited = time.monotonic() - started
            pause = min(POLL_MAX_S, max(POLL_MIN_S, waited * POLL_FRACTION))
            if cancelled_at is None:
                pause = min(pause, max(POLL_MIN_S, deadline - now))
            await asyncio.sleep(pause)
        spool = self.dir / f"{wave.tag}.output.tmp"
        try:  # downloaded whole before anything is kept: a broken download keeps nothing
            with spool.open("w", encoding="utf-8") as fh:
                async for key, result in wave.client.results(state):
                    body = result.to_dict() if isinstance(result, Completion) else result
                    fh.write(json.dumps([key, body], ensure_ascii=False) + "\n")
        except BackendError as exc:
            spool.unlink(missing_ok=True)
            self._settle(wave, self._still_open(wave, str(exc)), final=False)
            return
        why = None if state.status in ("completed", "ended") else _why(state)
        if cancelled_at is not None and why is not None:
            why = f"batch {state.batch_id} was cancelled: " + (
                self.cancel_reason
                or f"its --batch-deadline of {_deadline_words(self._deadline_s())} after "
                "submission passed."
            )
        self._settle(wave, why, spool=spool)

    def _still_open(self, wave: _Wave, detail: str) -> str:
        return (f"batch {wave.batch_id or wave.tag} is still open ({detail}); its calls are not "
                "sent again while it is: re-run to collect it, or cancel it at the provider "
                f"(batch id {wave.batch_id or 'unknown'}).")  # fmt: skip

    def _settle(
        self, wave: _Wave, why: str | None, *, spool: Path | None = None, final: bool = True
    ) -> None:
        """Put a batch's answers into the cache (one transaction) and note every call it did
        not answer as failed for this run, with the reason; close the batch in the ledger.
        Only the calls this batch was sent for are taken, each once: a line for any other
        custom_id, or a repeated one, is dropped (never counted, billed or cached), so that
        whoever writes the output file can't plant answers under other cache keys."""
        stats, price = self.engine.stats, wave.client.price
        ok = failed = repeated = unknown = 0
        sent = self._sent_keys(wave)
        seen: set[str] = set()

        def answers() -> Iterator[tuple[str, Completion]]:
            nonlocal ok, failed, repeated, unknown
            with spool.open(encoding="utf-8") as fh:  # type: ignore[union-attr]
                for raw in fh:
                    key, body = json.loads(raw)
                    if key not in sent:
                        unknown += 1
                        continue
                    if key in seen:
                        repeated += 1
                        continue
                    seen.add(key)
                    if isinstance(body, str):  # the request's own error, after the batch's
                        self._failed[key] = f"{why} {body}" if why else body
                        failed += 1
                        continue
                    c = Completion.from_dict(body)
                    stats.calls += 1  # paid and counted, answered or not (as when synchronous)
                    if c.cost is None and price is not None:  # at the batch price
                        c.cost = price.cost_of(c.usage, batch=True)
                    self.engine.spend(c)  # billed, kept or not (the command's ledger too)
                    if (
                        not c.text.strip()
                        and c.finish_reason == "length"
                        and c.usage.reasoning_tokens
                    ):
                        self._failed[key] = (f"{c.model or 'the model'} spent its whole output "
                                             f"cap ({c.usage.completion_tokens} tokens, "
                                             f"{c.usage.reasoning_tokens} of them reasoning) "
                                             "before answering: raise --reasoning-tokens or "
                                             "lower --reasoning-effort.")  # fmt: skip
                        failed += 1
                        continue
                    if not c.text.strip() and not c.logprobs:  # never kept, as when synchronous
                        self._failed[key] = (f"{c.model or 'the model'} sent an empty reply "
                                             f"(finish_reason: {c.finish_reason}); it is not "
                                             "kept as an answer.")  # fmt: skip
                        failed += 1
                        continue
                    ok += 1
                    yield key, c

        if spool is not None:
            self.cache.put_stream(answers())
            spool.unlink(missing_ok=True)
        if repeated or unknown:
            say(f"--batch-api: batch {wave.batch_id or wave.tag}: dropped {repeated + unknown} "
                  f"answer line(s) ({repeated} repeated, {unknown} never sent); they are not "
                  "counted, billed or cached.")  # fmt: skip
        self._answered.update(hash(k) for k in seen if k not in self._failed)
        missing = 0
        for key in sent:
            if key not in seen and key not in self._failed:
                self._failed[key] = why or "no answer in the batch"
                missing += 1
        if final:
            (self.dir / f"{wave.tag}.keys").unlink(missing_ok=True)
            self._log(event="finished", tag=wave.tag, batch_id=wave.batch_id, ok=ok,
                      failed=failed + missing,
                      status=why or ("completed" if wave.batch_id else "never created"))  # fmt: skip
        if why:  # (a batch still open says itself how it goes on)
            if final:  # the command that works: a provider without a Batch API fails each re-run
                retry = f"cai-kit retry-failed {self.dir.parent.absolute()}"
                retry += " --sync" if NO_BATCH_API in why else ""
                say(f"--batch-api: {why} `{retry}` sends the unanswered calls again.")  # fmt: skip
            else:
                say(f"--batch-api: {why}")
        if final:  # the provider can no longer bill it: its worst case is let go
            self._release(wave)
        self._forget_open(wave)

    def _release(self, wave: _Wave) -> None:
        self.engine.release(wave.reserved)
        wave.reserved = 0.0

    def _sent_keys(self, wave: _Wave) -> set[str]:
        """The cache keys this batch was sent for (its `.keys` file, or the ledger's)."""
        keys_file = self.dir / f"{wave.tag}.keys"
        if keys_file.is_file():
            return set(keys_file.read_text(encoding="utf-8").split())
        return set(wave.keys)

    # --- the ledger ----------------------------------------------------------------------

    def _forget_open(self, wave: _Wave) -> None:
        if self._open.pop(wave.tag, None) is not None:
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
        state = _read_ledger(self.ledger)
        self._known_ids = frozenset(
            e["submitted"]["batch_id"] for e in state.values() if e.get("submitted", {}).get("batch_id")
        )  # fmt: skip
        for tag, entry in state.items():
            keys_file = self.dir / f"{tag}.keys"
            if "finished" in entry or not keys_file.is_file():
                continue
            keys = frozenset(keys_file.read_text(encoding="utf-8").split())
            batch_id = entry.get("submitted", {}).get("batch_id")
            since = entry.get("submitting", {}).get("at")
            # the provider may still bill it: its worst case is reserved again in this run (a
            # ledger of an older version recorded none: held as its calls are met, below)
            recorded = entry.get("reserved") or entry.get("submitting", {})
            reserved = float(recorded.get("reserved") or 0.0)
            provider = entry.get("submitting", {}).get("provider", "")
            self._open[tag] = _Wave(tag, BatchClient(), len(keys), batch_id, reserved,
                                    keys=keys, since=since, provider=provider,
                                    unrecorded="reserved" not in recorded)  # fmt: skip
            self.engine.release(-reserved)
            for key in keys:
                self._wave_of[key] = tag

    async def cancel_open(
        self, client_for: Callable[[str], BatchClient], reason: str, batch_id: str | None = None
    ) -> list[_Wave]:
        """`cai-kit batches cancel`: cancel the earlier runs' open batches (or the one named) at
        the provider, wait for it to confirm, collect what they answered into the cache and close
        them in the ledger, releasing their reservation: what the provider bills is what it
        answered. `client_for(provider)` gives the client of a ledger's provider name; `reason`
        ends the sentence that says why each was cancelled."""
        waves = [w for w in self._open.values() if batch_id in (None, w.batch_id)]
        self.cancel_reason = reason  # and the deadline is now: cancelled at the first poll
        for wave in waves:
            wave.client = client_for(wave.provider)
        await asyncio.gather(*(self._spawn(w, self._find_and_wait(w)) for w in waves))
        return waves

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for inp in self._inputs.values():  # a stopped pass: its unsent calls are not kept
            inp.fh.close()
            inp.keys.close()
            inp.path.unlink(missing_ok=True)
            inp.path.with_suffix(".keys.tmp").unlink(missing_ok=True)
        for client in self._clients.values():
            if client is not None:
                await client.aclose()


_IDENTS: dict[int, tuple[Backend, str]] = {}


def _ident(backend: Backend) -> str:
    """The backend's identity as a dict key (memoised: asked once per call)."""
    hit = _IDENTS.get(id(backend))
    if hit is None or hit[0] is not backend:
        hit = _IDENTS[id(backend)] = (backend, json.dumps(backend.identity(), sort_keys=True))
    return hit[1]


def _read_ledger(path: Path) -> dict[str, dict[str, Any]]:
    """The ledger's events by wave tag and event name (the last of each)."""
    state: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return state
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            ev = json.loads(raw)
        except ValueError:
            continue  # a torn last line from a crash
        state.setdefault(ev["tag"], {})[ev["event"]] = ev
    return state


def _deadline_words(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds:g} s"


def _answered_of(counts: dict[str, int], requests: int) -> tuple[int, int]:
    """(requests the provider has answered, of how many) from a poll's request counts:
    OpenAI-style {total, completed, failed} or Anthropic's {processing, succeeded, ...}."""
    if "processing" in counts:  # Anthropic: what is not processing any more has an answer
        total = sum(counts.values()) or requests
        return total - counts["processing"], total
    total = counts.get("total") or requests
    return counts.get("completed", 0) + counts.get("failed", 0), total


def _why(state: BatchState) -> str:
    words = {
        "expired": "expired before all its requests ran (the provider's 24 h window)",
        "cancelled": "was cancelled",
        "failed": "failed as a whole",
    }
    detail = f": {state.errors}" if state.errors else ""
    return f"batch {state.batch_id} {words.get(state.status, state.status)}{detail}."


def _sent_cap(line: dict[str, Any], params: GenParams) -> int:
    """The output cap a batch line really asks for: an OpenAI line's body or an Anthropic
    line's params may carry more than `params.max_tokens` (a thinking budget, room to think)."""
    body = line.get("body") or line.get("params") or {}
    cap = body.get("max_completion_tokens", body.get("max_tokens"))
    return max(int(cap), params.max_tokens) if isinstance(cap, int) else params.max_tokens
