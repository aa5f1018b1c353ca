"""`eval safety`'s report: report.md, report.json and the frontier plot frontier.png.

The frontier puts each model at (over-refusal on benign look-alikes, compliance with harmful
requests), with 95% bootstrap CI bars on both axes; lower-left is better on both. The points
are joined in the order baselines first (as given), then the model, so base -> SFT -> DPO -> RL
reads as a path. matplotlib is imported only here, when the plot is drawn; without it the
report says so and the plot is skipped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Dropped:
    """A held-out prompt left out because it duplicates a training prompt."""

    source: str | None
    duplicates: str
    how: str  # exact | near


@dataclass
class SafetyReport:
    models: list[str]  # the model under evaluation first, then the baselines
    judge: str
    prompts: int = 0
    failed: int = 0
    dropped: list[Dropped] = field(default_factory=list)
    harm: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> comply, score
    over_refusal: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> refused, ...
    helpfulness: dict[str, dict[str, Any]] = field(default_factory=dict)  # baseline -> win rate
    hard: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # pid -> model ->
    changed: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # baseline -> cat
    reference: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pct(cell: dict[str, Any]) -> str:
    if cell["rate"] is None:
        return "n/a"
    lo, hi = cell["ci"]
    return f"{100 * cell['rate']:.0f}% [{100 * lo:.0f}-{100 * hi:.0f}] of {cell['n']}"


def _score(cell: dict[str, Any]) -> str:
    if cell["rate"] is None:
        return "n/a"
    return f"{cell['rate']:.2f} [{cell['ci'][0]:.2f}-{cell['ci'][1]:.2f}]"


def frontier_plot(report: SafetyReport, path: Path) -> str | None:
    """Draw frontier.png; None when drawn, else the sentence saying why not."""
    try:
        import matplotlib
    except ImportError:
        return (
            "matplotlib is not installed (pip install matplotlib), so frontier.png was not drawn."
        )
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [*report.models[1:], report.models[0]]  # baselines as given, then the model
    points = []
    for name in order:
        x, y = report.over_refusal[name]["refused"], report.harm[name]["comply"]
        if x["rate"] is None or y["rate"] is None:
            continue
        points.append((name, x, y))
    if not points:
        return "no model has both a harm and an over-refusal rate, so frontier.png was not drawn."
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, x, y in points:
        xerr = [[x["rate"] - x["ci"][0]], [x["ci"][1] - x["rate"]]]
        yerr = [[y["rate"] - y["ci"][0]], [y["ci"][1] - y["rate"]]]
        ax.errorbar(x["rate"], y["rate"], xerr=xerr, yerr=yerr, fmt="o", capsize=4, label=name)
        ax.annotate(
            name, (x["rate"], y["rate"]), textcoords="offset points", xytext=(6, 6), fontsize=8
        )
    if len(points) > 1:
        ax.plot(
            [p[1]["rate"] for p in points], [p[2]["rate"] for p in points], "--", color="grey", lw=1
        )
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("over-refusal: benign look-alikes refused")
    ax.set_ylabel("harm: harmful requests complied with")
    ax.set_title("Safety frontier (lower left is better)")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def write_report(report: SafetyReport, out_dir: Path) -> None:
    """report.json (everything), report.md (the tables) and frontier.png."""
    skipped = frontier_plot(report, out_dir / "frontier.png")
    data = report.as_dict()
    data["frontier"] = "frontier.png" if skipped is None else None
    (out_dir / "report.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
    lines = [f"# Safety: harm vs over-refusal (judge `{report.judge}`)", "",
             f"{report.prompts} prompts evaluated, {report.failed} failed (left out of every share; re-run the "
             "command or `cai-kit retry-failed` to finish them).", ""]  # fmt: skip
    if report.dropped:
        lines += [f"{len(report.dropped)} held-out prompts were dropped as duplicates of training prompts "
                  f"(first: {report.dropped[0].source} is a {report.dropped[0].how} duplicate of "
                  f"{report.dropped[0].duplicates}).", ""]  # fmt: skip
    lines += ["| model | harm: complies | harm: StrongREJECT score | over-refusal: refused (judge) | full / partial | refused (rules) | judge-rules agreement |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for n in report.models:
        h, o = report.harm[n], report.over_refusal[n]
        lines.append(f"| `{n}` | {_pct(h['comply'])} | {_score(h['score'])} | {_pct(o['refused'])} | "
                     f"{_pct(o['full_refusal'])} / {_pct(o['partial_refusal'])} | {_pct(o['rule_refused'])} | "
                     f"{_pct(o['agreement'])} |")  # fmt: skip
    lines += ["", "Cells: share [bootstrap 95% CI] of n graded answers. Harm is graded on the harmful prompts "
              "(lower is better), over-refusal on the benign look-alikes (lower is better); the rule-based "
              "classifier reads refusal phrases and cross-checks the judge.", ""]  # fmt: skip
    if report.helpfulness:
        lines += ["## Helpfulness on the benign prompts (pairwise, both orders)", "",
                  "| model vs baseline | pairs | wins | ties | losses | win rate [95% CI] |", "|---|---|---|---|---|---|"]  # fmt: skip
        for b, w in report.helpfulness.items():
            rate = (
                "n/a"
                if w["win_rate"] is None
                else f"{w['win_rate']:.2f} [{w['ci'][0]:.2f}-{w['ci'][1]:.2f}]"
            )
            lines.append(
                f"| `{report.models[0]}` vs `{b}` | {w['n']} | {w['wins']} | {w['ties']} | {w['losses']} | {rate} |"
            )
        lines.append("")
        for b, w in report.helpfulness.items():
            if w.get("warning"):
                lines += [f"**Warning** (`{b}`): {w['warning']}", ""]
    if report.hard:
        lines += ["## Hard constraints (share of answers that violate each)", "",
                  "| principle | " + " | ".join(f"`{n}`" for n in report.models) + " |", "|---|" + "---|" * len(report.models)]  # fmt: skip
        lines += [
            f"| {pid} | " + " | ".join(_pct(row[n]) for n in report.models) + " |"
            for pid, row in report.hard.items()
        ]
        lines.append("")
    for b, cats in report.changed.items():
        lines += [f"## What changed: `{report.models[0]}` vs `{b}`, per category", "",
                  "| category (kind) | now refused | now complied | unchanged |", "|---|---|---|---|"]  # fmt: skip
        lines += [
            f"| {c} | {len(v['to_refusal'])} | {len(v['to_compliance'])} | {v['same']} |"
            for c, v in cats.items()
        ]
        lines.append("")
    if report.reference:
        lines += [f"Judge vs the reference labels: the same XSTest class for {_pct(report.reference['class'])}, "
                  f"the same refused/complied for {_pct(report.reference['refused'])}.", ""]  # fmt: skip
    lines += [f"**Note**: {skipped}" if skipped else "![frontier](frontier.png)", "",
              "Every answer and grade: `safety.jsonl`; all figures: `report.json`."]  # fmt: skip
    (out_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
