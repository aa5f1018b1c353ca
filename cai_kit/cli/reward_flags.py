"""The reward flags `train ppo|grpo|online-dpo` take beside --reward-model/--reward-judge
(docs/rewards.md); the library builds the reward (`cai_kit.rewards.build_reward`).

`--reward rubric` scores each response by the constitution's rubric (checks need no model;
judged principles need --reward-judge); `--rubric-combine` overrides the constitution's rule;
`--reward-fn module:function` adds (or alone is) any Python reward, weighted by
`--reward-fn-weight`. `--reward group` (GRPO only) has --reward-judge score each prompt's
G completions together in one call, `--group-repeats` times in other orders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from cai_kit.engine import EngineConfig

RewardKind = Annotated[
    str,
    typer.Option(
        "--reward",
        help="auto: --reward-model, or --reward-judge's one yes/no score | rubric: the "
        "constitution's rubric, principle by principle (checks run as programs; the other "
        "principles are asked of --reward-judge) | group (train grpo): --reward-judge scores each "
        "prompt's completions together, one call per --group-repeats.",
    ),
]
RubricCombine = Annotated[
    str | None,
    typer.Option(
        "--rubric-combine",
        help="mean | min | weighted | all-pass | priority (default: the constitution's rubric.combine, "
        "else mean).",
    ),
]
RewardFn = Annotated[
    str | None,
    typer.Option(
        "--reward-fn",
        help="A Python reward module:function(prompts, responses) -> list[float]; alone, or "
        "added to the other reward with --reward-fn-weight.",
    ),
]
GroupRepeats = Annotated[
    int | None,
    typer.Option(
        "--group-repeats",
        help="--reward group: judge calls per prompt's group, each showing the completions in "
        "another order (a shuffle, then its reverse, ...); their scores are averaged "
        "(default 2).",
    ),
]
RewardFnWeight = Annotated[
    float, typer.Option("--reward-fn-weight", help="Weight of --reward-fn in the sum.")
]


def judge_engine(judge: str | None, flags: dict[str, Any]) -> EngineConfig:
    """The judge's engine from the command's engine flags; an effort the judge does not take
    is refused now (exit 2) rather than at every step."""
    from cai_kit.cli.common import engine_config_from, fail, litellm_effort_error
    from cai_kit.llm.reasoning import reasoning_rules
    from cai_kit.llm.thinking import capabilities

    effort = flags.get("reasoning_effort")
    if judge and effort is not None:
        if capabilities(judge) is not None:  # Anthropic, Gemini: the litellm route's own map
            why = litellm_effort_error(judge, effort)
        else:
            rules = reasoning_rules(judge)
            why = rules.effort_error(effort) if rules is not None else None
        if why is not None:
            fail(why, 2)
    return engine_config_from({**flags, "quiet": True})
