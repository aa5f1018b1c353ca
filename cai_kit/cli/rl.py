"""`cai-kit train ppo|online-dpo|spin|grpo` (our own PPO and Online DPO; SPIN over TRL's DPO).

A shell: the flags become `cai_kit.rewards.RewardConfig` and the trainer's config, and the
library builds the reward and trains (`cai_kit.train.ppo|online_dpo|grpo`, which write the
run files and print the step lines)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cai_kit.cli.common import TRAINER_WITHOUT, FullOpt, LimitOpt, job_flags
from cai_kit.cli.judge import Mode as JudgeMode
from cai_kit.cli.judge import Principles as JudgePrinciples
from cai_kit.cli.judge import Samples as JudgeSamples
from cai_kit.cli.judge import TieMargin as JudgeTieMargin
from cai_kit.cli.reward_flags import (
    GroupRepeats,
    RewardFn,
    RewardFnWeight,
    RewardKind,
    RubricCombine,
    judge_engine,
)
from cai_kit.cli.train import ReportTo, report_names
from cai_kit.train.self_play import SPIN

JudgeReward = Annotated[
    str,
    typer.Option(
        "--judge-reward",
        help="p-yes: P(Yes) to 'is it acceptable?' | expected-score: the d-RLAIF paper's "
        "expected 1-10 rating, scaled to [0, 1].",
    ),
]
RankSeedOpt = Annotated[
    int, typer.Option("--seed", help="Random seed (rank r of several uses seed + r).")
]
MaxJudgeFailures = Annotated[
    float,
    typer.Option(
        "--max-judge-failures",
        help="Stop when more than this share of a step's judge scorings fail.",
    ),
]


@job_flags(without=TRAINER_WITHOUT)
def ppo(
    prompts: Annotated[str, typer.Argument(help="Prompt file (as for revise).")],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Output directory (model, value head, stats, curves)."),
    ],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Policy: local, hf:PATH or a Hub id.")
    ] = "local",
    reward_model: Annotated[
        Path | None,
        typer.Option("--reward-model", help="A `cai-kit train reward` output directory."),
    ] = None,
    reward_judge: Annotated[
        str | None,
        typer.Option(
            "--reward-judge", help="A judge model string scoring each response (d-RLAIF)."
        ),
    ] = None,
    judge_api_base: Annotated[
        str | None, typer.Option("--judge-api-base", help="Base URL for --reward-judge.")
    ] = None,
    constitution: Annotated[
        str, typer.Option("--constitution", "-c", help="Principles for --reward-judge.")
    ] = "harmless",
    steps: Annotated[int, typer.Option("--steps", help="PPO steps.")] = 20,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rollouts per step.")] = 8,
    mini_batch_size: Annotated[
        int, typer.Option("--mini-batch-size", help="Rollouts per gradient step.")
    ] = 4,
    ppo_epochs: Annotated[int, typer.Option("--ppo-epochs", help="Passes over each batch.")] = 4,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 1.4e-5,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Response length.")] = 48,
    init_kl_coef: Annotated[
        float, typer.Option("--init-kl-coef", help="Initial KL penalty coefficient.")
    ] = 0.05,
    target_kl: Annotated[
        float,
        typer.Option("--target-kl", help="Target KL (nats/sequence) for the adaptive controller."),
    ] = 6.0,
    full: FullOpt = False,
    limit: LimitOpt = None,
    seed: RankSeedOpt = 0,
    temperature: Annotated[
        float, typer.Option("--temperature", help="Sampling temperature (log-probs use it too).")
    ] = 1.0,
    judge_reward: JudgeReward = "p-yes",
    max_judge_failures: MaxJudgeFailures = 0.1,
    reward: RewardKind = "auto",
    rubric_combine: RubricCombine = None,
    python_reward: RewardFn = None,
    python_reward_weight: RewardFnWeight = 1.0,
    report_to: ReportTo = None,
    **flags: Any,
) -> None:
    """PPO with a reward model or an AI judge as the reward (our own implementation).

    Runs unchanged under torchrun / accelerate launch: each rank samples its own slice of the
    prompts with its own seed, statistics are averaged over ranks, rank 0 writes OUT. A run
    stopped by --max-cost or a dead judge continues from its last finished step when the same
    command is run again."""
    from cai_kit import rewards, train
    from cai_kit.train.common import quiet_libraries

    names, engine = report_names(report_to), judge_engine(reward_judge, flags)
    cfg = rewards.RewardConfig(reward, constitution, reward_judge, judge_api_base, reward_model, judge_reward,
                               rubric_combine, None, python_reward, python_reward_weight, max_judge_failures)  # fmt: skip
    config = train.PPOConfig(learning_rate=lr, batch_size=batch_size, mini_batch_size=mini_batch_size, ppo_epochs=ppo_epochs,
                             max_new_tokens=max_new_tokens, init_kl_coef=init_kl_coef, target_kl=target_kl, seed=seed,
                             temperature=temperature)  # fmt: skip
    with quiet_libraries():
        train.ppo(prompts, rewards.build_reward(cfg, engine), out, model=model, config=config, steps=steps,
                  full=full, limit=limit, report_to=names)  # fmt: skip


@job_flags(without=TRAINER_WITHOUT)
def online_dpo(
    prompts: Annotated[str, typer.Argument(help="Prompt file (as for revise).")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output directory (model, stats, curves).")
    ],
    judge: Annotated[
        str | None,
        typer.Option(
            "--judge",
            help="The judge model: compares the two samples (--reward pairwise), or scores the "
            "rubric's principles that have no check (--reward rubric).",
        ),
    ] = None,
    model: Annotated[
        str,
        typer.Option("--model", "-m", help="Policy (and reference): local, hf:PATH or a Hub id."),
    ] = "local",
    judge_api_base: Annotated[
        str | None, typer.Option("--judge-api-base", help="Base URL for --judge.")
    ] = None,
    constitution: Annotated[
        str, typer.Option("--constitution", "-c", help="Principles the judge compares by.")
    ] = "harmless",
    steps: Annotated[int, typer.Option("--steps", help="DPO steps (one batch each).")] = 20,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Prompts per step (two responses each).")
    ] = 4,
    beta: Annotated[float, typer.Option("--beta", help="DPO beta.")] = 0.1,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 5e-6,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Response length.")] = 64,
    temperature: Annotated[
        float,
        typer.Option("--temperature", help="Sampling temperature (> 0; log-probs use it too)."),
    ] = 1.0,
    full: FullOpt = False,
    limit: LimitOpt = None,
    seed: RankSeedOpt = 0,
    mode: JudgeMode = "logprobs",
    samples: JudgeSamples = 5,
    principles: JudgePrinciples = "one",
    tie_margin: JudgeTieMargin = 0.05,
    max_judge_failures: MaxJudgeFailures = 0.1,
    reward: Annotated[
        str,
        typer.Option(
            "--reward",
            help="pairwise: --judge compares the two samples in both orders | rubric: each "
            "sample scored alone by the constitution's rubric (checks run as programs, other "
            "principles asked of --judge); the higher score is chosen.",
        ),
    ] = "pairwise",
    rubric_combine: RubricCombine = None,
    python_reward: RewardFn = None,
    python_reward_weight: RewardFnWeight = 1.0,
    report_to: ReportTo = None,
    **flags: Any,
) -> None:
    """Online DPO with AI feedback (OAIF): two samples per prompt from the current policy, judged
    in both orders by --judge (or scored by a rubric / --reward-fn); one DPO step on the
    decisive pairs (our own implementation).

    Runs unchanged under torchrun / accelerate launch: each rank samples its own slice of the
    prompts with its own seed, the DPO step uses every rank's decisive pairs, rank 0 writes OUT.
    A run stopped by --max-cost or a dead judge continues from its last finished step when the
    same command is run again."""
    from cai_kit import rewards, train
    from cai_kit.judges.pairwise import JudgeConfig
    from cai_kit.train.common import quiet_libraries

    config = train.OnlineDPOConfig(learning_rate=lr, batch_size=batch_size, beta=beta, tie_margin=tie_margin,
                                   max_judge_failures=max_judge_failures, max_new_tokens=max_new_tokens,
                                   temperature=temperature, seed=seed)  # fmt: skip
    cfg = rewards.RewardConfig("rubric" if reward == "rubric" else "auto", constitution, judge, judge_api_base,
                               rubric_combine=rubric_combine, python_reward=python_reward,
                               python_weight=python_reward_weight, max_judge_failures=max_judge_failures)  # fmt: skip
    verdicts = JudgeConfig(mode, samples, principles=principles, tie_margin=tie_margin, seed=seed)  # type: ignore[arg-type]
    names, engine = report_names(report_to), judge_engine(judge, flags)
    with quiet_libraries():
        source = rewards.pair_judge(reward, cfg, verdicts, engine, tie_margin)
        train.online_dpo(prompts, source, out, model=model, config=config, steps=steps, full=full, limit=limit,
                         report_to=names)  # fmt: skip


def spin(
    data: Annotated[
        Path, typer.Argument(help="SFT data: `messages` rows (e.g. `cai-kit export sft` output).")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output directory: iter_k/{data,model}.")
    ],
    model: Annotated[
        str, typer.Option("--model", "-m", help="The SFT model to start from (hf:PATH or local).")
    ] = "local",
    iterations: Annotated[
        int, typer.Option("--iterations", help="Self-play iterations.")
    ] = SPIN.iterations,
    max_steps: Annotated[
        int, typer.Option("--max-steps", help="DPO steps per iteration.")
    ] = SPIN.max_steps,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Per-device batch size.")
    ] = SPIN.batch_size,
    lr: Annotated[float, typer.Option("--lr", help="DPO learning rate.")] = SPIN.lr,
    beta: Annotated[float, typer.Option("--beta", help="DPO beta.")] = SPIN.beta,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="Length of the model's own answers.")
    ] = SPIN.max_new_tokens,
    report_to: ReportTo = None,
) -> None:
    """SPIN: the model's own answers are rejected, SFT targets chosen; DPO per iteration."""
    from cai_kit.train.common import quiet_libraries
    from cai_kit.train.self_play import run_spin

    names = report_names(report_to)
    opts = {"max_steps": max_steps, "batch_size": batch_size, "lr": lr, "beta": beta,
            "report_to": ",".join(names) or "none"}  # fmt: skip
    with quiet_libraries():
        models = run_spin(data, model, out, iterations, opts, max_new_tokens)
    typer.echo("Iterations: " + ", ".join(str(m) for m in models))


