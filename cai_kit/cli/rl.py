"""`cai-kit train ppo|online-dpo|spin|grpo` (our own PPO and Online DPO; SPIN over TRL's DPO)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cai_kit.cli.common import (
    TRAINER_WITHOUT,
    FullOpt,
    LimitOpt,
    fail,
    job_flags,
)
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
    build_reward,
)
from cai_kit.cli.train import ReportTo, report_names

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


def reward_source(
    reward_model: Path | None,
    reward_judge: str | None,
    judge_api_base: str | None,
    constitution: str,
    options: dict | None = None,  # type: ignore[type-arg]
):  # type: ignore[no-untyped-def]
    """The one reward callable from --reward-model or --reward-judge (exactly one must be given).

    `options`: the command's locals(): the engine flags and --judge-reward/--max-judge-failures."""
    from cai_kit.cli.common import engine_config_from, fail
    from cai_kit.constitution import load_constitution
    from cai_kit.train.rewards import JudgeReward, RewardModelReward

    if (reward_model is None) == (reward_judge is None):
        fail("Give exactly one reward source: --reward-model DIR or --reward-judge MODEL.")
    if reward_model is not None:
        return RewardModelReward(reward_model)
    opts = {**(options or {}), "quiet": True}
    return JudgeReward(reward_judge, load_constitution(constitution), judge_api_base,  # type: ignore[arg-type]
                       engine_config=engine_config_from(opts), reward=opts.get("judge_reward", "p-yes"),
                       max_failed_share=opts.get("max_judge_failures", 0.1))  # fmt: skip


def _close(scorer) -> None:  # type: ignore[no-untyped-def]
    scorer.close()


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
    options = {k: v for k, v in locals().items() if k != "flags"}  # the flags, before any import
    from cai_kit.train.common import quiet_libraries

    names = report_names(report_to)
    with quiet_libraries():
        _ppo(options, names, flags)


def _ppo(o: dict[str, Any], names: list[str], flags: dict[str, Any]) -> None:
    import dataclasses
    import json

    from cai_kit.prompts import load_prompts
    from cai_kit.train.common import load_model, load_tokenizer, lora_config, resolve_model
    from cai_kit.train.ppo_trainer import PPOConfig, PPOTrainer
    from cai_kit.train.tracking import Tracker

    out, steps = o["out"], o["steps"]
    opts = {**o, **flags}
    reward_fn = build_reward(opts, lambda: reward_source(o["reward_model"], o["reward_judge"], o["judge_api_base"],
                                                         o["constitution"], opts))  # fmt: skip
    texts = [r.prompt_text for r in load_prompts(o["prompts"], limit=o["limit"]).records]
    base = resolve_model(o["model"])
    cfg = PPOConfig(learning_rate=o["lr"], batch_size=o["batch_size"], mini_batch_size=o["mini_batch_size"],
                    ppo_epochs=o["ppo_epochs"], max_new_tokens=o["max_new_tokens"], init_kl_coef=o["init_kl_coef"],
                    target_kl=o["target_kl"], seed=o["seed"], temperature=o["temperature"])  # fmt: skip
    trainer = PPOTrainer(
        cfg,
        load_model(base),
        load_tokenizer(base),
        peft_config=None if o["full"] else lora_config(),
    )
    out.mkdir(parents=True, exist_ok=True)
    try:
        settings = _resume(trainer, out, "ppo", base, o, cfg, texts)
    except Exception:
        _close(reward_fn)
        raise
    tracker = Tracker(
        names, out, "ppo", config=dataclasses.asdict(cfg), enabled=trainer.is_main_process
    )

    def log(step: int, s: dict[str, float]) -> None:  # rank 0 only
        tracker.log(s, step + 1)
        failed = f"  judge_failed {s['judge_failed']:.0f}" if "judge_failed" in s else ""
        typer.echo(f"step {step + 1}/{steps}: reward {s['reward']:.3f}  kl {s['kl']:.3f}  entropy {s['entropy']:.2f}  "
                   f"clipfrac {s['clipfrac']:.3f}  value_loss {s['value_loss']:.4f}{failed}")  # fmt: skip

    stopped = _train_own_loop(trainer, texts, reward_fn, steps, log, tracker, out, settings)
    history = trainer.history
    if history and trainer.is_main_process:
        (out / "ppo_history.json").write_text(json.dumps(history, indent=1))
    _finish_own_loop(out, "ppo", base, o, cfg, history, stopped, trainer,
                     keys=("reward", "kl", "policy_loss", "entropy", "clipfrac", "judge_failed"))  # fmt: skip


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
    options = {k: v for k, v in locals().items() if k != "flags"}  # the flags, before any import
    from cai_kit.train.common import quiet_libraries

    if temperature <= 0:
        fail("--temperature must be above 0: the two responses of a prompt are two samples.")
    if reward not in ("pairwise", "rubric"):
        fail(f"--reward must be pairwise or rubric, not {reward!r}.")
    if reward == "pairwise" and judge is None and python_reward is None:
        fail(
            "Give --judge MODEL (pairwise verdicts), --reward rubric, or --reward-fn module:function."
        )
    if reward == "pairwise" and judge is not None and python_reward is not None:
        fail(
            "--reward-fn scores each sample alone: use it with --reward rubric, or alone "
            "(without --judge), not with the pairwise judge."
        )
    names = report_names(report_to)
    with quiet_libraries():
        _online_dpo(options, names, flags)


