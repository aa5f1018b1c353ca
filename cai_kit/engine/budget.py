"""`Budget`: the one --max-cost ledger of a command invocation.

A command creates one ledger and every job it runs (every round, synchronous or batched, new
or reopened) spends through it, so that the cap holds for the whole command:

    config = with_budget(EngineConfig(max_cost=5))   # once, where the command starts
    run_job(sampling, config); run_job(judging, config)   # both jobs spend under the one $5

It owns the cap, what is spent, what is reserved (the worst case of every call that may still
be billed), the reason the cap stopped the command and which job it stopped. Once stopped, it
refuses every new reservation, so no later job of the command starts.

**What the cap means across re-runs: per invocation.** Each run of a command starts a new
ledger at $0; a re-run over the same output finishes only what is missing (the record ids
decide), so a stopped run continues when re-run, with the cap anew. Cumulative spend per run
directory is not kept: the manifest says what each invocation spent.

**Calls whose answer never arrived** (a timeout, a dropped connection, a kill) keep their
reservation for the rest of the command: the provider may have finished and billed them. A
retry reserves anew. They are counted as "sent, may be billed".

**Threads, event loops and processes.** The state is guarded by a `threading.Lock` (never an
`asyncio.Lock`, which is bound to one event loop), so engines on several loops and threads may
share one ledger. A command that spawns processes (the pipeline's stages) shares its ledger
through a file (`Budget.on_disk`, `CAI_KIT_BUDGET_FILE` in the children's environment): each
change is read-modify-write of a small JSON file under an exclusive `fcntl.flock`, so N
processes hold one cap exactly, and a child that dies leaves its reservations held (they may
be billed). A child's own `--max-cost` (a per-stage cap) is a ledger of its own whose parent is
the shared one: a call must fit under both. Torchrun ranks instead split the cap statically
(`cai_kit.train.rewards._share_of_the_cap`: cap / world size each), which needs no file and no
coordination and still sums to the cap.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from cai_kit.errors import BudgetExceeded

# A pipeline (or any parent command) puts its ledger file here for its child processes.
BUDGET_FILE_ENV = "CAI_KIT_BUDGET_FILE"
_EPS = 1e-12


@dataclass
class _State:
    cap: float | None = None
    spent: float = 0.0
    reserved: float = 0.0
    calls: int = 0  # answered calls (paid)
    unanswered: int = 0  # sent, answer never arrived: may be billed, kept reserved
    unanswered_reserved: float = 0.0
    stop: str | None = None  # why the cap stopped the command
    stopped_by: str | None = None  # the job it stopped
    preview: float = 0.0  # --dry-run: the worst case of every job previewed so far
    # model string -> [input, output] USD per million tokens: prices the parent command knows
    # (a pipeline recipe's teacher `price:`), for its children's calls to that model
    prices: dict[str, list[float]] = field(default_factory=dict)


class Budget:
    """One --max-cost ledger (see the module docstring). `cap=None`: counts, never stops."""

    def __init__(
        self, cap: float | None = None, *, parent: Budget | None = None, label: str = ""
    ) -> None:
        self._lock = threading.Lock()
        self._state = _State(cap=cap)
        # (output file, row id) of rows that failed in this process's command: not retried
        # in-command (kept in memory: a row's job runs in one process)
        self._failed_rows: set[tuple[str, str]] = set()
        self.parent = parent
        self.label = label or "--max-cost"

    @classmethod
    def on_disk(
        cls,
        path: Path,
        cap: float | None = None,
        *,
        fresh: bool = False,
        prices: dict[str, tuple[float, float]] | None = None,
    ) -> Budget:
        """A ledger shared by processes through `path`; `fresh` starts it at $0 with `cap`
        and `prices` (the command that owns it), else it joins the one there (a child)."""
        return _FileBudget(Path(path), cap, fresh=fresh, prices=prices)

    @classmethod
    def for_command(cls, cap: float | None) -> Budget:
        """The ledger a command starts with: its own cap, under the parent command's shared
        ledger when it runs as a child (the pipeline sets `CAI_KIT_BUDGET_FILE`)."""
        path = os.environ.get(BUDGET_FILE_ENV)
        if not path:
            return cls(cap)
        parent = cls.on_disk(Path(path))
        return (
            cls(cap, parent=parent, label="the stage's --max-cost") if cap is not None else parent
        )

    # --- the state, under the lock ---------------------------------------------------------

    @contextmanager
    def _txn(self, write: bool = True) -> Iterator[_State]:
        with self._lock:
            yield self._state

    def snapshot(self) -> _State:
        with self._txn(write=False) as s:
            return replace(s, prices=dict(s.prices))

    def price_of(self, model: str) -> tuple[float, float] | None:
        """The (input, output) price per million tokens the parent command set for `model`."""
        own = self.snapshot().prices.get(model)
        if own is not None:
            return own[0], own[1]
        return self.parent.price_of(model) if self.parent is not None else None

    @property
    def cap(self) -> float | None:
        return self.snapshot().cap

    @property
    def enforced(self) -> bool:
        """Whether any cap applies (this ledger's or a parent's)."""
        return self.cap is not None or (self.parent is not None and self.parent.enforced)

    @property
    def spent(self) -> float:
        return self.snapshot().spent

    @property
    def stopped(self) -> bool:
        return self.snapshot().stop is not None or (self.parent is not None and self.parent.stopped)

    # --- spending ----------------------------------------------------------------------------

    def reserve(self, worst: float, why: str, job: str = "") -> None:
        """Hold `worst` next to what is spent and reserved, or stop (BudgetExceeded) when it
        might not fit under the cap, or when the cap already stopped this command."""
        with self._txn() as s:
            over = s.cap is not None and s.spent + s.reserved + worst > s.cap + _EPS
            if s.stop is None and over:
                s.stop, s.stopped_by = why, job or None
            if s.stop is not None:
                raise BudgetExceeded(self._message(s))
            if self.parent is not None:
                try:
                    self.parent.reserve(worst, why, job)
                except BudgetExceeded:
                    raise BudgetExceeded(self.parent.message()) from None
            s.reserved += worst

    def hold(self, amount: float) -> None:
        """Reserve without a check (a batch reopened from an earlier run is owed whatever
        the cap says)."""
        self._apply(reserved=amount)

    def release(self, amount: float) -> None:
        """Let a reservation go: its call can no longer be billed."""
        self._apply(reserved=-amount)

    def settle(self, reserved: float, cost: float) -> None:
        """Swap an answered call's reservation for what it cost."""
        self._apply(reserved=-reserved, spent=cost, calls=1)

    def spend(self, cost: float, calls: int = 0) -> None:
        """Count what was billed outside a reservation of its own (a batch line)."""
        self._apply(spent=cost, calls=calls)

    def keep_unanswered(self, reserved: float) -> None:
        """A sent call whose answer never arrived: its reservation stays for the rest of the
        command (the provider may bill it); counted as sent, may be billed."""
        self._apply(unanswered=1, unanswered_reserved=reserved)

    def _apply(self, **delta: float) -> None:
        with self._txn() as s:
            for name, d in delta.items():
                setattr(s, name, getattr(s, name) + d)
        if self.parent is not None:
            self.parent._apply(**delta)

    def stop(self, why: str, job: str = "") -> None:
        """Record a stop (the first reason wins) and raise BudgetExceeded."""
        with self._txn() as s:
            if s.stop is None:
                s.stop, s.stopped_by = why, job or None
            raise BudgetExceeded(self._message(s))

    # --- rows that failed in this command ------------------------------------------------------

    def failed_earlier(self, output: Path) -> set[str]:
        """The ids of rows of `output` that failed in an earlier job or round of this command:
        they are retried on a re-run, not sent again at once."""
        with self._lock:
            return {r for o, r in self._failed_rows if o == str(output)}

    def mark_failed(self, output: Path, row_ids: list[str]) -> None:
        with self._lock:
            self._failed_rows.update((str(output), r) for r in row_ids)

    # --- --dry-run ---------------------------------------------------------------------------

    def add_preview(self, worst: float) -> float:
        """Add a job's previewed worst case; returns the command's total so far."""
        with self._txn() as s:
            s.preview += worst
            return s.preview

    # --- what it says --------------------------------------------------------------------------

    def message(self) -> str:
        """The stop line: what the whole command spent (call it again once the jobs have
        ended: calls that were in flight are paid too)."""
        if self.parent is not None and self.parent.stopped and self.snapshot().stop is None:
            return self.parent.message()
        with self._txn() as s:
            return self._message(s)

    def _message(self, s: _State) -> str:
        job = f"in the {s.stopped_by} job: " if s.stopped_by else ""
        cap = f"${s.cap:g}" if s.cap is not None else "(none)"
        unanswered = (
            f", and {s.unanswered} sent call(s) got no answer and may be billed (up to "
            f"${s.unanswered_reserved:.4f}, kept reserved)"
            if s.unanswered
            else ""
        )
        return (
            f"{self.label} {cap} reached: spent ${s.spent:.4f} on {s.calls} calls in this "
            f"command{unanswered} ({job}{s.stop}). Finished work is kept; the cap is per "
            "invocation, so re-running continues with the cap anew."
        )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self.snapshot())
        d.pop("prices")
        return d


