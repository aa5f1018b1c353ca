"""Evaluation: win rate against a baseline, judged pairwise in both orders, with a bootstrap CI.

`run_winrate` generates from the model and the baseline (through the engine: cached,
resumable), judges each pair with `cai_kit.judges.pairwise.judge_pair` (the model's answer is A; both orders
are always asked), and reports win/tie/loss with a 95% bootstrap confidence interval, per
principle and per prompt category, as report.md + winrate.png + comparisons in prefs.jsonl.

A record's id hashes the backends' identities (for `hf:` the weights' fingerprint), so new
weights in the same directory are evaluated anew. A failed generation or judgement is a
`failed` record: counted as failed (never as a tie), left out of the win rate, and retried
by a re-run or `cai-kit retry-failed`. A model and baseline with the same identity are refused.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai_kit.constitution import Constitution
from cai_kit.engine import CallFailed, Engine, EngineConfig, JobSpec, JobSummary, run_job
from cai_kit.engine.cost_preview import prompt_tokens, stand_in
from cai_kit.engine.gather import in_order
from cai_kit.errors import ConfigError
from cai_kit.io import latest_by_id
from cai_kit.judges.pairwise import JudgeConfig, PairInput, judge_calls, judge_pair
from cai_kit.llm.base import Backend, GenParams
from cai_kit.records import JudgeVerdict, PreferenceRecord, PromptRecord, stable_hash
from cai_kit.stages.prefs import preference_record
from cai_kit.stages.ties import tie_warning

OUTCOME = {"A": 1.0, "tie": 0.5, "B": 0.0}  # from the model's side: win, tie, loss


def win_rate(outcomes: list[float]) -> float:
    """Mean outcome, ties counting half."""
    return sum(outcomes) / len(outcomes) if outcomes else float("nan")


def bootstrap_ci(
    outcomes: list[float], n: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the win rate."""
    if not outcomes:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    k = len(outcomes)
    stats = sorted(sum(rng.choice(outcomes) for _ in range(k)) / k for _ in range(n))
    lo = stats[int((1 - level) / 2 * n)]
    hi = stats[min(n - 1, int((1 + level) / 2 * n))]
    return lo, hi


@dataclass
class WinRateReport:
    n: int = 0
    wins: int = 0
    ties: int = 0
    losses: int = 0
    failed: int = 0
    win_rate: float = float("nan")
    ci: tuple[float, float] = (float("nan"), float("nan"))
    by_principle: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_category: dict[str, dict[str, Any]] = field(default_factory=dict)

    def outcomes(self) -> dict[str, int]:
        """Verdict label -> count, as `tie_warning` takes them."""
        return {"A": self.wins, "B": self.losses, "tie": self.ties, "failed": self.failed}


def summarise(records: list[PreferenceRecord], seed: int = 0) -> WinRateReport:
    rep = WinRateReport(n=len(records))
    groups: dict[str, dict[str, list[float]]] = {
        "principle": defaultdict(list),
        "category": defaultdict(list),
    }
    outcomes = []
    for r in records:
        label = r.verdict.label
        if r.status != "ok" or label == "failed":
            rep.failed += 1
            continue
        o = OUTCOME[label]
        outcomes.append(o)
        rep.wins += label == "A"
        rep.ties += label == "tie"
        rep.losses += label == "B"
        for pid in r.verdict.principle_ids:
            groups["principle"][pid].append(o)
        groups["category"][str(r.metadata.get("category", "(none)"))].append(o)
    rep.win_rate = win_rate(outcomes)
    rep.ci = bootstrap_ci(outcomes, seed=seed)
    for name, target in (("principle", rep.by_principle), ("category", rep.by_category)):
        for key, os_ in sorted(groups[name].items()):
            lo, hi = bootstrap_ci(os_, seed=seed)
            target[key] = {
                "n": len(os_),
                "win_rate": round(win_rate(os_), 3),
                "ci": [round(lo, 3), round(hi, 3)],
            }
    return rep