def _pair_judge(o: dict[str, Any], flags: dict[str, Any]):  # type: ignore[no-untyped-def]
    """The pairwise judge of online DPO (train.online_dpo_trainer.PairJudge)."""
    from cai_kit.cli.common import engine_config_from
    from cai_kit.cli.judge import _judge_cfg
    from cai_kit.constitution import load_constitution
    from cai_kit.train.online_dpo_trainer import PairJudge

    cfg = _judge_cfg(o["mode"], o["samples"], o["principles"], o["tie_margin"], o["seed"])
    return PairJudge(o["judge"], load_constitution(o["constitution"]), cfg, o["judge_api_base"],
                     engine_config_from({**o, **flags, "quiet": True}))  # fmt: skip


def _pointwise(o: dict[str, Any], flags: dict[str, Any]):  # type: ignore[no-untyped-def]
    """--reward rubric and/or --reward-fn: each sample scored alone, the higher one chosen."""
    from cai_kit.train.online_dpo_trainer import PointwisePairs

    opts = {**o, **flags, "reward": "rubric" if o["reward"] == "rubric" else "auto",
            "reward_judge": o["judge"], "reward_model": None}  # fmt: skip
    return PointwisePairs(build_reward(opts, lambda: None), o["tie_margin"])


def _online_dpo(o: dict[str, Any], names: list[str], flags: dict[str, Any]) -> None:
    import dataclasses

    from cai_kit.errors import CaiKitError
    from cai_kit.prompts import load_prompts
    from cai_kit.train.common import load_model, load_tokenizer, lora_config, resolve_model
    from cai_kit.train.online_dpo_trainer import OnlineDPOConfig, OnlineDPOTrainer
    from cai_kit.train.tracking import Tracker

    out, steps = o["out"], o["steps"]
    texts = [r.prompt_text for r in load_prompts(o["prompts"], limit=o["limit"]).records]
    try:
        judge = (
            _pair_judge(o, flags)
            if o["judge"] and o["reward"] == "pairwise"
            else _pointwise(o, flags)
        )
    except CaiKitError as exc:
        fail(str(exc))
    base = resolve_model(o["model"])
    cfg = OnlineDPOConfig(learning_rate=o["lr"], batch_size=o["batch_size"], beta=o["beta"],
                          tie_margin=o["tie_margin"], max_judge_failures=o["max_judge_failures"],
                          max_new_tokens=o["max_new_tokens"], temperature=o["temperature"], seed=o["seed"])  # fmt: skip
    try:
        trainer = OnlineDPOTrainer(cfg, load_model(base), load_tokenizer(base),
                                   peft_config=None if o["full"] else lora_config())  # fmt: skip
    except CaiKitError:
        _close(judge)
        raise
    out.mkdir(parents=True, exist_ok=True)
    try:
        settings = _resume(trainer, out, "online-dpo", base, o, cfg, texts)
    except CaiKitError:
        _close(judge)
        raise
    tracker = Tracker(names, out, "online-dpo", config=dataclasses.asdict(cfg),
                      enabled=trainer.is_main_process)  # fmt: skip

    def log(step: int, s: dict[str, float]) -> None:  # rank 0 only
        tracker.log(s, step + 1)
        loss = f"loss {s['loss']:.4f}  " if "loss" in s else "no decisive pair  "
        typer.echo(f"step {step + 1}/{steps}: {loss}decisive {s['decisive']:.0f}  ties {s['ties']:.0f}  "
                   f"failed {s['failed']:.0f}")  # fmt: skip

    stopped = _train_own_loop(trainer, texts, judge, steps, log, tracker, out, settings)
    _finish_own_loop(out, "online-dpo", base, o, cfg, trainer.history, stopped, trainer,
                     keys=("loss", "reward_margin", "reward_accuracy", "decisive", "ties", "failed"))  # fmt: skip


def _resume(trainer: Any, out: Path, kind: str, base: str, o: dict[str, Any], cfg: Any,
            texts: list[str]) -> dict[str, Any]:  # fmt: skip
    """Continue a run that a stop left in OUT (cai_kit.train.resume); returns its settings."""
    from cai_kit.train import resume

    settings = resume.settings_of(
        kind, base, o["full"], cfg, texts, trainer.accelerator.num_processes
    )
    finished = resume.load(trainer, out, settings)
    if finished and trainer.is_main_process:
        left = f"training continues from step {finished + 1} of {o['steps']}" if finished < o["steps"] \
            else f"--steps {o['steps']}: no step is left"  # fmt: skip
        typer.echo(f"Resuming {out}: {finished} step(s) were finished before; {left}.")
    return settings


