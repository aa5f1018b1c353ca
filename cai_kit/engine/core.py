"""The call engine: many model calls, fast, cheap and safe.

`Engine.call` is the only way cai-kit calls a model. In order, it
  1. serves the call from the content-addressed cache (never pay twice),
  2. joins an identical call already in flight (duplicates in the input are called once),
  3. waits for our own rpm/tpm token buckets and a concurrency slot,
  4. reserves the call's worst-case cost against --max-cost in the command's one ledger
     (`cai_kit.engine.budget.Budget`: every job of a command spends through it), or stops
     cleanly (see `_Budget` for prices); a call whose answer never arrived (timeout, dropped
     connection) keeps its reservation, as the provider may still bill it,
  5. calls the backend with retries: exponential backoff with jitter on 429/5xx/timeouts/
     dropped connections, honouring Retry-After up to a cap; fatal 4xx fail at once. An empty
     or null reply (content filter, a reasoning model out of tokens) is paid but never cached:
     it is retried once, then a failure that a re-run retries.
With --batch-api, steps 2 onwards are a provider Batch API job instead: `Engine.batch` is the
collector (`cai_kit.engine.batch`), seen here only through `base.BatchRoute`.

Jobs of many records run on top of it in `cai_kit.engine.jobs` (`run_job`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cai_kit.engine.base import BatchRoute, CallFailed
from cai_kit.engine.budget import Budget
from cai_kit.engine.cache import CallCache, cache_key
from cai_kit.engine.pricing import (
    FREE_KINDS,
    Price,
    implied_price,
    price_for_backend,
    prompt_tokens_upper,
)
from cai_kit.errors import BackendError, BudgetExceeded, RetryableError
from cai_kit.llm.base import Backend, ChatMessages, Completion, GenParams
from cai_kit.llm.reasoning import LOWEST, effort_timeout, fit_params
from cai_kit.notices import note


def fit_call(config: EngineConfig, backend: Backend, params: GenParams) -> GenParams:
    """What a stage's call is really sent with (the engine's calls and the --dry-run preview
    alike): the effort the flags ask for (a judge-like call's LOWEST -> --judge-reasoning-effort,
    a stage call's None -> --reasoning-effort), then the model's rules (`reasoning.fit_params`:
    its default or least effort, and an output cap with room to think). Where the backend has no
    such rules (litellm), a judge-like call gets `backend.judge_effort()`."""
    effort = params.reasoning_effort
    if effort == LOWEST and config.judge_reasoning_effort is not None:
        params = params.replace(reasoning_effort=config.judge_reasoning_effort)
    elif effort is None and config.reasoning_effort is not None:
        params = params.replace(reasoning_effort=config.reasoning_effort)
    elif effort == LOWEST and backend.reasoning is None:  # the litellm route's own map
        params = params.replace(reasoning_effort=backend.judge_effort())
    return fit_params(backend.reasoning, params, config.reasoning_tokens)


def thought_out(backend: Backend, completion: Completion, params: GenParams) -> str | None:
    """Why an answer is empty because reasoning spent the whole output cap (finish_reason
    `length`, no text), naming the flag that fixes it; None for any other answer. Such an
    answer is paid, never cached, and a counted failure (not the model's unparsable answer)."""
    if completion.text.strip() or completion.finish_reason != "length":
        return None
    rules = backend.reasoning
    if rules is None or not rules.reasons:
        return None
    spent = completion.usage.reasoning_tokens or completion.usage.completion_tokens
    return (
        f"{backend.model} spent its whole output cap ({params.max_tokens} tokens, {spent} of "
        f"them reasoning) before answering at reasoning effort {params.reasoning_effort}: "
        "raise --reasoning-tokens or lower --reasoning-effort."
    )


@dataclass
class EngineConfig:
    concurrency: int | None = None  # None: the backend's default_concurrency
    rpm: float | None = None
    tpm: float | None = None
    max_retries: int = 5
    timeout_s: float = 120.0
    # --timeout was given: used as it is; else a reasoning call's timeout grows with its effort
    # (cai_kit.llm.reasoning.EFFORT_TIMEOUT_S: high effort can think for minutes)
    timeout_given: bool = False
    # --reasoning-effort: the effort of a stage's calls (None: each model's default);
    # --judge-reasoning-effort: of judge-like calls (verdicts, --keep-if, rubric scores), which
    # ask for `reasoning.LOWEST` (None: the least the model takes); --reasoning-tokens: the
    # thinking allowance added to each answer's cap (None: by effort, REASONING_ALLOWANCE)
    reasoning_effort: str | None = None
    judge_reasoning_effort: str | None = None
    reasoning_tokens: int | None = None
    retry_after_cap_s: float = 60.0
    backoff_base_s: float = 0.5
    max_cost: float | None = None
    price: Price | None = None  # --price IN,OUT: USD per million tokens, wins over any list price
    use_cache: bool = True
    cache_path: Path | None = None
    quiet: bool = False
    dry_run: bool = False
    batch_api: bool = False  # send calls as provider Batch API jobs (cai_kit.engine.batch)
    # --batch-deadline: seconds from a batch's submission after which it is cancelled
    # (None: the providers' 24 h completion window)
    batch_deadline_s: float | None = None
    # the command's one --max-cost ledger, shared by all its jobs (`budget.with_budget`);
    # None: each Engine starts its own for max_cost
    budget: Budget | None = None
    # called after every finished row with a `jobs.JobProgress` (the Python API's progress=);
    # when set, the job draws no progress of its own (no bar, no plain lines)
    progress: Callable[[Any], None] | None = None


@dataclass
class EngineStats:
    calls: int = 0  # calls sent to a backend and answered (paid)
    cache_hits: int = 0
    failures: int = 0
    retries: int = 0
    prompt_tokens: int = 0  # every input token billed, the cached ones included
    completion_tokens: int = 0  # every output token billed, hidden reasoning included
    cached_tokens: int = 0  # of prompt_tokens: read from the provider's prompt cache
    reasoning_tokens: int = 0  # of completion_tokens: hidden reasoning
    cost: float = 0.0  # of the calls whose cost is known (cai_kit.engine.spend)
    unpriced_calls: int = 0  # answered calls with no price and no reported cost
    sent_may_be_billed: int = 0  # sent, no answer arrived (timeout, dropped): may be billed
    in_flight_at_cap: int | None = None  # calls in flight when spending first reached --max-cost
    started: float = field(default_factory=time.monotonic)

    def count(self, completion: Completion) -> None:
        """Add one paid answer's tokens and cost (synchronous or a batch line)."""
        u = completion.usage
        self.prompt_tokens += u.prompt_tokens
        self.completion_tokens += u.completion_tokens
        self.cached_tokens += u.cached_tokens
        self.reasoning_tokens += u.reasoning_tokens
        self.add_cost(completion.cost)

    def add_cost(self, cost: float | None) -> None:
        """Count one answered call's cost; None (no price, none reported) is unknown, not $0."""
        if cost is None:
            self.unpriced_calls += 1
        else:
            self.cost += cost

    def as_dict(self) -> dict[str, Any]:
        """For manifest.json: `cost` is null when some call's cost is unknown (`cost_known`
        false; `priced_cost` is then what the priced calls cost)."""
        d = asdict(self)
        d.pop("started")
        d["cost_known"] = not self.unpriced_calls
        d["cost"] = round(self.cost, 6) if d["cost_known"] else None
        if not d["cost_known"]:
            d["priced_cost"] = round(self.cost, 6)
        d["elapsed_s"] = round(time.monotonic() - self.started, 3)
        return d


class TokenBucket:
    """Refills `rate_per_min` units per minute; bursts up to one second's worth.

    A request larger than a burst waits for a full bucket and then leaves it in debt, which is
    paid back before anything else passes: over any window of W seconds at most
    rate·W + max(one second's worth, the largest request) units go through. `clock` and
    `sleep` can be replaced (tests use a fake clock).
    """

    def __init__(
        self,
        rate_per_min: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.capacity = max(1.0, rate_per_min / 60.0)
        self.tokens = self.capacity
        self.rate = rate_per_min / 60.0
        self._clock, self._sleep = clock, sleep
        self.stamp = clock()
        self._lock = asyncio.Lock()

    async def take(self, amount: float = 1.0) -> None:
        need = min(amount, self.capacity)  # what must be in the bucket before this one passes
        async with self._lock:
            while True:
                now = self._clock()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= need - 1e-9:
                    self.tokens -= amount  # may go below zero: the debt delays the next request
                    return
                await self._sleep((need - self.tokens) / self.rate)


def _estimate_tokens(messages: ChatMessages, params: GenParams) -> int:
    return prompt_tokens_upper(messages) + params.max_tokens


@dataclass
class _Budget:
    """What --max-cost knows about one backend's prices.

    A call is sent only once its worst case (price × (estimated prompt + max_tokens)) fits
    under the cap next to what is spent and what the calls in flight have reserved. The price is
    `--price`, the backend's list price, or free for local backends; when none is known, the
    first call goes alone (a probe) and the cost the server reports gives an implied price.
    A server that reports no cost then stops the run: the cap could not be enforced.
    """

    price: Price | None
    implied: Price | None = None
    flat: float = 0.0  # largest reported cost of an answer that had no token counts
    unenforceable: bool = False
    probe: asyncio.Lock = field(default_factory=asyncio.Lock)
    model: str = ""  # the backend's model string, for the stop line
    # reported cost / --price cost, when the server reported more than the price says: later
    # reservations use the price scaled up by it, so concurrent calls cannot pass the cap
    above_price: float = 1.0

    @property
    def known(self) -> bool:
        return self.price is not None or self.implied is not None or self.flat > 0

    def worst_case(self, messages: ChatMessages, params: GenParams) -> float:
        price = self.price or self.implied
        worst = price.worst_case(prompt_tokens_upper(messages), params.max_tokens) if price else 0.0
        if self.price is not None:
            worst *= self.above_price
        return max(worst, 2 * self.flat)

    def learn(self, completion: Completion) -> None:
        if completion.cost is None:
            return
        u = completion.usage
        if self.price is not None:  # reported above --price: reserve at the larger one
            at_price = self.price.cost(u.prompt_tokens, u.completion_tokens)
            if at_price > 0 and completion.cost > at_price * self.above_price:
                self.above_price = completion.cost / at_price
            elif at_price <= 0 and completion.cost > 0:
                self.flat = max(self.flat, completion.cost)
            return
        p = implied_price(completion.cost, u.prompt_tokens, u.completion_tokens)
        if p is None and completion.cost == 0:  # reported free, without token counts
            self.implied = self.implied or Price(0.0, 0.0, source="reported as free")
        elif p is None:
            self.flat = max(self.flat, completion.cost)
        elif self.implied is None or p.input_per_m > self.implied.input_per_m:
            self.implied = p


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
        self._in_flight = 0  # calls sent and not answered yet
        # the command's ledger: every reservation and every cost goes through it
        self.ledger = self.config.budget or Budget.for_command(self.config.max_cost)
        self.job = ""  # the job this engine runs (run_job sets it), for the stop line
        self._budgets: dict[int, _Budget] = {}
        self.budget_stop: str | None = None  # why --max-cost stopped this job, when it did
        self._unpriced: str | None = None  # a model --max-cost could not price, if it stopped so
        self.notices: list[str] = []  # one-time notes printed to stderr (kept for tests)
        self._rpm = TokenBucket(self.config.rpm) if self.config.rpm else None
        self._tpm = TokenBucket(self.config.tpm) if self.config.tpm else None
        self.batch: BatchRoute | None = None  # --batch-api: the collector, set by run_job
        # rows are replayed pass after pass with a collector: a call that failed for good (an
        # empty reply is paid) fails again at once instead of being sent again
        self._failed: dict[str, str] = {}

    def _semaphore(self, backend: Backend) -> asyncio.Semaphore:
        if id(backend) not in self._semaphores:
            n = self.config.concurrency or backend.default_concurrency
            self._semaphores[id(backend)] = asyncio.Semaphore(max(1, n))
        return self._semaphores[id(backend)]

    async def call(
        self, backend: Backend, messages: ChatMessages, params: GenParams, *, sample_index: int = 0
    ) -> Completion:
        # what is really sent: a reasoning model's effort and a cap with room to think
        params = self.fit(backend, params).for_sample(sample_index)  # sample i: its own draw
        key = cache_key(backend.identity(), messages, params.to_dict(), sample_index)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            if self.batch is None or not self.batch.replayed(key):  # (a replay is no hit)
                self.stats.cache_hits += 1
            return hit
        if self.batch is not None and (kept := self.batch.kept(key)) is not None:
            return kept  # forgotten in the cache earlier in this run: read alike in every pass
        if self.batch is not None and self.batch.accepts(backend, key):  # in a batch
            return await self.batch.call(key, backend, messages, params)
        if key in self._inflight:  # an identical call is on its way: share its answer
            self.stats.cache_hits += 1
            return await asyncio.shield(self._inflight[key])
        if (why := self._failed.get(key)) is not None:
            raise CallFailed(why)
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            completion = await self._call_uncached(backend, messages, params)
            if self.cache is not None:
                self.cache.put(key, completion)
            future.set_result(completion)
            return completion
        except BaseException as exc:
            if self.batch is not None and isinstance(exc, CallFailed):
                self._failed[key] = str(exc)
            future.set_exception(exc)
            future.exception()  # mark retrieved: sharers re-raise it themselves
            raise
        finally:
            del self._inflight[key]

    def fit(self, backend: Backend, params: GenParams) -> GenParams:
        """The parameters a call is really sent with: `fit_call` under this engine's config."""
        return fit_call(self.config, backend, params)

    def forget(
        self, backend: Backend, messages: ChatMessages, params: GenParams, *, sample_index: int = 0
    ) -> None:
        """Drop one cached answer that turned out unusable (e.g. a judge reply that is neither
        A nor B), so that a re-run or `retry-failed` asks the model again instead of reading
        the same reply back from the cache."""
        if self.cache is not None:
            params = self.fit(backend, params).for_sample(sample_index)
            key = cache_key(backend.identity(), messages, params.to_dict(), sample_index)
            if self.batch is not None:  # rows are replayed: they still read it in this run
                self.batch.forget(key)
            else:
                self.cache.delete(key)

    def _notice(self, text: str) -> None:
        self.notices.append(text)
        note(text)  # the `cai_kit` logger (cai_kit.notices)

    def _budget(self, backend: Backend) -> _Budget:
        if id(backend) not in self._budgets:
            explicit = self.config.price
            if explicit is None and backend.kind not in FREE_KINDS:  # e.g. a recipe's teacher
                given = self.ledger.price_of(backend.model)
                explicit = Price(*given, source="the parent command") if given else None
            state = _Budget(price_for_backend(backend, explicit), model=backend.model)
            self._budgets[id(backend)] = state
            if self.ledger.enforced and state.price is None:
                self._notice(
                    f"no price is known for {backend.model}, so --max-cost can count only the "
                    "cost the server reports; its first call goes alone to see whether it does. "
                    "Pass --price IN,OUT (USD per million input/output tokens) to set one."
                )
        return self._budgets[id(backend)]

    def _check_budget(self, state: _Budget, messages: ChatMessages, params: GenParams) -> float:
        """Reserve this call's worst-case cost, or stop (BudgetExceeded) if it might not fit
        under --max-cost next to what is spent and reserved. Returns the amount reserved."""
        if not self.ledger.enforced:
            return 0.0
        if state.unenforceable:
            self._unpriced = self._unpriced or state.model
            self._stop("the server reported no cost and no price is known")
        worst = state.worst_case(messages, params)
        cap = self.ledger.cap
        if not state.known and cap is not None and self.ledger.spent >= cap:
            self._stop(f"the next call could cost up to ${worst:.4f}")
        self.reserve(worst, f"the next call could cost up to ${worst:.4f}")
        return worst

    def reserve(self, worst: float, why: str) -> None:
        """Hold `worst` in the command's ledger (`self.ledger`) next to what is spent and
        everything else reserved (synchronous calls in flight and batched calls alike, of every
        job of the command, or reopened from an earlier run), or stop (BudgetExceeded) if it
        might not fit under the cap or the cap already stopped the command."""
        try:
            self.ledger.reserve(worst, why, self.job)
        except BudgetExceeded as exc:
            self.budget_stop = self.budget_stop or why
            raise BudgetExceeded(self.budget_message()) from exc

    def release(self, reserved: float) -> None:
        """Let a reservation go: its call can no longer be billed (answered, failed for good,
        or its batch ended). A negative amount reserves without a check (a batch reopened
        from an earlier run: it is owed whatever the cap says)."""
        if reserved < 0:
            self.ledger.hold(-reserved)
        else:
            self.ledger.release(reserved)

    def spend(self, completion: Completion) -> None:
        """Count one answer billed outside a reservation of its own (a batch line): its tokens
        and cost in this job's stats, and the answer and its cost in the command's ledger."""
        self.stats.count(completion)
        self.ledger.spend(completion.cost or 0.0, calls=1)

    def _stop(self, why: str) -> None:
        if self.budget_stop is None:
            self.budget_stop = why
        with suppress(BudgetExceeded):  # (recorded in the ledger; the job's own line is raised)
            self.ledger.stop(why, self.job)
        raise BudgetExceeded(self.budget_message())

    def budget_message(self) -> str:
        """The stop line, with what was really spent (call it again once the run has ended:
        the calls that were in flight are paid too)."""
        s = self.stats
        if self._unpriced is not None:  # nothing was "reached": the spend is unknown
            return (
                f"no price is known for {self._unpriced} and its server reports no cost, so "
                f"--max-cost ${self.ledger.cap or 0:g} cannot be enforced after {s.calls} "
                "call(s): pass --price IN,OUT (USD per million input/output tokens), or drop "
                "--max-cost. Finished work is kept."
            )
        at_cap = s.in_flight_at_cap
        more = f" {at_cap} call(s) were in flight when the cap was reached." if at_cap else ""
        return self.ledger.message() + more

    def _account(self, state: _Budget, completion: Completion, reserved: float) -> None:
        """Swap a call's reservation for what it really cost (reported, or price × usage)."""
        state.learn(completion)  # (a reported cost above --price raises later reservations)
        if completion.cost is None and state.price is not None:
            completion.cost = state.price.cost_of(completion.usage)
        self.ledger.settle(reserved, completion.cost or 0.0)
        s = self.stats
        s.calls += 1
        s.count(completion)
        cap = self.ledger.cap
        if cap is not None and s.in_flight_at_cap is None and self.ledger.spent >= cap - 1e-12:
            s.in_flight_at_cap = self._in_flight

    async def _call_uncached(
        self, backend: Backend, messages: ChatMessages, params: GenParams
    ) -> Completion:
        cfg = self.config
        attempt = empty_replies = 0
        while True:
            if self._rpm:
                await self._rpm.take(1)
            if self._tpm:
                await self._tpm.take(
                    _estimate_tokens(
                        messages, params.replace(max_tokens=backend.output_cap(params))
                    )
                )
            async with self._semaphore(backend):
                state = self._budget(backend)
                probing = cfg.max_cost is not None and not state.known
                if probing:  # price unknown: one call at a time until an answer shows it
                    await state.probe.acquire()
                    probing = not state.known
                    if not probing:
                        state.probe.release()
                try:
                    completion, error = await self._send(backend, messages, params, state)
                    if probing and error is None and completion.cost is None:
                        state.unenforceable = True
                finally:
                    if probing:
                        state.probe.release()
            # whitespace that carries log-probs can still be a judge's soft label: kept
            if error is None and (why := thought_out(backend, completion, params)) is not None:
                self.stats.failures += 1  # the same cap is spent the same way again: no retry
                raise CallFailed(why)
            if error is None and not completion.text.strip() and not completion.logprobs:
                empty_replies += 1
                error = RetryableError(
                    f"{backend.model} sent an empty reply (finish_reason: "
                    f"{completion.finish_reason}); it is not kept as an answer."
                )
            if error is None:
                return completion
            # an empty reply is retried once: the same prompt is likely filtered again
            if not error.retryable or attempt >= cfg.max_retries or empty_replies > 1:
                self.stats.failures += 1
                tries = f" after {attempt + 1} attempts" if error.retryable else ""
                raise CallFailed(f"{error}{tries}") from None
            delay = cfg.backoff_base_s * (2**attempt) * (0.5 + random.random())
            if error.retry_after is not None:
                delay = max(delay, error.retry_after)
            attempt += 1
            self.stats.retries += 1
            await asyncio.sleep(min(delay, cfg.retry_after_cap_s))

    async def _send(
        self, backend: Backend, messages: ChatMessages, params: GenParams, state: _Budget
    ) -> tuple[Completion, BackendError | None]:
        """One attempt: reserve, call, account. Returns the completion or the error."""
        sent = params.replace(max_tokens=backend.output_cap(params))  # (thinking budgets added)
        reserved = self._check_budget(state, messages, sent)
        self._in_flight += 1
        # --timeout is for servers; a model on this machine is waited for (loading, its turn,
        # its batch): timing it out would fail the call, not stop the work already under way
        timeout = None if backend.kind in FREE_KINDS else self._timeout(backend, params)
        try:
            completion = await asyncio.wait_for(backend.chat(messages, params), timeout)
        except asyncio.TimeoutError:
            self._unanswered(reserved)
            return Completion(text=""), RetryableError(
                f"No answer within {timeout:g} s (--timeout)."
            )
        except BackendError as exc:
            if exc.unanswered:  # sent, and the answer never came: the provider may bill it
                self._unanswered(reserved)
            else:  # the provider answered with an error: nothing to bill
                self.ledger.release(reserved)
            return Completion(text=""), exc
        except BaseException:  # cancelled or killed mid-call: it may be billed all the same
            self._unanswered(reserved)
            raise
        finally:
            self._in_flight -= 1
        self._account(state, completion, reserved)
        return completion, None

    def _timeout(self, backend: Backend, params: GenParams) -> float:
        """--timeout, or for a reasoning call without one, grown with its effort."""
        rules = backend.reasoning
        if self.config.timeout_given or rules is None or not rules.reasons:
            return self.config.timeout_s
        return effort_timeout(params.reasoning_effort, self.config.timeout_s)

    def _unanswered(self, reserved: float) -> None:
        """A sent call whose answer never arrived keeps its reservation for the rest of the
        command (a retry reserves anew) and is counted as sent, may be billed."""
        self.stats.sent_may_be_billed += 1
        self.ledger.keep_unanswered(reserved)

    def item_scope(self) -> AbstractContextManager[None]:
        """Marks one job item as running (a Batch API wave goes out when all of them wait)."""
        return self.batch.item_scope() if self.batch is not None else nullcontext()

    async def aclose(self) -> None:
        if self.batch is not None:
            await self.batch.aclose()
        if self.cache is not None:
            self.cache.close()
