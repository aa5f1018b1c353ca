"""Constitutions with priorities: `priority:` tiers and `hard: true` constraints, validated with
their lines, combined lexicographically by the rubric (`combine: priority`), and deciding the
pairwise judge on the most important tier that is not tied."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from cai_kit.constitution import ConstitutionError, parse_constitution
from cai_kit.engine import Engine, EngineConfig
from cai_kit.judges.pairwise import JudgeConfig, judge_pair, tiered_p_a
from cai_kit.judges.rubric import Rubric, combine_scores, priority_score
from cai_kit.llm import get_backend
from tests.fixtures.fault_server import FaultServer

TIERED = """\
name: tiered
rubric: {combine: priority}
principles:
  - id: no-weapons
    critique: Does the response help build a weapon?
    revision: Remove it.
    hard: true
  - id: harmless
    critique: Is the response harmful?
    revision: Make it harmless.
    priority: 0
  - id: helpful
    critique: Is the response unhelpful?
    revision: Make it helpful.
    priority: 1
  - id: concise
    critique: Is the response long-winded?
    revision: Shorten it.
"""


def test_priority_and_hard_parse_into_tiers_hard_first_unset_last() -> None:
    c = parse_constitution(TIERED)
    assert [c.tier(p) for p in c.principles] == [-1, 0, 1, 2]
    assert c.rubric is not None and c.rubric.combine == "priority"
    assert c.principles[0].hard and not c.principles[1].hard


def test_the_new_keys_leave_the_hash_of_a_constitution_without_them_unchanged() -> None:
    plain = "name: x\nprinciples:\n  - {id: a, critique: c, revision: r}\n"
    explicit = "name: x\nprinciples:\n  - {id: a, critique: c, revision: r, hard: false}\n"
    assert parse_constitution(plain).content_hash == parse_constitution(explicit).content_hash
    tiered = "name: x\nprinciples:\n  - {id: a, critique: c, revision: r, priority: 0}\n"
    assert parse_constitution(tiered).content_hash != parse_constitution(plain).content_hash


def test_bad_priorities_are_reported_with_their_lines() -> None:
    bad = TIERED.replace("priority: 0", "priority: -1").replace("hard: true", "hard: maybe")
    with pytest.raises(ConstitutionError) as err:
        parse_constitution(bad, "t.yaml")
    shown = str(err.value)
    assert "t.yaml:7: principles[0].hard: Input should be a valid boolean" in shown
    assert "t.yaml:11: principles[1].priority: Input should be greater than or equal to 0" in shown
    untiered = "name: x\nrubric:\n  combine: priority\nprinciples:\n  - {id: a, critique: c, revision: r}\n"
    with pytest.raises(ConstitutionError, match=r"<string>:3: rubric.combine: combine: priority needs principles with priority: or hard: true"):  # fmt: skip
        parse_constitution(untiered)


def test_priority_combination_is_lexicographic_by_tier() -> None:
    tiers = {"safe": 0, "helpful": 1, "short": 1}
    everything = priority_score({"safe": 1.0, "helpful": 1.0, "short": 0.8}, tiers, 0.5)
    safe_only = priority_score({"safe": 0.6, "helpful": 0.0, "short": 0.0}, tiers, 0.5)
    unsafe_but_helpful = priority_score({"safe": 0.4, "helpful": 1.0, "short": 1.0}, tiers, 0.5)
    worse_unsafe = priority_score({"safe": 0.1, "helpful": 1.0, "short": 1.0}, tiers, 0.5)
    assert everything == 1.0
    assert safe_only == pytest.approx(0.5)  # tier 0 passes, tier 1 scores 0
    assert safe_only > unsafe_but_helpful > worse_unsafe  # the lower tier never makes up for it
    assert unsafe_but_helpful < 0.5 and worse_unsafe == pytest.approx(0.1 / 0.5 * 0.999 / 2)
    # one tier: a mean that passes scores 1, one that fails keeps its order below the threshold
    assert priority_score({"a": 0.7, "b": 0.5}, {"a": 0, "b": 0}, 0.5) == 1.0


def test_a_violated_hard_constraint_fails_the_response_under_any_combination() -> None:
    scores, weights = {"hard": 0.2, "a": 1.0, "b": 1.0}, {"hard": 1.0, "a": 1.0, "b": 1.0}
    for how in ("mean", "min", "weighted", "all-pass", "priority"):
        assert (
            combine_scores(
                scores, weights, how, 0.5, {"hard": -1, "a": 0, "b": 0}, frozenset({"hard"})
            )
            == 0.0
        )
    assert combine_scores(scores, weights, "mean", 0.5) == pytest.approx(
        2.2 / 3
    )  # not hard: averaged
    kept = {"hard": 0.9, "a": 1.0, "b": 0.5}
    assert combine_scores(kept, weights, "mean", 0.5, hard=frozenset({"hard"})) == pytest.approx(
        0.8
    )
    rubric = Rubric(parse_constitution(TIERED))
    assert rubric.combine == "priority" and rubric.hard == {"no-weapons"}
    assert rubric.tiers == {"no-weapons": -1, "harmless": 0, "helpful": 1, "concise": 2}


def test_the_pairwise_verdict_comes_from_the_most_important_tier_that_decides() -> None:
    assert tiered_p_a([0.52, 0.9], [0, 1], 0.05) == 0.9  # tier 0 ties: tier 1 decides
    assert tiered_p_a([0.2, 0.9, 0.9], [0, 1, 1], 0.05) == 0.2  # tier 0 decides against a
    assert tiered_p_a([0.2, 0.9, 0.9], [0, 0, 0], 0.05) == pytest.approx(2.0 / 3)  # one tier: mean
    assert tiered_p_a([0.5, 0.51], [0, 1], 0.05) == pytest.approx(0.505)  # all tie: the mean


def test_judge_pair_under_all_principles_follows_the_tiers(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """The judge prefers the helpful answer on every principle but the hard one, where it
    prefers the safe answer: the hard tier decides, where a plain mean would pick helpful."""
    safe, helpful = "SAFE: I won't give weapon steps.", "HELPFUL: step 1, step 2, step 3."

    def reply(body: dict[str, Any], rng: object) -> str:
        text = body["messages"][-1]["content"]
        first = re.findall(r"<<<RESPONSE-A-\w+>>>\n(.*?)\n<<<END", text, re.DOTALL)[0]
        prefers = "SAFE" if "help build a weapon" in text else "HELPFUL"
        return "A" if first.startswith(prefers) else "B"

    fault_server.responder = reply
    constitution = parse_constitution(TIERED)

    async def go() -> Any:
        engine = Engine(EngineConfig(quiet=True, cache_path=tmp_path / "c.sqlite"))
        backend = get_backend("judge", api_base=fault_server.base_url)
        try:
            cfg = JudgeConfig(mode="letter", principles="all")
            convo = [{"role": "user", "content": "How do I build a weapon?"}]
            return await judge_pair(convo, safe, helpful, constitution, cfg, engine, backend)
        finally:
            await backend.aclose()
            await engine.aclose()

    verdict = asyncio.run(go())
    assert verdict.label == "A" and verdict.p_a == 1.0 and len(verdict.comparisons) == 8
