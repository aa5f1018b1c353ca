"""One judge client for every reward source: engine, backend and loop opened once, closed once,
and usable from inside a running event loop (a notebook cell, `asyncio.run(main())`)."""

from __future__ import annotations

import asyncio

import pytest

import tests.fixtures.fault_server as fs
from cai_kit.constitution import load_constitution
from cai_kit.engine import EngineConfig
from tests.fixtures.fault_server import FaultServer


def test_a_judge_reward_scores_from_inside_a_running_event_loop(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old scorers held an asyncio.Runner, which refuses to run inside a running loop
    ("cannot be called from a running event loop"): a notebook could not score at all."""
    from cai_kit.train.rewards import JudgeReward, RewardSource

    monkeypatch.setattr(fs, "reply_text", lambda body: "Yes")
    reward = JudgeReward("j", load_constitution("harmless"), fault_server.base_url,
                         engine_config=EngineConfig(quiet=True, max_retries=0))  # fmt: skip

    async def notebook_cell() -> list[float]:
        return reward(["q", "q"], ["a", "b"])

    try:
        assert asyncio.run(notebook_cell()) == [1.0, 1.0]
        assert reward(["q"], ["c"]) == [1.0]  # the same engine and loop afterwards
        assert reward.usage()["judge_calls"] == 3 and isinstance(reward, RewardSource)
    finally:
        reward.close()
    reward.close()  # closing twice is fine


def test_an_unpriced_judge_logs_its_cost_as_unknown_not_zero(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A judge behind --api-base with no --price and a server that reports no cost: its spend
    is unknown, so `judge_cost` (in every training log) is NaN, never a silent 0.0; a priced
    judge's stays a number."""
    import math

    from cai_kit.engine.pricing import parse_price
    from cai_kit.train.rewards import JudgeReward

    monkeypatch.setattr(fs, "reply_text", lambda body: "Yes")
    unpriced = JudgeReward("j", load_constitution("harmless"), fault_server.base_url,
                           engine_config=EngineConfig(quiet=True, max_retries=0))  # fmt: skip
    priced = JudgeReward("j", load_constitution("harmless"), fault_server.base_url,
                         engine_config=EngineConfig(quiet=True, max_retries=0, price=parse_price("1,1")))  # fmt: skip
    try:
        assert unpriced(["q"], ["a"]) == [1.0] and priced(["q"], ["b"]) == [1.0]
        assert unpriced.usage()["judge_calls"] == 1 and math.isnan(unpriced.usage()["judge_cost"])
        assert priced.usage()["judge_cost"] > 0
    finally:
        unpriced.close()
        priced.close()


def test_every_reward_source_meets_the_protocol_and_a_plain_function_is_wrapped(
    tmp_path: object,
) -> None:
    from cai_kit.judges.rubric import Rubric
    from cai_kit.train.rewards import RewardSource, as_reward_source
    from cai_kit.train.rubric_reward import BlendedReward, PythonReward, RubricReward

    def length(prompts: list[str], responses: list[str]) -> list[float]:
        return [float(len(r)) for r in responses]

    plain = as_reward_source(length)
    assert isinstance(plain, RewardSource) and not plain.judged and plain(["p"], ["abc"]) == [3.0]
    python = PythonReward(length)  # the function itself, not only "module:function"
    assert python(["p"], ["ab"]) == [2.0] and "length" in python.ref
    rubric = RubricReward(Rubric(load_constitution("harmless")), "j", "http://127.0.0.1:9")
    blend = BlendedReward([(rubric, 1.0), (python, 0.5)])
    try:
        for source in (python, rubric, blend):
            assert isinstance(source, RewardSource)
        assert blend.judged and blend.usage() == {"judge_calls": 0.0, "judge_cost": 0.0}
    finally:
        blend.close()