class _Configured(Protocol):  # `core.EngineConfig` (not imported: core imports this module)
    budget: Budget | None
    max_cost: float | None


C = TypeVar("C", bound=_Configured)


def with_budget(config: C) -> C:
    """`config` with the command's ledger: the one it holds, or a new one for its
    --max-cost. Call it once where a command (or a library call) starts, then pass the
    result to every job."""
    if config.budget is not None:
        return config
    return replace(config, budget=Budget.for_command(config.max_cost))  # type: ignore[type-var]


class _FileBudget(Budget):
    """A ledger in a JSON file under an exclusive flock: one cap for several processes."""

    def __init__(
        self,
        path: Path,
        cap: float | None,
        *,
        fresh: bool,
        prices: dict[str, tuple[float, float]] | None = None,
    ) -> None:
        super().__init__(cap)
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh:
            with self._file() as fh:
                p = {m: list(v) for m, v in (prices or {}).items()}
                self._write(fh, _State(cap=cap, prices=p))
        elif not self.path.is_file():
            raise BudgetExceeded(f"The shared --max-cost ledger {path} is missing.")

    @contextmanager
    def _file(self) -> Iterator[Any]:
        with self._lock, open(self.path, "a+", encoding="utf-8") as fh:
            try:
                import fcntl
            except ImportError:  # (Windows: processes are not locked against each other)
                fcntl = None  # type: ignore[assignment]
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            yield fh  # the lock goes with the file's close

    @staticmethod
    def _write(fh: Any, s: _State) -> None:
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(asdict(s)))
        fh.flush()

    @contextmanager
    def _txn(self, write: bool = True) -> Iterator[_State]:
        with self._file() as fh:
            fh.seek(0)
            text = fh.read()
            s = _State(**json.loads(text)) if text.strip() else _State(cap=self._state.cap)
            try:
                yield s
            finally:  # a stop is raised from inside: it is kept too
                if write:
                    self._write(fh, s)
