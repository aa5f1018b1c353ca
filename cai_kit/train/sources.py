"""Reward sources from plain Python: what `cai_kit.rewards` is, and what the CLI's reward
flags call.

    from cai_kit import rewards
    r = rewards.rubric("harmless", model="openai/gpt-4o-mini")      # each principle yes/no
    r = rewards.judge("harmless", model="openai/gpt-4o-mini")       # one question (d-RLAIF)
    r = rewards.group("harmless", model="...", group_size=4)        # GRPO: G answers together
    j = rewards.pairwise("harmless", model="...")                    # online DPO: A or B
    r = rewards.python(my_fn)              # or "module:function"; (prompts, responses) -> floats
    r = rewards.blend([(rewards.rubric(...), 1.0), (rewards.python(my_fn), 0.5)])
    r = rewards.reward_model("out/reward")                          # `cai-kit train reward`
    r = build_reward(RewardConfig(kind="rubric", judge="...", python_reward=my_fn))

Each returns a `RewardSource` (train/rewards.py); the ones that ask a judge hold one
`JudgeClient` each, closed by `close()` (the trainers close the reward they are given when
they end). A constitution is a shipped name, a YAML path or a `Constitution`. Configs check
themselves: a bad value raises the same one-sentence ConfigError the CLI prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai_kit.constitution import Constitution, load_constitution
from cai_kit.engine import EngineConfig
from cai_kit.errors import CaiKitError, ConfigError
from cai_kit.train.rewards import RewardSource

ConstitutionLike = str | Path | Constitution
PythonRewardFn = str | Callable[[list[str], list[str]], Any]
KINDS = ("auto", "rubric", "group")


def _constitution(c: ConstitutionLike) -> Constitution:
    return c if isinstance(c, Constitution) else load_constitution(str(c))


def judge(constitution: ConstitutionLike = "harmless", *, model: str, api_base: str | None = None,
          reward: str = "p-yes", engine_config: EngineConfig | None = None,
          max_failures: float = 0.1) -> RewardSource:  # fmt: skip
    """The one-question judge (d-RLAIF): `reward` p-yes (P(acceptable)) or expected-score."""
    from cai_kit.train.rewards import JudgeReward

    return JudgeReward(
        model, _constitution(constitution), api_base, engine_config, reward, max_failures
    )


def rubric(constitution: ConstitutionLike = "harmless", *, model: str | None = None,
           api_base: str | None = None, combine: str | None = None,
           engine_config: EngineConfig | None = None, max_failures: float = 0.1) -> RewardSource:  # fmt: skip
    """The constitution's rubric: checks run as programs, the other principles asked of `model`."""
    from cai_kit.judges.rubric import Rubric
    from cai_kit.train.rubric_reward import RubricReward

    return RubricReward(
        Rubric(_constitution(constitution), combine), model, api_base, engine_config, max_failures
    )


def group(constitution: ConstitutionLike = "harmless", *, model: str, group_size: int,
          repeats: int | None = None, api_base: str | None = None,
          engine_config: EngineConfig | None = None, max_failures: float = 0.1) -> RewardSource:  # fmt: skip
    """GRPO's group judge: each prompt's `group_size` completions scored together, `repeats`
    calls (default 2) in other orders."""
    from cai_kit.judges.group import GroupJudge
    from cai_kit.train.group_reward import GroupReward

    return GroupReward(GroupJudge(_constitution(constitution)), model, group_size,
                       2 if repeats is None else repeats, api_base, engine_config, max_failures)  # fmt: skip


def pairwise(constitution: ConstitutionLike = "harmless", *, model: str, api_base: str | None = None,
             config: Any = None, engine_config: EngineConfig | None = None) -> Any:  # fmt: skip
    """Online DPO's pairwise judge: P(a better) for each pair, both orders (`config`: a
    `judges.pairwise.JudgeConfig`, the mode, principles and tie margin)."""
    from cai_kit.train.online_dpo_trainer import PairJudge

    return PairJudge(model, _constitution(constitution), config, api_base, engine_config)


def python(fn: PythonRewardFn) -> RewardSource:
    """A Python reward: `fn(prompts, responses) -> list[float]`, or "module:function"."""
    from cai_kit.train.rubric_reward import PythonReward

    return PythonReward(fn)


def reward_model(path: str | Path) -> RewardSource:
    """A reward model trained by `cai-kit train reward` (loads torch)."""
    from cai_kit.train.rewards import RewardModelReward

    return RewardModelReward(Path(path))


def blend(parts: list[tuple[RewardSource, float]], max_failures: float = 0.1) -> RewardSource:
    """sum(weight * reward) over the parts."""
    from cai_kit.train.rubric_reward import BlendedReward

    return BlendedReward(parts, max_failures)