def _train_own_loop(trainer: Any, texts: list[str], source: Any, steps: int, log: Any, tracker: Any,
                    out: Path, settings: dict[str, Any]) -> Exception | None:  # fmt: skip
    """Train one of our own loops; a dead judge or --max-cost stops it and is returned, not
    raised, so the steps already made are kept: the model is saved when a step finished, with
    what the same command needs to continue from there (OUT/resume_state, removed once the run
    reaches its last step). The reward or judge and the tracker are closed either way."""
    from cai_kit.errors import CaiKitError
    from cai_kit.train import resume

    stopped: CaiKitError | None = None
    try:
        trainer.train(texts, source, steps, log)
    except CaiKitError as exc:
        stopped = exc
    finally:
        _close(source)
        tracker.close()
    if stopped is not None and trainer.history:
        resume.save(trainer, out, settings)
    elif stopped is None:
        resume.clear(trainer, out)
    if trainer.history:
        trainer.save(str(out))
    return stopped


def _finish_own_loop(out: Path, kind: str, base: str, o: dict[str, Any], cfg: Any, history: list[dict[str, float]],
                     stopped: Exception | None, trainer: Any, keys: tuple[str, ...]) -> None:  # fmt: skip
    """The end of one of our own training loops (the model is saved): on the main process
    log_history.json, train_config.yaml and training_curves.png; then the reason it stopped
    early with what was kept, or where it was saved. Every rank waits until rank 0 has written:
    a rank that ended first (a stop raises) would have torchrun stop rank 0 mid-write."""
    try:
        _write_own_loop(out, kind, base, o, cfg, history, stopped, trainer.is_main_process, keys)
    finally:
        trainer.accelerator.wait_for_everyone()


def _write_own_loop(out: Path, kind: str, base: str, o: dict[str, Any], cfg: Any, history: list[dict[str, float]],
                    stopped: Exception | None, main: bool, keys: tuple[str, ...]) -> None:  # fmt: skip
    import dataclasses
    import json

    import yaml

    from cai_kit.errors import CaiKitError
    from cai_kit.train.report import plot_curves

    if history and main:
        logged = [{**h, "step": i + 1} for i, h in enumerate(history)]
        (out / "log_history.json").write_text(json.dumps(logged, indent=1))
        resolved = {"kind": kind, "base_model": base, "options": {k: _plain(v) for k, v in o.items()},
                    f"{kind.replace('-', '_')}_config": dataclasses.asdict(cfg)}  # fmt: skip
        (out / "train_config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        plot_curves(logged, out / "training_curves.png", kind, keys=keys)
    if stopped is not None:
        from cai_kit.errors import BudgetExceeded
        from cai_kit.train.resume import continue_hint

        hint = continue_hint(len(history), o["steps"], isinstance(stopped, BudgetExceeded))
        kept = (f"The {len(history)} finished step(s) are saved in {out}. {hint}" if history
                else "No step was finished.")  # fmt: skip
        raise CaiKitError(f"{stopped} {kept}")
    if main:
        typer.echo(f"Saved to {out}")


def _plain(v: Any) -> Any:
    return v if isinstance(v, str | int | float | bool | type(None) | list | dict) else str(v)


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
    iterations: Annotated[int, typer.Option("--iterations", help="Self-play iterations.")] = 2,
    max_steps: Annotated[int, typer.Option("--max-steps", help="DPO steps per iteration.")] = 20,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Per-device batch size.")] = 4,
    lr: Annotated[float, typer.Option("--lr", help="DPO learning rate.")] = 5e-5,
    beta: Annotated[float, typer.Option("--beta", help="DPO beta.")] = 0.1,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="Length of the model's own answers.")
    ] = 128,
    report_to: ReportTo = None,
) -> None:
    """SPIN: the model's own answers are rejected, SFT targets chosen; DPO per iteration."""
    from cai_kit.train.common import quiet_libraries
    from cai_kit.train.spin import run_spin

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
    options = {k: _plain(v) for k, v in locals().items() if k != "flags"}  # before any import
    import os

    from cai_kit.prompts import load_prompts
    from cai_kit.train.common import quiet_libraries
    from cai_kit.train.online import check_group_size, train_grpo

    check_group_size(batch_size, num_generations, int(os.environ.get("WORLD_SIZE", "1")))
    names = report_names(report_to)
    with quiet_libraries():
        opts = {**locals(), **flags}
        scorer = build_reward(opts, lambda: reward_source(reward_model, reward_judge, judge_api_base, constitution, opts))  # fmt: skip
        texts = [r.prompt_text for r in load_prompts(prompts, limit=limit).records]
        try:
            path = train_grpo(texts, model, out, scorer, max_steps=max_steps, num_generations=num_generations,
                              batch_size=batch_size, max_completion_length=max_completion_length, lr=lr, full=full,
                              seed=seed, report_to=names, options=options)  # fmt: skip
        finally:
            _close(scorer)
    typer.echo(f"Saved to {path}")


def register(app: typer.Typer) -> None:
    from cai_kit.cli.train import train_app

    train_app.command("ppo")(ppo)
    train_app.command("online-dpo")(online_dpo)
    train_app.command("spin")(spin)
    train_app.command("grpo")(grpo)
