"""The reward flags `train ppo|grpo` take beside --reward-model/--reward-judge (docs/rewards.md).

`--reward rubric` scores each response by the constitution's rubric (checks need no model;
judged principles need --reward-judge); `--rubric-combine` overrides the constitution's rule;
`--reward-fn module:function` adds (or alone is) any Python reward, weighted by
`--reward-fn-weight`.
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
        "principles are asked of --reward-judge).",
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
RewardFnWeight = Annotated[
    float, typer.Option("--reward-fn-weight", help="Weight of --reward-fn in the sum.")
]


def build_reward(opts: dict[str, Any], base: Callable[[], Any]) -> Any:
    """The reward callable from the command's options; `base()` builds the --reward-model /
    --reward-judge source (`cli.rl.reward_source`) when that is what is asked for."""
    from cai_kit.cli.common import engine_config_from, fail
    from cai_kit.errors import CaiKitError

    kind, fn = opts.get("reward", "auto"), opts.get("python_reward")
    if kind not in ("auto", "rubric"):
        fail(f"--reward must be auto or rubric, not {kind!r}.")
    if opts.get("rubric_combine") and kind != "rubric":
        fail("--rubric-combine applies to --reward rubric only.")
    parts: list[tuple[Any, float]] = []
    try:
        if kind == "rubric":
            from cai_kit.constitution import load_constitution
            from cai_kit.stages.rubric import Rubric
            from cai_kit.train.rubric_reward import RubricReward

            if opts.get("reward_model") is not None:
                fail("--reward rubric scores with the constitution; drop --reward-model.")
            rubric = Rubric(load_constitution(opts["constitution"]), opts.get("rubric_combine"))
            config = engine_config_from({**opts, "quiet": True})
            parts.append((RubricReward(rubric, opts.get("reward_judge"), opts.get("judge_api_base"),
                                       config, opts.get("max_judge_failures", 0.1)), 1.0))  # fmt: skip
        elif fn is None or opts.get("reward_model") is not None or opts.get("reward_judge"):
            parts.append((base(), 1.0))
        if fn is not None:
            from cai_kit.train.rubric_reward import PythonReward

            parts.append((PythonReward(fn), opts.get("python_reward_weight", 1.0)))
    except CaiKitError as exc:
        for part, _ in parts:
            if hasattr(part, "close"):
                part.close()
        fail(str(exc))
    if len(parts) == 1 and parts[0][1] == 1.0:
        return parts[0][0]
    from cai_kit.train.rubric_reward import BlendedReward

    return BlendedReward(parts, opts.get("max_judge_failures", 0.1))
