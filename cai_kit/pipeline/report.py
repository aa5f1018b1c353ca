"""RUN/report.md for `cai-kit pipeline`: what ran, on which prompts, and what the numbers mean.

    write_report(recipe, run, stage_names, split)

Sections: models (student, teacher and the stages it serves), prompts (how many trained on,
which held-out prompts were evaluated and where they came from), what `expand` did (generated,
duplicates removed, kept, written), per-stage seconds, what each job spent ("cost unknown"
where a server had no price and reported none), the win
rate with a warning when the judge's ties make it meaningless, and the implicit-reward
accuracy of the DPO and SFT models on held-out pairs (`cai_kit.eval.implicit_reward`), and
what `infer` found: the principles kept with their agreement and decided counts, or "no
principle passed", and the inferred constitution diffed against the recipe's.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cai_kit.stages.ties import tie_warning

if TYPE_CHECKING:
    from cai_kit.pipeline.recipe import Recipe
    from cai_kit.pipeline.split import Split


def judge_outcomes(eval_dir: Path) -> Counter[str]:
    """Verdict labels (A = model wins, B = baseline wins, tie, failed) of the eval comparisons."""
    from cai_kit.io import latest_by_id
    from cai_kit.records import PreferenceRecord

    path = eval_dir / "prefs.jsonl"
    if not path.is_file():
        return Counter()
    return Counter(r.verdict.label for r in latest_by_id(path, PreferenceRecord).values())


def _models(r: Recipe) -> list[str]:
    lines = [f"- Student (trained here): `{r.student.model}`"]
    if r.teacher is None:
        lines.append("- Teacher: none; the student writes responses, critiques and revisions and judges.")  # fmt: skip
    else:
        at = f" at {r.teacher.api_base}" if r.teacher.api_base else ""
        lines.append(f"- Teacher: `{r.teacher.model}`{at}, serving {', '.join(r.teacher.serves)}")
    lines.append(f"- Constitution `{r.constitution}`; preference pairs from {r.preferences}.")
    return lines


def _prompts(split: Split) -> list[str]:
    lines = [f"- Training (revise, SFT, DPO): {len(split.train)} prompts, `prompts/train.jsonl`.",
             f"- Evaluation: {len(split.eval)} held-out prompts, `prompts/eval.jsonl`, from {split.note}. "
             "None of them was used for revise, SFT or DPO.", "", "Eval prompts:", ""]  # fmt: skip
    for p in split.eval[:20]:
        text = " ".join(p.prompt_text.split())
        lines.append(f"- {text[:100]}{'…' if len(text) > 100 else ''}")
    if len(split.eval) > 20:
        lines.append(f"- … and {len(split.eval) - 20} more (see `prompts/eval.jsonl`).")
    return lines


def stage_seconds(marker: Path) -> tuple[float, float | None]:
    """(wall, cpu) seconds from a stage marker ("12.3 s wall, 20.1 s cpu"; older: "12.3 s")."""
    nums = [float(x) for x in re.findall(r"[\d.]+(?= s)", marker.read_text())]
    return nums[0], nums[1] if len(nums) > 1 else None


def _stages(run: Path, names: list[str]) -> list[str]:
    lines = ["| stage | status | seconds (wall) | CPU seconds |", "|---|---|---:|---:|"]
    wall = cpu = 0.0
    for n in names:
        m = run / ".stages" / f"{n}.done"
        if not m.exists():
            lines.append(f"| {n} | not run | | |")
            continue
        w, c = stage_seconds(m)
        wall, cpu = wall + w, cpu + (c or 0.0)
        lines.append(f"| {n} | done | {w:.1f} | {'' if c is None else f'{c:.1f}'} |")
    lines.append(f"| **total** | | {wall:.1f} | {cpu:.1f} |")
    lines += ["", f"Measured with load average {_load()} on {os.cpu_count()} CPU(s) at the end of the "
              "run: on a shared machine wall time grows with the load, CPU seconds do not."]  # fmt: skip
    return lines


def spend(run: Path) -> list[str]:
    """What each job of the run spent, from the manifest.json of every job folder (the last run
    of each job): "cost unknown" for a job whose server had no price and reported no cost."""
    from cai_kit.engine.spend import cost_known, spend_text, stats_spend

    lines = ["| job | command | calls | cost |", "|---|---|---:|---:|"]
    total, unpriced = 0.0, 0
    for path in sorted([*run.glob("*/manifest.json"), *run.glob("*/*/manifest.json")]):
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        stats = m.get("stats") or {}
        known = cost_known(stats)
        total += float((stats.get("cost") if known else stats.get("priced_cost")) or 0.0)
        unpriced += 0 if known else int(stats.get("unpriced_calls") or 0)
        job = path.parent.relative_to(run).as_posix()
        lines.append(f"| `{job}/` | {m.get('command', '')} | {stats.get('calls', 0)} | {stats_spend(stats)} |")  # fmt: skip
    if len(lines) == 2:
        return ["No job has run yet."]
    lines.append(f"| **total** | | | {spend_text(total, unpriced, hint=True)} |")
    return lines


def _load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min)"
    except OSError:
        return "unknown"


def _implicit(run: Path) -> list[str]:
    path = run / "implicit_reward" / "implicit_reward.json"
    if not path.is_file():
        return ["Not measured (stage `implicit-reward` has not run, or `eval: {implicit_reward: false}`)."]  # fmt: skip
    res: dict[str, Any] = json.loads(path.read_text())
    beta = res["beta"]
    lines = [f"On {res['dpo']['pairs']} held-out pairs (revision = chosen, initial response = rejected, "
             "on the eval prompts; `heldout_pairs/`), with r(x, y) = β·(log π(y|x) − log π_ref(y|x)), "
             f"β = {beta:g}. Accuracy is the share of pairs with r(chosen) > r(rejected).", "",
             "| model | implicit reward | accuracy | ties | mean margin |", "|---|---|---:|---:|---:|"]  # fmt: skip
    for key, label, formula in (("dpo", "DPO model", "β·log π_dpo/π_sft"), ("sft", "SFT model", "β·log π_sft/π_base"),
                                ("dpo_vs_base", "DPO model vs base", "β·log π_dpo/π_base")):  # fmt: skip
        s = res.get(key)
        if s:
            lines.append(f"| {label} | {formula} | {s['accuracy']:.3f} | {s['ties']} | {s['mean_margin']:+.4f} |")  # fmt: skip
    return lines


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _human(run: Path) -> list[str]:
    """Agreement of the AI judge with the reviewers' labels: prefs/judge_report.json, written by
    `judge-report prefs --gold prefs/gold.jsonl` at the end of the pipeline run."""
    path = run / "prefs" / "judge_report.json"
    rep: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    if not rep.get("gold_matched_with_ties"):
        return ["People labelled some pairs, but none could be matched to a judged pair yet (see "
                "`logs/export-gold.log` and `logs/judge-vs-human.log`)."]  # fmt: skip
    kappa, ci = rep.get("gold_kappa"), rep.get("gold_kappa_ci")
    k = "n/a (one label only on both sides)" if kappa is None else f"{kappa:.3f}"
    if kappa is not None and ci:
        k += f" (95% CI {ci[0]:.3f} to {ci[1]:.3f})"
    lines = [f"On {rep['gold_matched_with_ties']} pairs labelled by people (`prefs/gold.jsonl`):", "",
             "| measure | value |", "|---|---|",
             f"| agreement, ties included | {_pct(rep.get('gold_agreement_with_ties'))} |",
             f"| agreement on decisive pairs ({rep.get('gold_matched', 0)}) | {_pct(rep.get('gold_agreement'))} |",
             f"| Cohen's kappa | {k} |"]  # fmt: skip
    per = rep.get("gold_per_principle") or {}
    if per:
        lines += ["", "| principle | pairs | agreement, ties included |", "|---|---:|---:|"]
        for pid, d in per.items():
            lines.append(f"| {pid} | {d.get('matched', 'n/a')} | {_pct(d.get('agreement'))} |")
    n = len(rep.get("gold_disagreements") or [])
    lines += ["", f"{n} pair(s) disagree: `cai-kit judge-report {run / 'prefs'} --gold "
              f"{run / 'prefs' / 'gold.jsonl'}` lists them with links into `cai-kit review`."]  # fmt: skip
    return lines


def _no_report(run: Path, stage: str) -> str:
    if (run / ".stages" / f"{stage}.done").exists():  # ran to its end with every call failed
        return f"Stage `{stage}` ran but wrote no report: see `logs/{stage}.log`."
    return f"Not run yet (stage `{stage}` has not finished)."


def _expand(r: Recipe, run: Path) -> list[str]:
    """What the expand step did, from expand/expand_report.json."""
    path = run / "expand" / "expand_report.json"
    if not path.is_file():
        return [_no_report(run, "expand")]
    x: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    e = r.expand
    assert e is not None
    dups = x["exact_duplicates"] + x["near_duplicates"]
    lines = [f"`cai-kit prompts expand` wrote new prompts in the style of `{r.prompts}` "
             f"({x['seeds']} seed prompts) with `{r.step_model(e)[0]}`, before the held-out split.", "",
             f"- Generated: {x['generated']} prompts by {x['calls']} calls.",
             f"- Duplicates removed: {dups} ({x['exact_duplicates']} exact, {x['near_duplicates']} near, "
             f"of the seeds or of each other; duplicate rate {x['duplicate_rate']:.1%})."]  # fmt: skip
    if x.get("kept_rate") is not None:
        lines.append(f"- Keep-if ({e.keep_if!r}): kept {x['kept']} of {x['judged']} (kept rate {x['kept_rate']:.1%}).")  # fmt: skip
    else:
        lines.append(f"- Kept: {x['kept']} unique prompts (no keep-if).")
    pool = "added to the seed prompts" if e.include_seeds else "used instead of the seed prompts"
    lines.append(f"- Written: {x['written']} of the {e.n} asked for, `expand/prompts.jsonl`, {pool}.")  # fmt: skip
    return lines


def _infer(r: Recipe, run: Path) -> list[str]:
    """What the infer step did, from infer/report.json, and the inferred constitution against
    the recipe's (`constitution diff`)."""
    from cai_kit.constitution import load_constitution
    from cai_kit.stages.infer import diff_constitutions

    path = run / "infer" / "report.json"
    if not path.is_file():
        return [_no_report(run, "infer")]
    x: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    i = r.infer
    assert i is not None
    cands = x["candidates"]
    kept = [c for c in cands if c["kept"]]
    lines = [f"`cai-kit constitution infer` on the preference pairs with `{r.step_model(i)[0]}`: "
             f"{x['proposal_pairs']} pairs proposed {x['principles_proposed']} principles "
             f"({x['merged_as_duplicates']} merged as near-duplicates); {len(cands)} candidates judged "
             f"{x['test_pairs']} held-out pairs. Kept: agreement ≥ {i.min_agreement:g} on the pairs "
             f"decided, deciding ≥ {i.min_decided:.0%} of them.", ""]  # fmt: skip
    inferred = run / "infer" / "inferred.yaml"
    if not kept or not inferred.is_file():
        best = max(cands, key=lambda c: c["agreement"] or 0.0, default=None)
        also = f" (best: `{best['id']}`, agreement {best['agreement'] or 0:.2f}, decided {best['decided']}/{best['tested']})" if best else ""  # fmt: skip
        return [*lines, f"**No principle passed**{also}; see `infer/report.json`."]
    lines += ["| principle | agreement | decided / tested | proposed by |", "|---|---:|---:|---:|"]
    for c in kept:
        lines.append(f"| {c['text']} | {c['agreement']:.2f} | {c['decided']}/{c['tested']} | {c['support']} |")  # fmt: skip
    const, mine = load_constitution(str(inferred)), load_constitution(r.constitution)
    d = diff_constitutions(mine, const)
    lines += ["", f"Written to `infer/inferred.yaml`. Against the recipe's constitution `{mine.name}` "
              f"(`cai-kit constitution diff {r.constitution} {inferred}`): adds {len(d.added)}, "
              f"lacks {len(d.lacking)}, in both {len(d.matched)}.", ""]  # fmt: skip
    lines += [f"- adds `{p.id}`" for p in d.added]
    lines += [
        f"- in both `{p.id}` ~ `{q.id}` (text similarity {sim:.2f})" for p, q, sim in d.matched
    ]
    if d.lacking:
        lines.append(f"- lacks {', '.join(f'`{p.id}`' for p in d.lacking)}")
    return lines