@job_flags(without=TRAINER_WITHOUT)
def grpo(
    prompts: Annotated[str, typer.Argument(help="Prompt file (as for revise).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Policy: local, hf:PATH or a Hub id.")
    ] = "local",
    reward_model: Annotated[
        Path | None,
        typer.Option("--reward-model", help="A `cai-kit train reward` output directory."),
    ] = None,
    reward_judge: Annotated[
        str | None, typer.Option("--reward-judge", help="A judge model string (d-RLAIF).")
    ] = None,
    judge_api_base: Annotated[
        str | None, typer.Option("--judge-api-base", help="Base URL for --reward-judge.")
    ] = None,
    constitution: Annotated[
        str, typer.Option("--constitution", "-c", help="Principles for --reward-judge.")
    ] = "harmless",
    max_steps: Annotated[int, typer.Option("--max-steps", help="Optimiser steps.")] = 10,
    num_generations: Annotated[
        int, typer.Option("--num-generations", help="Completions per prompt (the group).")
    ] = 4,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size", help="Completions per device batch (a multiple of the group)."
        ),
    ] = 4,
    max_completion_length: Annotated[
        int, typer.Option("--max-completion-length", help="Tokens per completion.")
    ] = 64,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 1e-5,
    full: FullOpt = False,
    limit: LimitOpt = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed (sampling, data order, LoRA init).")
    ] = 0,
    judge_reward: JudgeReward = "p-yes",
    max_judge_failures: MaxJudgeFailures = 0.1,
    reward: RewardKind = "auto",
    rubric_combine: RubricCombine = None,
    group_repeats: GroupRepeats = None,
    python_reward: RewardFn = None,
    python_reward_weight: RewardFnWeight = 1.0,
    report_to: ReportTo = None,
    **flags: Any,
) -> None:
    """Online RLAIF with TRL's GRPO: our judge or reward model scores each sampled completion.

    A run stopped by --max-cost or a dead judge saves OUT/checkpoint-N and continues from it
    when the same command is run again."""
    from cai_kit import rewards, train
    from cai_kit.train.common import quiet_libraries

    names, engine = report_names(report_to), judge_engine(reward_judge, flags)
    cfg = rewards.RewardConfig(reward, constitution, reward_judge, judge_api_base, reward_model, judge_reward,
                               rubric_combine, group_repeats, python_reward, python_reward_weight, max_judge_failures)  # fmt: skip
    with quiet_libraries():
        path, _ = train.grpo(prompts, rewards.build_reward(cfg, engine, group_size=num_generations), out, model=model,
                             max_steps=max_steps, num_generations=num_generations, batch_size=batch_size,
                             max_completion_length=max_completion_length, lr=lr, full=full, seed=seed, limit=limit,
                             report_to=names)  # fmt: skip
    typer.echo(f"Saved to {path}")


def register(app: typer.Typer) -> None:
    from cai_kit.cli.train import train_app

    train_app.command("ppo")(ppo)
    train_app.command("online-dpo")(online_dpo)
    train_app.command("spin")(spin)
    train_app.command("grpo")(grpo)
