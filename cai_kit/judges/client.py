"""One judge client for a training run: the engine, the backend and the event loop its calls run
on, opened once and closed once, for every reward source that asks a judge (the one-question
judge, the rubric, the group judge, online DPO's pairwise judge).

    client = JudgeClient("openai/gpt-4o-mini", engine_config=EngineConfig(max_cost=2.0))
    scores = client.run(lambda engine, backend: score_all(engine, backend))   # sync, any thread
    client.usage()   # {"judge_calls": ..., "judge_cost": ...} of this process so far
    client.close()

The calls run on an event loop of the client's own, on a worker thread, so `run` works from
plain code, from inside a running event loop (a notebook, or a coroutine under `asyncio.run`) and from a
training loop alike; an HTTP session never outlives the loop it was made on. One engine and
one backend serve the whole run, so the cache, --max-cost, rpm/tpm and statistics carry
across steps. Under N processes (torchrun, accelerate) --max-cost is one cap for the command:
each rank's engine may spend cap / N (`share_of_the_cap`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from cai_kit.engine import Engine, EngineConfig
from cai_kit.engine.budget import Budget
from cai_kit.engine.loop import LoopThread
from cai_kit.errors import ConfigError
from cai_kit.llm.base import Backend
from cai_kit.llm.registry import get_backend
from cai_kit.notices import note

T = TypeVar("T")


def share_of_the_cap(config: EngineConfig) -> EngineConfig:
    """--max-cost is one cap for the whole run: under N processes (accelerate, torchrun), each
    rank's own engine may spend cap/N, so that all of them together stay under it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if config.max_cost is None or world <= 1:
        return config
    if int(os.environ.get("RANK", "0")) == 0:
        note(f"--max-cost ${config.max_cost:g} is shared by {world} processes: "
             f"${config.max_cost / world:g} each.")  # fmt: skip
    share = config.max_cost / world
    return dataclasses.replace(config, max_cost=share, budget=Budget(share))


def check_judge_model(model: str, api_base: str | None) -> None:
    """Fail now on a bad judge model string or a missing key, naming the training commands'
    flag (`--judge-api-base`, where the backend's own message says `--api-base`)."""
    try:
        get_backend(model, api_base=api_base)
    except ConfigError as exc:
        raise ConfigError(re.sub(r"(?<![\w-])--api-base", "--judge-api-base", str(exc))) from None


async def all_or_cancel(aws: Iterable[Awaitable[T]]) -> list[T]:
    """Await all together, results in order; on the first error (e.g. --max-cost reached)
    cancel the others, so that this step makes no more calls, and raise it."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class JudgeClient:
    """The engine, backend and event loop of a run's judge (see the module docstring).

    `model=None`: no backend (a rubric whose principles all have checks still gets an engine,
    so its statistics read zero). The model string and key are checked now, not at step 1."""

    def __init__(self, model: str | None, api_base: str | None = None,
                 engine_config: EngineConfig | None = None) -> None:  # fmt: skip
        if model is not None:
            check_judge_model(model, api_base)  # fail now, naming this command's flag
        self.model, self.api_base = model, api_base
        self.engine_config = share_of_the_cap(engine_config or EngineConfig(quiet=True))
        self.engine: Engine | None = None
        self.backend: Backend | None = None
        self._loop: LoopThread | None = None  # the one sync bridge (engine.loop), made lazily

    def run(self, call: Callable[[Engine, Backend | None], Awaitable[T]]) -> T:
        """`await call(engine, backend)` on the client's loop and return its result. An
        interrupt (Ctrl-C) cancels the calls in flight; finished calls stay cached."""

        async def opened() -> T:
            if self.engine is None:  # made on the loop that will use it
                self.engine = Engine(self.engine_config)
                if self.model is not None:
                    self.backend = get_backend(self.model, api_base=self.api_base)
            return await call(self.engine, self.backend)

        if self._loop is None:
            self._loop = LoopThread(name="cai-kit-judge")
        return self._loop.run(opened())

    def usage(self) -> dict[str, float]:
        """This process's judge calls (answered, paid) and their cost in USD so far; the cost is
        NaN once a call had no price and its server reported none (unknown, as `engine.spend`
        says it: never a silent 0.0 in a training log)."""
        stats = self.engine.stats if self.engine is not None else None
        cost = stats.cost if stats else 0.0
        return {
            "judge_calls": float(stats.calls if stats else 0),
            "judge_cost": math.nan if stats and stats.unpriced_calls else cost,
        }

    def close(self) -> None:
        """Close the backend and the engine (its cache), then the loop; closing twice is fine."""
        loop = self._loop
        if loop is None:
            return
        backend, engine = self.backend, self.engine

        async def aclose() -> None:
            if backend is not None:
                await backend.aclose()
            if engine is not None:
                await engine.aclose()

        try:
            loop.run(aclose())
        finally:
            loop.close()
            self._loop = None
