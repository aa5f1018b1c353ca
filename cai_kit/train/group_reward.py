"""Group judging as GRPO's reward (`train grpo --reward group`, RULER-style).

GRPO's reward receives a step's completions with each prompt's G (`--num-generations`)
completions consecutive. `GroupReward` asks the judge to score one prompt's G responses
together in one call, `repeats` times (`--group-repeats`) with the responses shown in different
orders (`judges.group.orders`: a shuffle, then its reverse, ...), and gives each response
the mean of its scores / 10, a reward in [0, 1]. The prompt-building and reply-parsing object
is a `judges.group.GroupJudge`, or anything with
`messages(prompt, responses, order)`, `parse(text, g) -> list | None`, `orders(g, repeats)` and
`unshuffle(shown, order)` works (`judges.group.GroupJudge`).

Like `rewards.JudgeReward`: one `JudgeClient` (engine, backend, loop) for the run (cache, --max-cost,
statistics); a group whose call failed or whose reply could not be parsed (in any repeat) is no
reward (an unparsable reply is dropped from the call cache, so a re-run asks again): its G responses are counted (`last_failed`, `failed`) and get the mean reward of the
batch's other responses (equal rewards: no advantage inside the group), and `check_failures`
stops training past `max_failed_share`, so `score_step` and --max-judge-failures work
unchanged. `last_metrics` holds `group/failed_groups` of the last call.
"""

from __future__ import annotations

from typing import Any

from cai_kit.engine import CallFailed, Engine, EngineConfig
from cai_kit.errors import CaiKitError, ConfigError
from cai_kit.judges.client import JudgeClient, all_or_cancel
from cai_kit.llm.base import Backend, GenParams
from cai_kit.llm.reasoning import LOWEST
from cai_kit.train.rewards import JudgeFailed, RewardSource


class GroupReward(RewardSource):
    """Each prompt's G responses scored together by one judge call per repeat (see above)."""

    def __init__(
        self, judge: Any, model: str, group_size: int, repeats: int = 2, api_base: str | None = None,
        engine_config: EngineConfig | None = None, max_failed_share: float = 0.1,
    ) -> None:  # fmt: skip
        if group_size < 2:
            raise ConfigError(f"Group judging needs groups of 2 or more, not {group_size}.")
        if repeats < 1:
            raise ConfigError(f"--group-repeats must be 1 or more, not {repeats}.")
        self.judge = judge
        self.model = model
        self.group_size, self.repeats = group_size, repeats
        self.client = JudgeClient(model, api_base, engine_config)
        self.max_failed_share = max_failed_share
        self.params = GenParams(
            temperature=0.0, max_tokens=8 * group_size + 16, reasoning_effort=LOWEST
        )
        self.judged = True
        self.last_failed = 0  # failed response scorings in the last call
        self.failed = 0  # over the run
        self.scored = 0
        self.last_metrics: dict[str, float] = {}

    async def _one(self, engine: Engine, backend: Backend, prompt: str, responses: list[str],
                   order: list[int]) -> list[float] | None:  # fmt: skip
        messages = self.judge.messages(prompt, responses, order)
        try:
            c = await engine.call(backend, messages, self.params)
        except CallFailed:
            return None
        shown = self.judge.parse(c.text, len(responses))
        if shown is None:  # a re-run asks again instead of reading the same reply back
            engine.forget(backend, messages, self.params)
            return None
        return self.judge.unshuffle(shown, order)

    async def _group(self, engine: Engine, backend: Backend, prompt: str,
                     responses: list[str]) -> list[float] | None:  # fmt: skip
        runs = await all_or_cancel(
            self._one(engine, backend, prompt, responses, order)
            for order in self.judge.orders(len(responses), self.repeats)
        )
        if any(r is None for r in runs):
            return None
        return [sum(r[i] for r in runs) / (10 * len(runs)) for i in range(len(responses))]  # type: ignore[index]

    async def _score_all(self, engine: Engine, backend: Backend | None, prompts: list[str],
                         responses: list[str]) -> list[list[float] | None]:  # fmt: skip
        assert backend is not None
        g = self.group_size
        return await all_or_cancel(
            self._group(engine, backend, prompts[i], responses[i : i + g])
            for i in range(0, len(responses), g)
        )

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        g = self.group_size
        if len(prompts) != len(responses) or len(responses) % g:
            raise CaiKitError(f"Group judging got {len(responses)} responses, not whole groups "
                              f"of --num-generations {g}.")  # fmt: skip
        for i in range(0, len(prompts), g):
            if len(set(prompts[i : i + g])) != 1:
                raise CaiKitError(f"Group judging needs each prompt's {g} completions together; "
                                  f"responses {i + 1}-{i + g} answer different prompts.")  # fmt: skip
        groups = self.client.run(lambda e, b: self._score_all(e, b, prompts, responses))
        ok = [s for grp in groups if grp is not None for s in grp]
        failed_groups = sum(grp is None for grp in groups)
        self.last_failed = failed_groups * g
        self.failed += self.last_failed
        self.scored += len(responses)
        self.last_metrics = {"group/failed_groups": float(failed_groups)}
        fill = sum(ok) / len(ok) if ok else 0.0
        return [s for grp in groups for s in (grp if grp is not None else [fill] * g)]

    @property
    def engine(self) -> Engine | None:
        """The judge's engine (None before the first call): its stats, cost, cache."""
        return self.client.engine

    def usage(self) -> dict[str, float]:
        """This process's judge calls (answered, paid) and their cost in USD so far."""
        return self.client.usage()

    def check_failures(self, failed: int, total: int) -> None:
        """Raise JudgeFailed when more than max_failed_share of one step's responses (all ranks)
        were in groups the judge could not score."""
        if total and failed > self.max_failed_share * total:
            raise JudgeFailed(
                f"{failed} of {total} group-judged responses failed in this step (a call failed "
                f"or its reply was not one 0-10 score per response; limit "
                f"{self.max_failed_share:.0%}): training stopped rather than learn from missing "
                f"rewards. Check --reward-judge {self.model}, or raise --max-judge-failures."
            )

    def close(self) -> None:
        self.client.close()
