"""`cai-kit eval rubric`: each principle's pass rate, before vs after, with bootstrap 95% CIs.

For every prompt the model (and optionally a baseline) answers; the answer is scored by the
constitution's rubric (`cai_kit.judges.rubric`: checks by their program, the other principles
by a judge's P(Yes)). A principle passes when its score is at least the rubric's threshold.
The report gives each principle's pass rate per model with a percentile-bootstrap 95% CI, and
with a baseline the paired difference (model minus baseline over the prompts both answered)
with its own CI; the combined score's pass rate is the last row. With a baseline it also gives
the model's **win rate** against it: per prompt both answered, the combined scores compared
(higher: a win, 1; equal: a tie, 0.5; lower: a loss, 0), averaged, with a bootstrap 95% CI.

A record (one role, one prompt) is a GenerationRecord whose `metadata.rubric` keeps the vector
of per-principle scores, their sources, and how they were combined. A failed call, an
unparseable answer or a check that raised makes it `failed` (retried by a re-run); its other
principles still count, the failed one is counted apart. Record ids hash both models'
identities, the judge's, the constitution and the combination rule; a Python check's code is
not in the id, so after changing a check write to a new --out.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai_kit.constitution import Constitution
from cai_kit.engine import CallFailed, Engine, EngineConfig, JobSpec, JobSummary, run_job
from cai_kit.engine.cost_preview import prompt_tokens, stand_in
from cai_kit.errors import ConfigError
from cai_kit.eval.winrate import bootstrap_ci
from cai_kit.io import latest_by_id
from cai_kit.judges.rubric import Rubric
from cai_kit.llm.base import Backend, GenParams
from cai_kit.records import GenerationRecord, Message, PromptRecord, Provenance, stable_hash

COMBINED = "(combined)"


@dataclass
class PassRate:
    passed: int = 0
    n: int = 0
    failed: int = 0
    ci: tuple[float, float] = (float("nan"), float("nan"))

    @property
    def rate(self) -> float | None:
        return self.passed / self.n if self.n else None


@dataclass
class RubricReport:
    roles: list[str]
    rates: dict[str, dict[str, PassRate]] = field(default_factory=dict)  # principle -> role ->
    diff: dict[str, tuple[float, float, float, int]] = field(default_factory=dict)  # d, lo, hi, n
    # model vs baseline on the combined score: wins, ties, losses, rate, (lo, hi); None: no baseline
    win_rate: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "win_rate": self.win_rate,
            "rates": {
                pid: {
                    role: {"pass_rate": r.rate, "n": r.n, "failed": r.failed, "ci": list(r.ci)}
                    for role, r in row.items()
                }
                for pid, row in self.rates.items()
            },
            "diff": {
                pid: {"diff": d, "ci": [lo, hi], "n": n}
                for pid, (d, lo, hi, n) in self.diff.items()
            },
        }


def run_rubric_eval(
    prompts: list[PromptRecord], *, models: dict[str, Backend], judge: Backend | None, judge_name: str | None,
    rubric: Rubric, params: GenParams, out_dir: Path, engine_config: EngineConfig, argv: list[str] | None = None,
    seed: int = 0,
) -> tuple[JobSummary, RubricReport | None]:  # fmt: skip
    """models: role ('model', 'baseline') -> backend. One GenerationRecord per (role, prompt)."""
    if "baseline" in models and models["model"].identity() == models["baseline"].identity():
        raise ConfigError(
            f"--model {models['model'].model!r} and --baseline {models['baseline'].model!r} are "
            "the same model (same backend and weights): pass a different --baseline or none."
        )
    if rubric.needs_judge and judge is None:
        raise ConfigError(
            f"Principles {', '.join(p.id for p in rubric.judged)} have no check: pass --judge "
            "MODEL to score them (or give every principle a check:)."
        )
    constitution: Constitution = rubric.constitution
    if not rubric.needs_judge:  # a judge that is never asked is no part of the result
        judge, judge_name = None, None
    items = [(role, p) for role in models for p in prompts]
    judge_identity = judge.identity() if judge is not None and rubric.needs_judge else None

    def item_id(item: tuple[str, PromptRecord]) -> str:
        role, p = item
        return stable_hash("rubric", role, p.id, models[role].identity(), judge_name, judge_identity,
                           constitution.content_hash, rubric.combine, rubric.threshold, params.to_dict())  # fmt: skip

    async def process(item: tuple[str, PromptRecord], engine: Engine) -> GenerationRecord:
        role, p = item
        msgs = [m.model_dump() for m in p.messages]
        names = {role: models[role].model, **({"judge": judge_name} if judge_identity else {})}
        rec = GenerationRecord(id=item_id(item), prompt_id=p.id, messages=[Message(**m) for m in msgs],  # type: ignore[arg-type]
                               provenance=Provenance(constitution=constitution.name, constitution_hash=constitution.content_hash,
                                                     models=names), metadata={"role": role, **p.metadata})  # fmt: skip
        try:
            rec.response = (await engine.call(models[role], msgs, params)).text
        except CallFailed as exc:
            rec.status, rec.error = "failed", str(exc)
            return rec
        scored = await rubric.score(p.prompt_text, rec.response, engine, judge)
        rec.metadata["rubric"] = scored.to_dict()
        if scored.errors:
            pid, why = next(iter(scored.errors.items()))
            rec.status, rec.error = "failed", f"{pid}: {why}"
        return rec

    def calls(item: tuple[str, PromptRecord]) -> list[tuple[Backend, int, int]]:
        """The answer, then one judge question per judged principle (checks cost nothing)."""
        role, p = item
        asked = prompt_tokens([m.model_dump() for m in p.messages])
        answer = stand_in(params.max_tokens)
        judged = rubric.calls(p.prompt_text, answer, judge) if judge is not None else []
        return [(models[role], asked, params.max_tokens), *judged]

    backends = [*models.values(), *([judge] if judge is not None and rubric.needs_judge else [])]
    spec = JobSpec(name="eval rubric", items=items, item_id=item_id, process=process, output=out_dir / "rubric.jsonl",
                   record_type=GenerationRecord, run_dir=out_dir, manifest={"command": "eval rubric", "argv": argv or []},
                   estimate_tokens=calls, backends=list({id(b): b for b in backends}.values()))  # fmt: skip
    summary = run_job(spec, engine_config)
    if engine_config.dry_run:
        return summary, None
    ids = {item_id(it) for it in items}
    records = [
        r
        for rid, r in latest_by_id(out_dir / "rubric.jsonl", GenerationRecord).items()
        if rid in ids
    ]
    report = summarise(records, rubric, list(models), seed)
    _write_report(out_dir, report, rubric)
    return summary, report


def summarise(
    records: list[GenerationRecord], rubric: Rubric, roles: list[str], seed: int = 0
) -> RubricReport:
    """Pass rates per principle and role (and combined), with bootstrap CIs and paired diffs."""
    passes: dict[tuple[str, str], dict[str, float]] = defaultdict(
        dict
    )  # (pid, role) -> prompt -> 0/1
    failed: dict[tuple[str, str], int] = defaultdict(int)
    combined: dict[str, dict[str, float]] = defaultdict(dict)  # role -> prompt -> score
    for rec in records:
        role, scored = rec.metadata.get("role"), rec.metadata.get("rubric")
        if not isinstance(scored, dict):
            continue
        for pid, score in scored["scores"].items():
            if score is None:
                failed[(pid, role)] += 1  # type: ignore[index]
            else:
                passes[(pid, role)][rec.prompt_id] = float(score >= rubric.threshold)  # type: ignore[index]
        if scored.get("score") is not None:
            passes[(COMBINED, role)][rec.prompt_id] = float(scored["score"] >= rubric.threshold)  # type: ignore[index]
            combined[role][rec.prompt_id] = float(scored["score"])  # type: ignore[index]
        else:
            failed[(COMBINED, role)] += 1  # type: ignore[index]
    report = RubricReport(roles=roles)
    for pid in [*(p.id for p in rubric.principles), COMBINED]:
        row: dict[str, PassRate] = {}
        for role in roles:
            got = list(passes[(pid, role)].values())
            row[role] = PassRate(
                int(sum(got)), len(got), failed[(pid, role)], bootstrap_ci(got, seed=seed)
            )
        report.rates[pid] = row
        if "baseline" in roles:
            after, before = passes[(pid, "model")], passes[(pid, "baseline")]
            both = sorted(set(after) & set(before))
            diffs = [after[k] - before[k] for k in both]
            if diffs:
                lo, hi = bootstrap_ci(diffs, seed=seed)
                report.diff[pid] = (sum(diffs) / len(diffs), lo, hi, len(diffs))
    if "baseline" in roles:
        report.win_rate = win_rate(combined["model"], combined["baseline"], seed)
    return report


def win_rate(after: dict[str, float], before: dict[str, float], seed: int = 0) -> dict[str, Any]:
    """The model's win rate over the baseline on the prompts both have a combined score for:
    a higher score is a win (1), an equal one a tie (0.5), a lower one a loss (0)."""
    both = sorted(set(after) & set(before))
    outcomes = [
        1.0 if after[k] > before[k] else 0.5 if after[k] == before[k] else 0.0 for k in both
    ]
    lo, hi = bootstrap_ci(outcomes, seed=seed)
    return {"wins": outcomes.count(1.0), "ties": outcomes.count(0.5), "losses": outcomes.count(0.0),
            "n": len(outcomes), "rate": sum(outcomes) / len(outcomes) if outcomes else None,
            "ci": [lo, hi]}  # fmt: skip


def _write_report(out_dir: Path, report: RubricReport, rubric: Rubric) -> None:
    import json

    def fmt(r: PassRate) -> str:
        if r.rate is None:
            return "n/a" + (f" ({r.failed} failed)" if r.failed else "")
        cell = f"{100 * r.rate:.0f}% of {r.n} [{100 * r.ci[0]:.0f}-{100 * r.ci[1]:.0f}]"
        return cell + (f" ({r.failed} failed)" if r.failed else "")

    roles = report.roles
    diff = "baseline" in roles
    head = "| principle | " + " | ".join(roles) + (" | model - baseline |" if diff else " |")
    lines = [f"# Rubric: pass rate per principle (score >= {rubric.threshold:g}; higher is better)", "",
             f"Combined by `{rubric.combine}`. Cells: pass rate of n scored responses [bootstrap 95% CI].", "",
             head, "|---|" + "---|" * (len(roles) + diff)]  # fmt: skip
    for pid, row in report.rates.items():
        cells = [fmt(row[r]) for r in roles]
        if diff:
            d = report.diff.get(pid)
            cells.append(
                "n/a"
                if d is None
                else f"{100 * d[0]:+.0f} pts [{100 * d[1]:+.0f}, {100 * d[2]:+.0f}] over {d[3]}"
            )
        lines.append(f"| {pid} | " + " | ".join(cells) + " |")
    w = report.win_rate
    if w is not None and w["rate"] is not None:
        lines += ["", f"Win rate of the model against the baseline on the combined score: "
                  f"**{w['rate']:.2f}** [{w['ci'][0]:.2f}-{w['ci'][1]:.2f}] over {w['n']} prompts "
                  f"({w['wins']} wins, {w['ties']} ties, {w['losses']} losses; a tie counts 0.5)."]  # fmt: skip
    lines += ["", "A principle that could not be scored (failed call, unparseable answer, a check that "
              "raised) is left out of its rate and counted as failed, never as a fail or a pass.", ""]  # fmt: skip
    (out_dir / "report.md").write_text("\n".join(lines), encoding="utf-8")
    (out_dir / "report.json").write_text(json.dumps(report.as_dict(), indent=1), encoding="utf-8")