@dataclass
class RewardConfig:
    """The reward of `train ppo|grpo|online-dpo`, as its flags give it (docs/rewards.md).

    kind: auto (the reward model, else the judge's one question) | rubric | group (GRPO).
    `python_reward` alone is the whole reward; with another it is added, weighted."""

    kind: str = "auto"
    constitution: ConstitutionLike = "harmless"
    judge: str | None = None  # --reward-judge (online DPO: --judge)
    api_base: str | None = None  # --judge-api-base
    reward_model: str | Path | None = None
    judge_reward: str = "p-yes"  # auto with a judge: p-yes | expected-score
    rubric_combine: str | None = None
    group_repeats: int | None = None
    python_reward: PythonRewardFn | None = None
    python_weight: float = 1.0
    max_judge_failures: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"--reward must be auto, rubric or group, not {self.kind!r}.")
        if self.rubric_combine and self.kind != "rubric":
            raise ConfigError("--rubric-combine applies to --reward rubric only.")
        if self.group_repeats is not None and self.kind != "group":
            raise ConfigError("--group-repeats applies to --reward group only.")


def build_reward(cfg: RewardConfig, engine_config: EngineConfig | None = None,
                 group_size: int | None = None) -> RewardSource:  # fmt: skip
    """The reward source `cfg` asks for; `group_size`: GRPO's completions per prompt (for
    kind="group", which only GRPO has). A part that fails to build closes the ones built."""
    parts: list[tuple[RewardSource, float]] = []
    try:
        if cfg.kind == "rubric":
            if cfg.reward_model is not None:
                raise ConfigError(
                    "--reward rubric scores with the constitution; drop --reward-model."
                )
            parts.append((rubric(cfg.constitution, model=cfg.judge, api_base=cfg.api_base, combine=cfg.rubric_combine,
                                 engine_config=engine_config, max_failures=cfg.max_judge_failures), 1.0))  # fmt: skip
        elif cfg.kind == "group":
            parts.append((_group(cfg, engine_config, group_size), 1.0))
        elif cfg.python_reward is None or cfg.reward_model is not None or cfg.judge:
            parts.append((_one_source(cfg, engine_config), 1.0))
        if cfg.python_reward is not None:
            parts.append((python(cfg.python_reward), cfg.python_weight))
    except CaiKitError:
        for part, _ in parts:
            part.close()
        raise
    if len(parts) == 1 and parts[0][1] == 1.0:
        return parts[0][0]
    return blend(parts, cfg.max_judge_failures)


def _one_source(cfg: RewardConfig, engine_config: EngineConfig | None) -> RewardSource:
    """--reward-model or --reward-judge (exactly one must be given)."""
    if (cfg.reward_model is None) == (cfg.judge is None):
        raise ConfigError(
            "Give exactly one reward source: --reward-model DIR or --reward-judge MODEL."
        )
    if cfg.reward_model is not None:
        return reward_model(cfg.reward_model)
    assert cfg.judge is not None
    return judge(cfg.constitution, model=cfg.judge, api_base=cfg.api_base, reward=cfg.judge_reward,
                 engine_config=engine_config, max_failures=cfg.max_judge_failures)  # fmt: skip


def _group(
    cfg: RewardConfig, engine_config: EngineConfig | None, group_size: int | None
) -> RewardSource:
    """`--reward group`: the judge scores each prompt's G completions together (GRPO only)."""
    if group_size is None:
        raise ConfigError(
            "--reward group judges each prompt's completions together: train grpo only."
        )
    if cfg.reward_model is not None or not cfg.judge:
        raise ConfigError("--reward group needs --reward-judge MODEL (and no --reward-model).")
    return group(cfg.constitution, model=cfg.judge, group_size=group_size, repeats=cfg.group_repeats,
                 api_base=cfg.api_base, engine_config=engine_config, max_failures=cfg.max_judge_failures)  # fmt: skip


def pair_judge(kind: str, cfg: RewardConfig, judge_config: Any = None,
               engine_config: EngineConfig | None = None, tie_margin: float = 0.05) -> Any:  # fmt: skip
    """Online DPO's judge: kind "pairwise" (`cfg.judge` compares the two samples in both orders,
    by `judge_config`, a `judges.pairwise.JudgeConfig`) or "rubric"; a `python_reward` alone
    (or with the rubric) scores each sample, and the higher score is chosen."""
    from cai_kit.train.online_dpo_trainer import PointwisePairs

    if kind not in ("pairwise", "rubric"):
        raise ConfigError(f"--reward must be pairwise or rubric, not {kind!r}.")
    if kind == "pairwise" and cfg.judge is None and cfg.python_reward is None:
        raise ConfigError(
            "Give --judge MODEL (pairwise verdicts), --reward rubric, or --reward-fn module:function."
        )
    if kind == "pairwise" and cfg.judge is not None and cfg.python_reward is not None:
        raise ConfigError("--reward-fn scores each sample alone: use it with --reward rubric, or alone "
                          "(without --judge), not with the pairwise judge.")  # fmt: skip
    if kind == "pairwise" and cfg.judge is not None:  # (its JudgeConfig checked itself)
        return pairwise(cfg.constitution, model=cfg.judge, api_base=cfg.api_base, config=judge_config,
                        engine_config=engine_config)  # fmt: skip
    return PointwisePairs(build_reward(cfg, engine_config), tie_margin)