def run_winrate(
    prompts: list[PromptRecord], *, model: Backend, baseline: Backend, judge: Backend, models: dict[str, str],
    constitution: Constitution, cfg: JudgeConfig, params: GenParams, out_dir: Path, engine_config: EngineConfig,
    argv: list[str] | None = None,
) -> tuple[JobSummary, WinRateReport]:  # fmt: skip
    if model.identity() == baseline.identity():
        raise ConfigError(
            f"--model {models.get('model')!r} and --baseline {models.get('baseline')!r} are the "
            "same model (same backend and weights): a win rate against itself says nothing. "
            "Pass a different --baseline."
        )
    identities = {
        "model": model.identity(),
        "baseline": baseline.identity(),
        "judge": judge.identity(),
    }

    def item_id(p: PromptRecord) -> str:
        return stable_hash(
            "winrate",
            p.id,
            models,
            identities,
            params.to_dict(),
            constitution.content_hash,
            cfg.__dict__,
        )

    async def process(p: PromptRecord, engine: Engine) -> PreferenceRecord:
        msgs = [m.model_dump() for m in p.messages]
        try:
            # both answers together: one wave under --batch-api
            answers = await in_order(engine.call(m, msgs, params) for m in (model, baseline))
            a, b = answers[0].text, answers[1].text
        except CallFailed as exc:
            v = JudgeVerdict(label="failed", error=str(exc))
            return preference_record(
                PairInput(p.id, msgs, "", "", p.metadata), v, constitution, cfg, models, item_id(p)
            )
        v = await judge_pair(msgs, a, b, constitution, cfg, engine, judge)
        return preference_record(
            PairInput(p.id, msgs, a, b, {**p.metadata, "a": "model", "b": "baseline"}),
            v,
            constitution,
            cfg,
            models,
            item_id(p),
        )

    def calls(p: PromptRecord) -> list[tuple[Backend, int, int]]:
        """The two answers, then the judge over answers of max_tokens (for --dry-run)."""
        msgs, answer = [m.model_dump() for m in p.messages], stand_in(params.max_tokens)
        asked = (prompt_tokens(msgs), params.max_tokens)
        judged = judge_calls(msgs, answer, answer, constitution, cfg, judge)
        return [(model, *asked), (baseline, *asked), *judged]

    spec = JobSpec(name="eval winrate", items=prompts, item_id=item_id, process=process, output=out_dir / "prefs.jsonl",
                   record_type=PreferenceRecord, run_dir=out_dir,
                   manifest={"command": "eval winrate", "argv": argv or [], "provenance": {"models": models, "constitution": constitution.name,
                             "constitution_hash": constitution.content_hash}},
                   estimate_tokens=calls, backends=list({id(b): b for b in (model, baseline, judge)}.values()))  # fmt: skip
    summary = run_job(spec, engine_config)
    if engine_config.dry_run:
        return summary, WinRateReport()
    ids = {item_id(p) for p in prompts}
    records = [
        r for i, r in latest_by_id(out_dir / "prefs.jsonl", PreferenceRecord).items() if i in ids
    ]
    report = summarise(records, cfg.seed)
    write_report(report, out_dir, models)
    return summary, report


def write_report(rep: WinRateReport, out_dir: Path, models: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(
        ["win", "tie", "loss", "failed"],
        [rep.wins, rep.ties, rep.losses, rep.failed],
        color=["#55a868", "#c4c4c4", "#c44e52", "#8172b2"],
    )
    ax.set_title(f"{models.get('model')} vs {models.get('baseline')}: win rate {rep.win_rate:.2f}")
    fig.tight_layout()
    fig.savefig(out_dir / "winrate.png", dpi=100)
    plt.close(fig)
    lines = [
        f"# Win rate: `{models.get('model')}` vs `{models.get('baseline')}`", "",
        f"Judge: `{models.get('judge')}`, both orders per pair; ties count half.", "",
        "| pairs | wins | ties | losses | failed | win rate | 95% CI (bootstrap) |", "|---|---|---|---|---|---|---|",
        f"| {rep.n} | {rep.wins} | {rep.ties} | {rep.losses} | {rep.failed} | {rep.win_rate:.3f} | [{rep.ci[0]:.3f}, {rep.ci[1]:.3f}] |", "",
    ]  # fmt: skip
    if warning := tie_warning(rep.outcomes()):
        lines += [f"**Warning**: {warning}", ""]
    if rep.failed:
        lines += [f"{rep.failed} pairs failed (generation or judgement) and are left out of the win "
                  "rate; re-run the command or `cai-kit retry-failed` to retry them.", ""]  # fmt: skip
    for title, table in (("principle", rep.by_principle), ("category", rep.by_category)):
        lines += [f"## By {title}", "", f"| {title} | n | win rate | 95% CI |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['n']} | {v['win_rate']} | {v['ci']} |" for k, v in table.items()]
        lines.append("")
    lines += [
        "![win rate](winrate.png)",
        "",
        "Every comparison: `prefs.jsonl` (response_a = model, response_b = baseline).",
    ]
    (out_dir / "report.md").write_text("\n".join(lines), encoding="utf-8")
