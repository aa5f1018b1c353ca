"""The reward flags `train ppo|grpo` take beside --reward-model/--reward-judge (docs/rewards.md).

`--reward rubric` scores each response by the constitution's rubric (checks need no model;
judged principles need --reward-judge); `--rubric-combine` overrides the constitution's rule;
`--reward-fn module:function` adds (or alone is) any Python reward, weighted by
`--reward-fn-weight`. `--reward group` (GRPO only) has --reward-judge score each prompt's
G completions together in one call, `--group-repeats` times in other orders.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

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
        help="mean | min | weighted | all-pass (default: the constitution's rubric.combine, "
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


def build_reward(opts: dict[str, Any], base: Callable[[], Any]) -> Any:
    """The reward callable from the command's options; `base()` builds the --reward-model /
    --reward-judge source (`cli.rl.reward_source`) when that is what is asked for."""
    from cai_kit.cli.common import engine_config_from, fail
    from cai_kit.errors import CaiKitError

    kind, fn = opts.get("reward", "auto"), opts.get("python_reward")
    effort, judge = opts.get("reasoning_effort"), opts.get("reward_judge")
    if effort is not None and judge:  # the judge's effort, refused now rather than every step
        from cai_kit.llm.reasoning import reasoning_rules

        rules = reasoning_rules(judge)
        if rules is not None and (why := rules.effort_error(effort)) is not None:
            fail(why, 2)
    if kind not in ("auto", "rubric", "group"):
        fail(f"--reward must be auto, rubric or group, not {kind!r}.")
    if opts.get("rubric_combine") and kind != "rubric":
        fail("--rubric-combine applies to --reward rubric only.")
    if opts.get("group_repeats") is not None and kind != "group":
        fail("--group-repeats applies to --reward group only.")
    parts: list[tuple[Any, float]] = []
    try:
        if kind == "rubric":
            from cai_kit.constitution import load_constitution
            from cai_kit.judges.rubric import Rubric
            from cai_kit.train.rubric_reward import RubricReward

            if opts.get("reward_model") is not None:
                fail("--reward rubric scores with the constitution; drop --reward-model.")
            rubric = Rubric(load_constitution(opts["constitution"]), opts.get("rubric_combine"))
            config = engine_config_from({**opts, "quiet": True})
            parts.append((RubricReward(rubric, opts.get("reward_judge"), opts.get("judge_api_base"),
                                       config, opts.get("max_judge_failures", 0.1)), 1.0))  # fmt: skip
        elif kind == "group":
            parts.append((_group_reward(opts), 1.0))
        elif fn is None or opts.get("reward_model") is not None or opts.get("reward_judge"):
            parts.append((base(), 1.0))
        if fn is not None:
            from cai_kit.train.rubric_reward import PythonReward

            parts.append((PythonReward(fn), opts.get("python_reward_weight", 1.0)))
    except CaiKitError as exc:
        for part, _ in parts:
            part.close()
        fail(str(exc))
    if len(parts) == 1 and parts[0][1] == 1.0:
        return parts[0][0]
    from cai_kit.train.rubric_reward import BlendedReward

    return BlendedReward(parts, opts.get("max_judge_failures", 0.1))


def _group_reward(opts: dict[str, Any]) -> Any:
    """`--reward group`: the judge scores each prompt's G completions together (GRPO only)."""
    from cai_kit.cli.common import engine_config_from, fail
    from cai_kit.constitution import load_constitution
    from cai_kit.judges.group import GroupJudge
    from cai_kit.train.group_reward import GroupReward

    if "num_generations" not in opts:
        fail("--reward group judges each prompt's completions together: train grpo only.")
    if opts.get("reward_model") is not None or not opts.get("reward_judge"):
        fail("--reward group needs --reward-judge MODEL (and no --reward-model).")
    repeats = opts.get("group_repeats")
    judge = GroupJudge(load_constitution(opts["constitution"]))
    return GroupReward(judge, opts["reward_judge"], opts["num_generations"],
                            2 if repeats is None else repeats, opts.get("judge_api_base"),
                            engine_config_from({**opts, "quiet": True}),
                            opts.get("max_judge_failures", 0.1))  # fmt: skip
