"""`cai-kit constitution infer | diff`: principles that explain preference labels, and what one
constitution adds to or lacks from another. Registered on the `constitution` group by
`cai_kit.cli.constitution`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cai_kit.cli.common import (
    ApiBaseOpt,
    MaxTokensOpt,
    ModelOpt,
    SeedOpt,
    TemperatureOpt,
    engine_config_from,
    fail,
    job_flags,
    replay_argv,
)


@job_flags()
def infer(
    data: Annotated[Path, typer.Argument(help="A prefs/judge run directory (prefs.jsonl), an `export dpo|prefs` directory (train.jsonl), or a pair file: prompt + chosen/rejected, response_a/response_b + label A|B, or a revisions.jsonl.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The constitution YAML to write.")],
    model: ModelOpt = "local",
    judge_model: Annotated[str | None, typer.Option("--judge-model", "-j", help="The model that tests each candidate as a judge (default: --model).")] = None,
    api_base: ApiBaseOpt = None,
    work: Annotated[Path | None, typer.Option("--work", help="Run directory for proposals, tests, report.json and manifest.json (default: OUT without .yaml, plus .infer).")] = None,
    holdout: Annotated[float, typer.Option("--holdout", min=0.05, max=0.95, help="Share of the pairs held out to test candidates (never used to propose).")] = 0.5,
    propose_pairs: Annotated[int, typer.Option("--propose-pairs", min=1, help="At most this many pairs propose principles.")] = 100,
    test_pairs: Annotated[int, typer.Option("--test-pairs", min=1, help="At most this many held-out pairs test each candidate.")] = 100,
    per_pair: Annotated[int, typer.Option("--per-pair", min=1, max=10, help="Principles asked for per pair.")] = 3,
    max_candidates: Annotated[int, typer.Option("--max-candidates", min=1, help="Candidates tested, most-proposed first (each costs 2 judge calls per held-out pair).")] = 20,
    similarity: Annotated[float, typer.Option("--similarity", min=0.05, max=1.0, help="Word-set Jaccard at which two proposals are merged as one candidate.")] = 0.6,
    min_agreement: Annotated[float, typer.Option("--min-agreement", min=0.0, max=1.0, help="Keep a principle whose verdicts agree with the labels on at least this share of the held-out pairs it decides.")] = 0.6,
    redundant: Annotated[float, typer.Option("--redundant", min=0.5, max=1.0, help="Of two passing principles whose verdicts on the held-out pairs are the same this often (paraphrases), keep only the better.")] = 0.95,
    min_decided: Annotated[float, typer.Option("--min-decided", min=0.0, max=1.0, help="... and that decides (no tie) at least this share of the held-out pairs.")] = 0.2,
    mode: Annotated[str, typer.Option("--mode", help="Judge mode: logprobs | letter | cot | votes.")] = "logprobs",
    temperature: TemperatureOpt = 0.7,
    max_tokens: MaxTokensOpt = 256,
    seed: SeedOpt = 0,
    **flags: Any,
) -> None:  # fmt: skip
    """Infer a constitution from preference labels (Inverse Constitutional AI): propose
    principles per pair, merge near-duplicates, keep those that predict held-out labels."""
    from cai_kit.cli.common import (
        check_judge_mode,
        check_reasoning,
        exit_for,
        job_backend,
        keys_needed,
    )
    from cai_kit.cli.judge import _judge_cfg
    from cai_kit.llm.base import GenParams
    from cai_kit.stages.infer import (
        InferConfig,
        build_constitution,
        constitution_yaml,
        load_labelled_pairs,
        run_infer,
        write_report,
    )

    if out.suffix not in (".yaml", ".yml"):
        fail(f"--out {out}: give a .yaml file for the constitution.")
    work = work or out.with_name(out.stem + ".infer")
    jcfg = _judge_cfg(mode, 5, "one", 0.05, seed)
    cfg = InferConfig(
        holdout=holdout, propose_pairs=propose_pairs, test_pairs=test_pairs, per_pair=per_pair,
        max_candidates=max_candidates, similarity=similarity, min_agreement=min_agreement,
        min_decided=min_decided, redundant=redundant, seed=seed, judge=jcfg,
        propose_params=GenParams(temperature=temperature, max_tokens=max_tokens, seed=seed,
                                 reasoning_effort=flags["reasoning_effort"]),
    )  # fmt: skip
    pairs = load_labelled_pairs(data)
    judge_model = judge_model or model
    backend = job_backend(model, api_base, flags)
    judge = backend if judge_model == model else job_backend(judge_model, api_base, flags)
    check_reasoning(backend, flags, temperature=temperature)
    check_reasoning(judge, flags, judge=True)
    check_judge_mode(judge, mode, flags)
    models = {"proposer": model, "judge": judge_model}
    result = run_infer(
        pairs, backend=backend, judge=judge, models=models, cfg=cfg, work=work,
        engine_config=engine_config_from(flags), source=str(data), argv=replay_argv("constitution"),
    )  # fmt: skip
    typer.echo(f"{data}: {len(pairs)} labelled pairs: {result.proposal_pairs} propose, "
               f"{result.test_pair_count} held out")  # fmt: skip
    typer.echo(f"propose: {result.propose.line()}")
    if result.test is not None:
        typer.echo(f"test:    {result.test.line()}")
    summaries = [x for x in (result.propose, result.test) if x is not None]
    if flags["dry_run"]:
        typer.echo(keys_needed((model, api_base), (judge_model, api_base)))
        return
    if result.waiting:
        typer.echo(f"No constitution yet: {result.waiting.rstrip('.')}.")
        exit_for(*summaries)  # 4 when --max-cost stopped it, 1 when no row was done, ...
        raise typer.Exit(1)
    write_report(work / "report.json", result, cfg, str(data))
    typer.echo(f"{result.proposals} principles proposed, {result.merged} merged as near-duplicates; "
               f"{len(result.scores)} candidates tested on {result.test_pair_count} held-out pairs:")  # fmt: skip
    for s in result.scores:
        agr = " n/a" if s.agreement is None else f"{s.agreement:.2f}"
        mark = "kept   " if s.kept else "dropped"
        same = f" (judges as {s.redundant_with} does)" if s.redundant_with else ""
        typer.echo(
            f"  {mark} agreement {agr}  decided {s.decided}/{s.tested}  {s.id}: {s.text}{same}"
        )
        if s.kept and s.example:
            typer.echo(f"          e.g. {s.example['prompt']!r}: chose {s.example['chosen']!r} over {s.example['rejected']!r}")  # fmt: skip
    const = build_constitution(result, out.stem, str(data), models)
    if const is None:
        best = max(result.scores, key=lambda s: s.agreement or 0.0, default=None)
        note = f" (best: {best.id}, {best.agreement or 0:.2f})" if best else ""
        fail(f"No candidate reached --min-agreement {min_agreement} while deciding at least "
             f"{min_decided:.0%} of the held-out pairs{note}; see {work / 'report.json'}.")  # fmt: skip
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(constitution_yaml(const, result.scores), encoding="utf-8")
    typer.echo(f"Wrote {out} ({len(const.principles)} principles) and {work / 'report.json'}. "
               f"Use it anywhere: cai-kit judge PAIRS -c {out}")  # fmt: skip
    exit_for(*summaries)  # 3 when some proposals or tests failed (a re-run redoes them)


def diff(
    a: Annotated[str, typer.Argument(help="The constitution to compare against (name or YAML).")],
    b: Annotated[str, typer.Argument(help="The other constitution (name or YAML).")],
    threshold: Annotated[float, typer.Option("--threshold", min=0.05, max=1.0, help="Text similarity (Jaccard of words) at which principles with different ids count as the same.")] = 0.5,
) -> None:  # fmt: skip
    """What B adds to and lacks from A: principles matched by id, then by text similarity."""
    from cai_kit.constitution import load_constitution
    from cai_kit.stages.infer import diff_constitutions

    ca, cb = load_constitution(a), load_constitution(b)
    d = diff_constitutions(ca, cb, threshold)
    typer.echo(f"A: {ca.name} ({len(ca.principles)} principles)   B: {cb.name} ({len(cb.principles)} principles)")  # fmt: skip
    typer.echo(f"B adds {len(d.added)}:")
    for p in d.added:
        typer.echo(f"  + {p.id}: {p.judge_question}")
    typer.echo(f"B lacks {len(d.lacking)}:")
    for p in d.lacking:
        typer.echo(f"  - {p.id}: {p.judge_question}")
    typer.echo(f"In both {len(d.matched)}:")
    for p, q, sim in d.matched:
        same = "same text" if p == q else f"text similarity {sim:.2f}"
        name = p.id if p.id == q.id else f"{p.id} ~ {q.id}"
        typer.echo(f"  = {name} ({same})")
