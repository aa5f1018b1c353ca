"""The pipeline's data stages as library calls, run in the pipeline's own process.

    call = revise_call(recipe, run / "prompts" / "train.jsonl", run / "revise")
    code = call(StageContext(budget=ledger, argv=["cai-kit", "revise", ...], say=log.write))

Each call does what the stage's CLI command does with the recipe's values (`cai_kit.pipeline.run`
builds that command too, for the log, the dry run and a user to copy): it calls the stage's
library function (`stages.expand`, `stages.revise`, `stages.export`, `stages.prefs`,
`stages.infer`, `eval.winrate`), writes the command's own lines (the job summaries, the win rate)
through `say`, and returns the exit code the command would have (`engine.jobs.worst_exit`; 1 for
an infer that kept no principle). Errors are raised: `run.run_stage` turns them into the
command's `Error: ...` line and exit code. Training stays a subprocess (it must free memory).

Every call spends through `ctx.budget`, the pipeline's one ledger (`RUN/budget.json`, with the
stage's own `stage_max_cost:` as a child ledger inside it), so `--max-cost` holds across the
in-process stages and the subprocess ones alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai_kit.engine import EngineConfig
from cai_kit.engine.budget import Budget
from cai_kit.engine.jobs import EXIT_FAILED, worst_exit
from cai_kit.errors import ConfigError
from cai_kit.llm.base import Backend, GenParams
from cai_kit.pipeline.recipe import Recipe


@dataclass
class StageContext:
    """What the pipeline gives a stage's call: its ledger, its command line (for the manifest,
    so `cai-kit retry-failed` can replay it) and where its lines go (the stage's log)."""

    budget: Budget | None
    argv: list[str]
    say: Callable[[str], None]
    max_cost: float | None = None  # the stage's own cap (already the budget's), for the manifest


Call = Callable[[StageContext], int]


def _efforts(r: Recipe, model: str) -> tuple[str | None, str | None]:
    """The teacher's (reasoning effort, judge effort) for calls its model makes."""
    t = r.teacher
    return (
        (t.reasoning_effort, t.judge_reasoning_effort) if t and model == t.model else (None, None)
    )


def _engine(
    ctx: StageContext, *, batch: bool, effort: str | None, judge_effort: str | None
) -> EngineConfig:
    """The stage's engine: the pipeline's ledger, quiet, and the --batch-api, --reasoning-effort
    and --judge-reasoning-effort that its command gets (`cli.common.engine_config_from`)."""
    return EngineConfig(budget=ctx.budget, max_cost=ctx.max_cost, quiet=True, batch_api=batch,
                        reasoning_effort=effort, judge_reasoning_effort=judge_effort)  # fmt: skip


def _teacher_batch(r: Recipe, model: str | None = None) -> bool:
    """The recipe's `batch_api` (for `model`'s calls only, when given: expand, infer)."""
    t = r.teacher
    return t is not None and t.batch_api and (model is None or model == t.model)


def _backend(
    model: str, api_base: str | None, *, effort: str | None = None, judge_effort: str | None = None
) -> Backend:
    """The model's backend (as `cai-kit`'s job commands build it); an effort the model does not
    take is refused here, in one sentence, before any call."""
    from cai_kit.llm.registry import get_backend

    backend = get_backend(model, api_base=api_base, timeout_s=120.0)
    rules = getattr(backend, "reasoning", None)
    for flag, value in (("--reasoning-effort", effort), ("--judge-reasoning-effort", judge_effort)):
        if value is not None and rules is not None and (why := rules.effort_error(value, flag)):
            raise ConfigError(why)
    return backend


def _prompts(path: Path, ctx: StageContext) -> list[Any]:
    from cai_kit.prompts import load_prompts

    pset = load_prompts(str(path))
    ctx.say(f"{path}: {pset.summary()}")
    return pset.records


def expand_call(r: Recipe, out: Path) -> Call:
    """`cai-kit prompts expand` on the recipe's prompts into `out`."""
    from cai_kit.stages.expand import ExpandConfig, run_expand

    e = r.expand
    assert e is not None

    def call(ctx: StageContext) -> int:
        model, base = r.step_model(e)
        effort, judge_effort = _efforts(r, model)
        cfg = ExpandConfig(
            n=e.n, per_call=e.per_call, shots=e.shots, oversample=e.oversample, max_rounds=e.max_rounds,
            similarity=e.similarity, keep_if=e.keep_if, topic_column=e.topic_column, seed=r.seed,
            params=GenParams(temperature=e.temperature, max_tokens=e.max_tokens, seed=r.seed, reasoning_effort=effort),
        )  # fmt: skip
        backend = _backend(
            model, base, effort=effort, judge_effort=judge_effort if e.keep_if else None
        )
        models = {"generator": model} | ({"judge": model} if e.keep_if else {})
        engine = _engine(ctx, batch=_teacher_batch(r, model), effort=effort,
                         judge_effort=judge_effort if e.keep_if else None)  # fmt: skip
        result = run_expand(_prompts(Path(r.prompts), ctx), backend=backend, judge=backend, models=models,
                            cfg=cfg, out_dir=out, engine_config=engine, source=r.prompts, argv=ctx.argv)  # fmt: skip
        for i, (gen, keep) in enumerate(result.rounds, 1):
            ctx.say(f"round {i} generate: {gen.line()}")
            if keep is not None:
                ctx.say(f"round {i} keep-if:  {keep.line()}")
        summaries = [x for pair in result.rounds for x in pair if x is not None]
        if result.waiting:
            ctx.say(f"Not written yet: {result.waiting.rstrip('.')}. Re-run the same command to finish.")  # fmt: skip
            return worst_exit(*summaries) or EXIT_FAILED
        ctx.say(f"expand: {result.line()}")
        if result.written < e.n:
            ctx.say(f"Only {result.written} of {e.n} prompts survived {e.max_rounds} round(s); "
                    "raise --max-rounds or --oversample, or loosen --keep-if.")  # fmt: skip
        return worst_exit(*summaries)

    return call


def revise_call(r: Recipe, prompts: Path, out: Path) -> Call:
    """`cai-kit revise` of `prompts` into `out`, with the models the recipe serves it by."""
    from cai_kit.constitution import load_constitution
    from cai_kit.stages.revise import ReviseConfig, run_revise

    def call(ctx: StageContext) -> int:
        (resp, resp_base), (critic, critic_base) = r.served_by("responses"), r.served_by("critiques")  # fmt: skip
        effort = _efforts(r, resp)[0]
        responder = _backend(resp, resp_base, effort=effort)
        critic_backend = (
            responder
            if (critic, critic_base) == (resp, resp_base)
            else _backend(critic, critic_base, effort=effort)
        )
        t, tokens = r.revise.temperature, r.revise.max_tokens
        cfg = ReviseConfig(
            constitution=load_constitution(r.constitution), rounds=r.revise.rounds,
            mode=r.revise.principles, seed=r.seed,  # type: ignore[arg-type]
            # critique and revision: min(t, 0.3), as `cai-kit revise` does
            response_params=GenParams(temperature=t, max_tokens=tokens, reasoning_effort=effort),
            critique_params=GenParams(temperature=min(t, 0.3), max_tokens=tokens, reasoning_effort=effort),
            revision_params=GenParams(temperature=min(t, 0.3), max_tokens=tokens, reasoning_effort=effort),
        )  # fmt: skip
        summary = run_revise(
            _prompts(prompts, ctx), cfg, responder=responder, critic=critic_backend,
            models={"responder": resp, "critic": critic}, out_dir=out,
            engine_config=_engine(ctx, batch=_teacher_batch(r), effort=effort, judge_effort=effort), argv=ctx.argv,
            inputs={"prompts": str(prompts)},
        )  # fmt: skip
        ctx.say(summary.line())
        ctx.say(f"Wrote {out / 'revisions.jsonl'}")
        return worst_exit(summary)

    return call


def export_call(kind: str, run_dir: Path, out: Path, min_margin: float = 0.0,
                include_ties: bool = False) -> Call:  # fmt: skip
    """`cai-kit export KIND RUN_DIR --out OUT` (conversational, no eval split)."""
    from cai_kit.stages.export import export, left_out

    def call(ctx: StageContext) -> int:
        counts = export(run_dir, out, kind, "conversational", min_margin, include_ties)  # type: ignore[arg-type]
        skipped = counts["skipped"]
        ctx.say(f"Wrote {counts['train']} train / {counts['test']} test rows to {out}"
                + (f"; left out {sum(skipped.values())} records: {left_out(skipped)}" if skipped else ""))  # fmt: skip
        return 0

    return call


def prefs_call(r: Recipe, prompts: Path, policy: str, out: Path) -> Call:
    """`cai-kit prefs`: k samples of `policy` per prompt, pairs labelled by the recipe's judge."""
    from cai_kit.constitution import load_constitution
    from cai_kit.judges.pairwise import JudgeConfig
    from cai_kit.stages.prefs import run_prefs

    def call(ctx: StageContext) -> int:
        judge, judge_base = r.served_by("judging")
        judge_effort = _efforts(r, judge)[1]
        policy_backend = _backend(policy, None)
        judge_backend = _backend(judge, judge_base, judge_effort=judge_effort)
        sampled, judged = run_prefs(
            _prompts(prompts, ctx), policy=policy_backend, judge=judge_backend,
            models={"policy": policy, "judge": judge}, constitution=load_constitution(r.constitution),
            cfg=JudgeConfig(mode=r.prefs.mode, seed=r.seed), k=r.prefs.k, pairs=r.prefs.pairs,
            policy_params=GenParams(temperature=0.9, max_tokens=r.prefs.max_tokens, seed=r.seed),
            out_dir=out, engine_config=_engine(ctx, batch=_teacher_batch(r), effort=None, judge_effort=judge_effort), argv=ctx.argv,
        )  # fmt: skip
        ctx.say(f"sampling: {sampled.line()}")
        ctx.say(f"judging:  {judged.line()}")
        ctx.say(f"Wrote {out / 'prefs.jsonl'}; see `cai-kit judge-report {out.resolve()}`")
        return worst_exit(sampled, judged)

    return call


NO_PRINCIPLE = "No candidate reached"  # infer ran to its end and no principle passed


def infer_call(r: Recipe, data: Path, out: Path, work: Path) -> Call:
    """`cai-kit constitution infer DATA --out OUT --work WORK`: the constitution that explains
    the pairs, or (exit 1) the sentence that no candidate passed."""
    from cai_kit.judges.pairwise import JudgeConfig
    from cai_kit.stages.infer import (
        InferConfig,
        build_constitution,
        constitution_yaml,
        load_labelled_pairs,
        run_infer,
        write_report,
    )

    i = r.infer
    assert i is not None

    def call(ctx: StageContext) -> int:
        model, base = r.step_model(i)
        effort, judge_effort = _efforts(r, model)
        cfg = InferConfig(
            holdout=i.holdout, propose_pairs=i.propose_pairs, test_pairs=i.test_pairs, per_pair=i.per_pair,
            max_candidates=i.max_candidates, min_agreement=i.min_agreement, min_decided=i.min_decided,
            seed=r.seed, judge=JudgeConfig(mode=i.mode, seed=r.seed),
            propose_params=GenParams(temperature=i.temperature, max_tokens=i.max_tokens, seed=r.seed,
                                     reasoning_effort=effort),
        )  # fmt: skip
        pairs = load_labelled_pairs(data)
        backend = _backend(model, base, effort=effort, judge_effort=judge_effort)
        models = {"proposer": model, "judge": model}
        result = run_infer(pairs, backend=backend, judge=backend, models=models, cfg=cfg, work=work,
                           engine_config=_engine(ctx, batch=_teacher_batch(r, model), effort=effort, judge_effort=judge_effort), source=str(data), argv=ctx.argv)  # fmt: skip
        ctx.say(f"{data}: {len(pairs)} labelled pairs: {result.proposal_pairs} propose, "
                f"{result.test_pair_count} held out")  # fmt: skip
        ctx.say(f"propose: {result.propose.line()}")
        if result.test is not None:
            ctx.say(f"test:    {result.test.line()}")
        summaries = [x for x in (result.propose, result.test) if x is not None]
        if result.waiting:
            ctx.say(f"No constitution yet: {result.waiting.rstrip('.')}.")
            return worst_exit(*summaries) or EXIT_FAILED
        write_report(work / "report.json", result, cfg, str(data))
        for s in result.scores:
            agr = " n/a" if s.agreement is None else f"{s.agreement:.2f}"
            ctx.say(f"  {'kept   ' if s.kept else 'dropped'} agreement {agr}  decided {s.decided}/{s.tested}  {s.id}: {s.text}")  # fmt: skip
        const = build_constitution(result, out.stem, str(data), models)
        if const is None:
            best = max(result.scores, key=lambda s: s.agreement or 0.0, default=None)
            note = f" (best: {best.id}, {best.agreement or 0:.2f})" if best else ""
            ctx.say(f"Error: {NO_PRINCIPLE} --min-agreement {i.min_agreement} while deciding at least "
                    f"{i.min_decided:.0%} of the held-out pairs{note}; see {work / 'report.json'}.")  # fmt: skip
            return EXIT_FAILED
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(constitution_yaml(const, result.scores), encoding="utf-8")
        ctx.say(f"Wrote {out} ({len(const.principles)} principles) and {work / 'report.json'}.")
        return worst_exit(*summaries)

    return call


def winrate_call(r: Recipe, prompts: Path, model: str, out: Path) -> Call:
    """`cai-kit eval winrate`: `model` against the student, by the recipe's eval judge."""
    from cai_kit.constitution import load_constitution
    from cai_kit.eval.winrate import run_winrate
    from cai_kit.judges.pairwise import JudgeConfig
    from cai_kit.stages.ties import tie_warning

    def call(ctx: StageContext) -> int:
        judge, base = r.served_by("eval_judging")
        judge_effort = _efforts(r, judge)[1]
        made: dict[str, Backend] = {}  # one backend per model string, as `cai-kit eval` does
        for name in (judge, model, r.student.model):
            if name not in made:
                made[name] = _backend(
                    name, base, judge_effort=judge_effort if name == judge else None
                )
        summary, rep = run_winrate(
            _prompts(prompts, ctx), model=made[model], baseline=made[r.student.model], judge=made[judge],
            models={"model": model, "baseline": r.student.model, "judge": judge},
            constitution=load_constitution(r.constitution), cfg=JudgeConfig(mode=r.eval.mode, seed=r.seed),
            params=GenParams(temperature=0.7, max_tokens=r.eval.max_tokens, seed=r.seed), out_dir=out,
            engine_config=_engine(ctx, batch=False, effort=None, judge_effort=judge_effort), argv=ctx.argv,
        )  # fmt: skip
        ctx.say(summary.line())
        rate = "n/a (no pair was judged)" if rep.n == rep.failed else f"{rep.win_rate:.3f} (95% CI {rep.ci[0]:.3f}-{rep.ci[1]:.3f})"  # fmt: skip
        ctx.say(f"win rate {rate}; {rep.wins} wins, {rep.ties} ties, {rep.losses} losses, "
                f"{rep.failed} failed. Report: {out / 'report.md'}")  # fmt: skip
        if warning := tie_warning(rep.outcomes()):
            ctx.say(f"Warning: {warning}")
        return worst_exit(summary)

    return call


def export_gold_call(prefs: Path, gold: Path) -> Call:
    """`cai-kit review export-gold PREFS --out GOLD`: people's pair labels as a gold file."""

    def call(ctx: StageContext) -> int:
        from cai_kit.review.labels import export_gold

        counts = export_gold(prefs, gold)
        left = ", ".join(f"{n} {why}" for why, n in counts.items() if why != "written" and n)
        ctx.say(f"Wrote {counts['written']} gold pairs to {gold}" + (f"; left out {left}" if left else ""))  # fmt: skip
        return 0

    return call


def judge_report_call(prefs: Path, gold: Path) -> Call:
    """`cai-kit judge-report PREFS --gold GOLD`: the judge against people (judge_report.json)."""

    def call(ctx: StageContext) -> int:
        import json

        from cai_kit.eval.judge_report import build_report, plot, plot_gold, render

        rep = build_report(prefs, gold)
        ctx.say(render(rep))
        (prefs / "judge_report.json").write_text(json.dumps(rep.to_dict(), indent=2))
        plot(rep, prefs / "judge_report.png")
        plot_gold(rep, prefs / "judge_report_gold.png")
        ctx.say(f"Wrote {prefs / 'judge_report.json'} and the plots next to it")
        return 0

    return call