def _from_eval(markdown: str) -> str:
    """eval/report.md's text for RUN/report.md: its relative links now point into eval/."""
    return re.sub(r"(!?\[[^\]]*\]\()(?![a-z]+:|/|#)([^)]+\))", r"\1eval/\2", markdown)


def write_report(r: Recipe, run: Path, names: list[str], split: Split) -> Path:
    ev = run / "eval" / "report.md"
    lines = [f"# Pipeline `{r.name}`", "", "## Models", "", *_models(r), "", "## Prompts", "",
             *_prompts(split), "",
             *(["## Expand: new prompts", "", *_expand(r, run), ""] if r.expand is not None else []),
             "## Stages", "", *_stages(run, names), "",
             "## Spend (the last run of each job)", "", *spend(run), "",
             "Outputs: `revise/revisions.jsonl`, `sft_data/`, `sft_model/`, `dpo_data/`, `dpo_model/`, "
             "`eval/report.md`, `implicit_reward/implicit_reward.json`; stage logs in `logs/`.", "",
             "## Evaluation: win rate of the DPO model against the student before training", ""]  # fmt: skip
    if ev.is_file():
        if tie_warning(judge_outcomes(run / "eval")):  # (eval's report below says why)
            lines += ["**Ties dominate: this win rate says nothing about the models.** Use a "
                      "stronger judge (a `teacher` serving `eval_judging`), or read the "
                      "implicit-reward accuracy below, which comes from the models' own "
                      "log-probabilities.", ""]  # fmt: skip
        lines += [_from_eval(ev.read_text(encoding="utf-8").split("\n", 1)[1].strip()), ""]
    else:
        lines += ["Not measured yet (stage `eval` has not run).", ""]
    lines += ["## Implicit reward accuracy (held out)", "", *_implicit(run), ""]
    if r.infer is not None:
        lines += ["## Infer: principles behind the preference pairs", "", *_infer(r, run), ""]
    if (run / "prefs" / "labels.sqlite").is_file():
        lines += ["## The judge against people (human labels from `cai-kit review`)", "", *_human(run), ""]  # fmt: skip
    path = run / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
