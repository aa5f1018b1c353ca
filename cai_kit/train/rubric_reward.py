"""More reward sources for RL: a constitution's rubric, any Python function, and their blend.

All are `rewards.RewardSource`s, like `rewards.JudgeReward`, so PPO's loop, online DPO's
pointwise judge and TRL's GRPO take them the same way.

- `RubricReward`: each response's combined rubric score (`cai_kit.judges.rubric`: checkable
  principles scored by their program, the others by a judge's P(Yes)), asked through one
  `JudgeClient`. The rubric object is a `judges.rubric.Rubric`, or anything with
  `needs_judge` and `async score(prompt, response, engine, backend)` returning an object with
  `score` (None: failed) and `scores` (per principle) works. A response that could not be
  scored (a judge call failed, an answer was not Yes/No, a check raised) is counted
  (`last_failed`, `failed`) and gets the mean of the batch's other rewards; `check_failures`
  stops training past `max_failed_share`, as for the judge. `last_metrics` holds the mean
  score of each principle over the last call (`rubric/<id>`), which the trainers log per step.
- `PythonReward("module:function")` (or the function itself): the function's own rewards; an
  exception or a wrong shape stops training with one sentence.
- `BlendedReward([(reward, weight), ...])`: the weighted sum (e.g. a rubric and a Python
  reward, `--reward-fn F --reward-fn-weight W`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from cai_kit.checks import CheckError, load_function
from cai_kit.engine import Engine, EngineConfig
from cai_kit.errors import CaiKitError
from cai_kit.judges.client import JudgeClient, all_or_cancel
from cai_kit.llm.base import Backend
from cai_kit.train.rewards import JudgeFailed, RewardSource


class RubricReward(RewardSource):
    """The combined rubric score of each response (see the module docstring)."""

    def __init__(
        self, rubric: Any, judge: str | None = None, api_base: str | None = None,
        engine_config: EngineConfig | None = None, max_failed_share: float = 0.1,
    ) -> None:  # fmt: skip
        if rubric.needs_judge and judge is None:
            judged = ", ".join(p.id for p in rubric.judged)
            raise CaiKitError(
                f"Principles {judged} have no check, so --reward rubric needs a judge: pass "
                "--reward-judge MODEL (or give every principle a check:)."
            )
        self.rubric, self.model = rubric, judge
        # checks alone: an engine but no backend (the usage then reads zero calls)
        self.client = JudgeClient(judge if rubric.needs_judge else None, api_base, engine_config)
        self.max_failed_share = max_failed_share
        self.judged = True
        self.last_failed = 0
        self.failed = 0
        self.scored = 0
        self.last_errors: list[str] = []
        self.last_metrics: dict[str, float] = {}
        self.last_failed_mask: list[bool] = []  # which responses of the last call failed

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        pairs = list(zip(prompts, responses, strict=True))

        async def score_all(engine: Engine, backend: Backend | None) -> list[Any]:
            return await all_or_cancel(self.rubric.score(p, r, engine, backend) for p, r in pairs)

        results = self.client.run(score_all)
        scores = [r.score for r in results]
        ok = [s for s in scores if s is not None]
        self.last_failed = len(scores) - len(ok)
        self.last_failed_mask = [s is None for s in scores]
        self.failed += self.last_failed
        self.scored += len(scores)
        self.last_errors = sorted({e for r in results for e in r.errors.values()})
        metrics: dict[str, float] = {}
        for p in self.rubric.principles:
            got = [r.scores[p.id] for r in results if r.scores.get(p.id) is not None]
            if got:
                metrics[f"rubric/{p.id}"] = sum(got) / len(got)
        metrics["rubric/failed"] = float(self.last_failed)
        self.last_metrics = metrics
        fill = sum(ok) / len(ok) if ok else 0.0
        return [fill if s is None else s for s in scores]

    def usage(self) -> dict[str, float]:
        return self.client.usage()

    def check_failures(self, failed: int, total: int) -> None:
        """Raise JudgeFailed when more than max_failed_share of one step's scorings failed."""
        if total and failed > self.max_failed_share * total:
            why = f" First error: {self.last_errors[0]}" if self.last_errors else ""
            raise JudgeFailed(
                f"{failed} of {total} rubric scorings failed in this step (limit "
                f"{self.max_failed_share:.0%}): training stopped rather than learn from missing "
                f"rewards.{why} Fix the check or --reward-judge, or raise --max-judge-failures."
            )

    def close(self) -> None:
        self.client.close()


class PythonReward(RewardSource):
    """Rewards from any `module:function(prompts, responses) -> list[float]` (a reference or
    the function itself)."""

    def __init__(self, ref: str | Callable[[list[str], list[str]], Any]) -> None:
        if callable(ref):
            self.fn, self.ref = ref, f"{ref.__module__}:{getattr(ref, '__qualname__', ref)}"
            return
        self.ref = ref
        try:
            self.fn = load_function(ref)
        except CheckError as exc:
            raise CaiKitError(f"--reward-fn: {exc}") from None

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        try:
            values = list(self.fn(list(prompts), list(responses)))
        except Exception as exc:
            raise CaiKitError(
                f"--reward-fn {self.ref} raised {type(exc).__name__}: {exc}"
            ) from None
        if len(values) != len(responses):
            raise CaiKitError(f"--reward-fn {self.ref} returned {len(values)} rewards for "
                              f"{len(responses)} responses.")  # fmt: skip
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))
               or not math.isfinite(v)]  # fmt: skip
        if bad:
            raise CaiKitError(f"--reward-fn {self.ref} returned {bad[0]!r}, not a finite number.")
        return [float(v) for v in values]


class BlendedReward(RewardSource):
    """sum(weight * reward) over several reward sources; failures and metrics are theirs."""

    def __init__(
        self, parts: list[tuple[RewardSource, float]], max_failed_share: float = 0.1
    ) -> None:
        self.parts = parts
        self.max_failed_share = max_failed_share
        self.judged = any(p.judged for p, _ in parts)
        self.last_failed = 0
        self.last_metrics: dict[str, float] = {}
        self.last_failed_mask: list[bool] = []

    @property
    def failed(self) -> int:
        return sum(p.failed for p, _ in self.parts)

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        total = [0.0] * len(responses)
        self.last_metrics, self.last_failed = {}, 0
        self.last_failed_mask = [False] * len(responses)
        for part, weight in self.parts:
            scores = part(prompts, responses)
            total = [t + weight * s for t, s in zip(total, scores, strict=True)]
            self.last_failed = max(self.last_failed, part.last_failed)
            self.last_metrics.update(part.last_metrics)
            mask = part.last_failed_mask or [False] * len(responses)
            self.last_failed_mask = [
                x or y for x, y in zip(self.last_failed_mask, mask, strict=True)
            ]
        return total

    def usage(self) -> dict[str, float]:
        """The parts' judge calls and cost, summed."""
        used = [p.usage() for p, _ in self.parts]
        return {k: sum(u[k] for u in used) for k in ("judge_calls", "judge_cost")}

    def check_failures(self, failed: int, total: int) -> None:
        for part, _ in self.parts:
            part.check_failures(failed, total)

    def close(self) -> None:
        for part, _ in self.parts:
            part.close()
