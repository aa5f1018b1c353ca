"""`cai-kit judge-report DIR`: how trustworthy were the judge's labels?

Position-consistency rate, tie rate, label distribution, per-principle breakdown, failures,
tokens and cost per labelled pair, and, given a gold file of human-labelled pairs, agreement
with it (the RLAIF paper's "AI labeler alignment"). A text table plus a PNG plot.

Two known judge biases are measured next to position consistency (described for GPT-4 by
Zheng et al. 2023, "Judging LLM-as-a-judge with MT-Bench and Chatbot Arena"; a study of
GPT-4 verdicts on MT-Bench found 52.6% won by the first-shown and 68% by the longer answer,
the reference values the report prints): `first_shown_share`, the share of decisive single-order
comparisons won by the response shown first (0.5 is unbiased), and `longer_share`, the
share of decisive verdicts (A or B) won by the longer of two responses of different length.
A judge that rewards length rather than the constitution shows a longer share near 100%.

`build_report(run_dir, gold=None)` -> JudgeReport; `render(report)` -> text; `plot(report, png)`.
A gold file has `prompt` (or `messages`) and either `response_a`/`response_b`/`label` (A|B|tie)
or TRL's `chosen`/`rejected` (strings or conversational lists of messages); `cai-kit review
export-gold` writes the first. Agreement is given without ties (gold and judge both decisive)
and with them, with Cohen's kappa over A / B / tie (bootstrap 95% CI) and the confusion matrix;
then per principle (agreement with a Wilson 95% CI, kappa with its bootstrap CI), and the pairs
that disagree, each with a `#kind=pair&id=ID` link into `cai-kit review`. Only `ok` records are
matched. `plot_gold(report, png)` draws the agreement figure.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai_kit.engine.spend import cost_known, stats_spend
from cai_kit.errors import DataError
from cai_kit.io import latest_by_id, read_jsonl
from cai_kit.records import PreferenceRecord, stable_hash


@dataclass
class JudgeReport:
    pairs: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    position_consistency: float | None = None
    first_shown_share: float | None = None  # decisive comparisons won by the first-shown response
    first_shown_decisive: int = 0
    longer_share: float | None = None  # decisive verdicts won by the longer response
    longer_decisive: int = 0
    tie_rate: float | None = None  # over ok records; None when there is none
    failures: int = 0
    per_principle: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens_per_labelled_pair: float | None = None
    cost_per_labelled_pair: float | None = None
    usage_note: str | None = None  # why tokens / cost per labelled pair are not known
    cost_note: str | None = None  # why the cost alone is not known (cai_kit.engine.spend)
    gold_agreement: float | None = None  # decisive pairs only (gold and judge both A or B)
    gold_matched: int = 0
    gold_agreement_with_ties: float | None = None  # gold and judge each A, B or tie
    gold_matched_with_ties: int = 0
    gold_kappa: float | None = None  # Cohen's kappa over A / B / tie
    gold_kappa_ci: list[float] | None = None  # bootstrap 95% CI of the kappa
    gold_confusion: dict[str, dict[str, int]] | None = None  # gold label -> judge label -> pairs
    # principle -> matched, agreement (ties included) with a Wilson 95% CI, kappa with its CI
    gold_per_principle: dict[str, dict[str, Any]] = field(default_factory=dict)
    # matched pairs where gold and judge differ, in file order: id, gold, judge (in the gold
    # row's order of A and B), swapped (the gold row shows B first), principles, prompt, link
    gold_disagreements: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _pair_key(messages: list[dict[str, str]], a: str, b: str) -> str:
    return stable_hash([{"role": m["role"], "content": m["content"]} for m in messages], a, b)


def _bias_shares(rep: JudgeReport, judged: list[PreferenceRecord]) -> None:
    """First-shown and longer-response shares over decisive comparisons / verdicts."""
    first_wins = decisive = 0
    for r in judged:
        for c in r.verdict.comparisons:
            if c.p_first is not None and c.p_first != 0.5:
                decisive += 1
                first_wins += c.p_first > 0.5
    rep.first_shown_decisive = decisive
    rep.first_shown_share = first_wins / decisive if decisive else None
    longer_wins = decisive = 0
    for r in judged:
        la, lb = len(r.response_a.strip()), len(r.response_b.strip())
        if r.verdict.label in ("A", "B") and la != lb:
            decisive += 1
            longer_wins += (r.verdict.label == "A") == (la > lb)
    rep.longer_decisive = decisive
    rep.longer_share = longer_wins / decisive if decisive else None


def _text(value: Any) -> Any:
    """A completion as a string: TRL's conversational form is a list of messages."""
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return value[-1].get("content")
    return value


def _gold_row(row: dict[str, Any]) -> tuple[list[dict[str, str]], Any, Any, Any]:
    """(messages, response_a, response_b, label) from either gold layout."""
    prompt = row.get("messages") or row.get("prompt", "")
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if "chosen" in row and "rejected" in row and "response_a" not in row:
        return msgs, _text(row["chosen"]), _text(row["rejected"]), "A"
    return msgs, row.get("response_a"), row.get("response_b"), row.get("label")


REVIEW_URL = "http://127.0.0.1:8001"  # `cai-kit review`'s default address
EXCERPT_CHARS = 80


def review_link(review_url: str, row_id: str) -> str:
    """The review page opened at one pair (its `#kind=pair&id=` address)."""
    from urllib.parse import quote

    return f"{review_url.rstrip('/')}/#kind=pair&id={quote(row_id, safe='')}"


def _excerpt(messages: list[dict[str, str]]) -> str:
    text = " ".join(next((m["content"] for m in reversed(messages) if m["role"] == "user"), "").split())  # fmt: skip
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """Wilson score 95% interval of a proportion k / n; None when n is 0."""
    if not n:
        return None
    p = k / n
    centre, half = p + z * z / (2 * n), z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    d = 1 + z * z / n
    return [round(max(0.0, (centre - half) / d), 4), round(min(1.0, (centre + half) / d), 4)]


def build_report(
    run_dir: Path, gold: Path | None = None, review_url: str = REVIEW_URL
) -> JudgeReport:
    path = run_dir / "prefs.jsonl"
    if not path.is_file():
        raise DataError(
            f"No prefs.jsonl in {run_dir}: run `cai-kit prefs` or `cai-kit judge` first."
        )
    records = list(latest_by_id(path, PreferenceRecord).values())
    rep = JudgeReport(pairs=len(records))
    # counted from the statuses on disk: a failed record is `failed` whatever label it carries
    labels = Counter(r.verdict.label if r.status == "ok" else "failed" for r in records)
    rep.labels = dict(labels)
    judged = [r for r in records if r.status == "ok"]
    rep.failures = len(records) - len(judged)
    if judged:
        rep.tie_rate = sum(r.verdict.label == "tie" for r in judged) / len(judged)
        rep.position_consistency = sum(bool(r.verdict.position_consistent) for r in judged) / len(
            judged
        )
    _bias_shares(rep, judged)
    by_p: dict[str, list[PreferenceRecord]] = defaultdict(list)
    for r in records:
        for pid in r.verdict.principle_ids or ["(none)"]:
            by_p[pid].append(r)
    for pid, rs in sorted(by_p.items()):
        ok = [r for r in rs if r.status == "ok"]
        rep.per_principle[pid] = {
            "pairs": len(rs),
            "failed": len(rs) - len(ok),
            "ties": sum(r.verdict.label == "tie" for r in ok),
            "consistent": round(sum(bool(r.verdict.position_consistent) for r in ok) / len(ok), 3)
            if ok
            else None,
            "mean_margin": round(sum(r.verdict.margin or 0 for r in ok) / len(ok), 3)
            if ok
            else None,
        }
    labelled = labels.get("A", 0) + labels.get("B", 0)
    manifest = run_dir / "manifest.json"
    stats = json.loads(manifest.read_text()).get("stats", {}) if manifest.is_file() else {}
    tokens = stats.get("prompt_tokens", 0) + stats.get("completion_tokens", 0)
    if not labelled:
        rep.usage_note = "no pair labelled A or B"
    elif stats.get("already_done") or stats.get("cache_hits"):  # stats are the last run's
        rep.usage_note = "the last run reused earlier work, so its usage covers only part"
    elif not tokens:  # no manifest, or a provider that reports no usage
        rep.usage_note = "no usage recorded"
    else:
        rep.tokens_per_labelled_pair = round(tokens / labelled, 1)
        if cost_known(stats):
            rep.cost_per_labelled_pair = round((stats.get("cost") or 0.0) / labelled, 6)
        else:  # a server with no price and no reported cost: not free
            rep.cost_note = stats_spend(stats, hint=True)
    if gold is not None:
        ai: dict[str, tuple[str, PreferenceRecord, bool]] = {}  # key -> (label, record, swapped)
        for r in records:
            msgs = [m.model_dump() for m in r.messages]
            label = r.verdict.label if r.status == "ok" else "failed"
            ai[_pair_key(msgs, r.response_a, r.response_b)] = (label, r, False)
            ai[_pair_key(msgs, r.response_b, r.response_a)] = (
                {"A": "B", "B": "A"}.get(label, label),
                r,
                True,
            )
        agree = total = 0
        matched: list[tuple[str, str]] = []  # (gold, judge), each A, B or tie
        by_principle: dict[str, list[tuple[str, str]]] = defaultdict(list)
        disagree: list[tuple[int, dict[str, Any]]] = []  # (record's file order, row)
        order = {r.id: i for i, r in enumerate(records)}
        for line, row in read_jsonl(gold):
            msgs, a, b, label = _gold_row(row)
            if label not in ("A", "B", "tie") or not isinstance(a, str) or not isinstance(b, str):
                raise DataError(
                    f"{gold}:{line}: a gold row needs prompt (or messages) and either response_a, "
                    "response_b and label A, B or tie, or TRL's chosen and rejected."
                )
            got, rec, swapped = ai.get(_pair_key(msgs, a, b), (None, None, False))
            if got in ("A", "B", "tie") and rec is not None:
                matched.append((label, got))
                pids = rec.verdict.principle_ids or ["(none)"]
                for pid in pids:
                    by_principle[pid].append((label, got))
                if got != label:
                    disagree.append((order[rec.id], {
                        "id": rec.id, "gold": label, "judge": got, "swapped": swapped,
                        "principles": pids, "prompt": _excerpt(msgs),
                        "link": review_link(review_url, rec.id),
                    }))  # fmt: skip
            if got in ("A", "B") and label in ("A", "B"):
                total += 1
                agree += got == label
        rep.gold_matched = total
        rep.gold_agreement = agree / total if total else None
        stats = gold_agreement(matched)
        rep.gold_matched_with_ties = len(matched)
        rep.gold_agreement_with_ties = stats["agreement"]
        rep.gold_kappa, rep.gold_kappa_ci = stats["kappa"], stats["kappa_ci"]
        rep.gold_confusion = stats["confusion"]
        for pid, got_pairs in sorted(by_principle.items()):
            st = gold_agreement(got_pairs)
            agreed = sum(g == j for g, j in got_pairs)
            rep.gold_per_principle[pid] = {
                "matched": len(got_pairs),
                "agreement": st["agreement"],
                "agreement_ci": wilson(agreed, len(got_pairs)),
                "kappa": st["kappa"],
                "kappa_ci": st["kappa_ci"],
            }
        rep.gold_disagreements = [row for _, row in sorted(disagree, key=lambda x: x[0])]
    return rep


GOLD_LABELS = ("A", "B", "tie")


def cohen_kappa(
    pairs: list[tuple[str, str]], labels: tuple[str, ...] = GOLD_LABELS
) -> float | None:
    """Cohen's kappa of (rater 1, rater 2) labels; None when chance agreement is certain."""
    n = len(pairs)
    if not n:
        return None
    observed = sum(x == y for x, y in pairs) / n
    first, second = Counter(x for x, _ in pairs), Counter(y for _, y in pairs)
    chance = sum(first[k] * second[k] for k in labels) / (n * n)
    return None if chance >= 1 else (observed - chance) / (1 - chance)


def gold_agreement(pairs: list[tuple[str, str]], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """(gold, judge) labels over A / B / tie -> agreement, Cohen's kappa with a percentile
    bootstrap 95% CI (pairs resampled with replacement, seeded), and the confusion matrix."""
    import random

    confusion = {g: {j: 0 for j in GOLD_LABELS} for g in GOLD_LABELS}
    for g, j in pairs:
        confusion[g][j] += 1
    kappa = cohen_kappa(pairs)
    ci = None
    if len(pairs) >= 2 and kappa is not None:
        rng = random.Random(seed)
        boots = sorted(
            k
            for k in (cohen_kappa(rng.choices(pairs, k=len(pairs))) for _ in range(n_boot))
            if k is not None
        )
        if boots:
            ci = [round(boots[int(0.025 * (len(boots) - 1))], 4), round(boots[int(0.975 * (len(boots) - 1))], 4)]  # fmt: skip
    return {
        "agreement": sum(g == j for g, j in pairs) / len(pairs) if pairs else None,
        "kappa": None if kappa is None else round(kappa, 4),
        "kappa_ci": ci,
        "confusion": confusion,
    }


def warnings(rep: JudgeReport, threshold: float = 0.85, min_decisive: int = 5) -> list[str]:
    """Sentences for the biases that dominate a judge's decisive verdicts."""
    notes = []
    longer, first = rep.longer_share, rep.first_shown_share
    if longer is not None and rep.longer_decisive >= min_decisive and longer >= threshold:
        notes.append(
            f"the longer response won {100 * longer:.0f}% of {rep.longer_decisive} decisive "
            "verdicts: this judge may reward length rather than the constitution."
        )
    top = None if first is None else max(first, 1 - first)
    if top is not None and rep.first_shown_decisive >= min_decisive and top >= threshold:
        side = "first" if (first or 0) >= 0.5 else "second"
        notes.append(
            f"the {side}-shown response won {100 * top:.0f}% of decisive comparisons: this "
            "judge follows position more than content (both orders are averaged, so its labels "
            "come out as ties)."
        )
    return notes


def render(rep: JudgeReport, max_disagreements: int = 10) -> str:
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    buf = StringIO()
    con = Console(file=buf, width=110)
    t = Table(title="Judge report")
    t.add_column("metric")
    t.add_column("value")
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    na = f"n/a ({rep.usage_note})"

    def shares(x: float | None, n: int, what: str) -> str:
        return f"n/a (no decisive {what})" if x is None else f"{pct(x)} of {n} decisive {what}"

    rows = [("pairs", str(rep.pairs)), ("labels", ", ".join(f"{k}={v}" for k, v in sorted(rep.labels.items())) or "none"),
            ("position consistency", pct(rep.position_consistency)),
            ("won by the first-shown response", f"{shares(rep.first_shown_share, rep.first_shown_decisive, 'comparisons')} (MT-Bench, GPT-4: 52.6%)"),
            ("won by the longer response", f"{shares(rep.longer_share, rep.longer_decisive, 'verdicts')} (MT-Bench, GPT-4: 68%)"),
            ("tie rate", pct(rep.tie_rate)),
            ("failures", str(rep.failures)),
            ("tokens / labelled pair", na if rep.tokens_per_labelled_pair is None else f"{rep.tokens_per_labelled_pair:g}"),
            ("cost / labelled pair (USD)", rep.cost_note or na if rep.cost_per_labelled_pair is None else f"{rep.cost_per_labelled_pair:.6f}")]  # fmt: skip
    if rep.gold_agreement is not None or rep.gold_matched:
        rows.append(
            (
                "agreement with gold",
                f"{pct(rep.gold_agreement)} of {rep.gold_matched} matched pairs",
            )
        )
    rows += _gold_rows(rep)
    for r in rows:
        t.add_row(*r)
    con.print(t)
    for note in warnings(rep):
        con.print(f"[yellow]Warning:[/yellow] {note}")
    pt = Table(title="Per principle")
    for col in ("principle", "pairs", "failed", "ties", "consistent", "mean margin"):
        pt.add_column(col)
    for pid, d in rep.per_principle.items():
        pt.add_row(
            pid,
            str(d["pairs"]),
            str(d["failed"]),
            str(d["ties"]),
            pct(d["consistent"]),
            "n/a" if d["mean_margin"] is None else f"{d['mean_margin']:g}",
        )
    con.print(pt)
    if any(d["consistent"] is None for d in rep.per_principle.values()):
        con.print("n/a: no usable verdict under that principle (every pair of it failed).")
    if rep.gold_confusion is not None:
        _render_gold(con, rep, max_disagreements)
    return buf.getvalue()


def _render_gold(con: Any, rep: JudgeReport, max_rows: int) -> None:
    """Agreement with gold per principle, and the pairs where gold and judge differ."""
    from rich.table import Table

    def ci(x: float | None, bounds: list[float] | None, fmt: str) -> str:
        if x is None:
            return "n/a"
        return f"{fmt.format(x)} ({fmt.format(bounds[0])} to {fmt.format(bounds[1])})" if bounds else fmt.format(x)  # fmt: skip

    gt = Table(title="Gold agreement per principle, ties included")
    for col in ("principle", "matched", "agreement (95% CI)", "Cohen's kappa (95% CI)"):
        gt.add_column(col)
    for pid, d in rep.gold_per_principle.items():
        pct = None if d["agreement"] is None else 100 * d["agreement"]
        bounds = d["agreement_ci"] and [100 * x for x in d["agreement_ci"]]
        gt.add_row(pid, str(d["matched"]), ci(pct, bounds, "{:.1f}%"), ci(d["kappa"], d["kappa_ci"], "{:.3f}"))  # fmt: skip
    if not rep.gold_per_principle:
        gt.add_row("n/a", "0", "n/a", "n/a")
    con.print(gt)
    if not rep.gold_per_principle:
        con.print("n/a: no gold row matched a judged pair.")
    elif any(d["kappa"] is None for d in rep.gold_per_principle.values()):
        con.print(
            "n/a: kappa is undefined when gold and judge each gave one and the same label to "
            "every pair (chance agreement is 1)."
        )
    dis = rep.gold_disagreements
    if not dis:
        con.print(f"Disagreements with gold: none of {rep.gold_matched_with_ties} matched pairs.")
        return
    con.print(f"Disagreements with gold ({len(dis)} of {rep.gold_matched_with_ties} matched pairs; gold -> judge; open each in `cai-kit review RUN`):")  # fmt: skip
    for d in dis[:max_rows]:  # one line each, never wrapped: the link stays clickable
        swapped = " (A/B swapped in review)" if d["swapped"] else ""
        line = f"  {d['id']}  {d['gold']} -> {d['judge']}{swapped}  {d['prompt']!r}  {d['link']}"
        con.print(line, markup=False, highlight=False, soft_wrap=True)
    if len(dis) > max_rows:
        con.print(f"… and {len(dis) - max_rows} more (all in judge_report.json).")


def _gold_rows(rep: JudgeReport) -> list[tuple[str, str]]:
    """The report's lines for agreement with ties, Cohen's kappa and the confusion matrix."""
    if rep.gold_confusion is None:
        return []
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    kappa = "n/a" if rep.gold_kappa is None else f"{rep.gold_kappa:.3f}"
    if rep.gold_kappa_ci:
        kappa += f" (bootstrap 95% CI {rep.gold_kappa_ci[0]:.3f} to {rep.gold_kappa_ci[1]:.3f})"
    conf = "; ".join(
        f"gold {g}: " + " ".join(f"{j}={n}" for j, n in row.items())
        for g, row in rep.gold_confusion.items()
    )
    return [
        ("agreement with gold, ties included", f"{pct(rep.gold_agreement_with_ties)} of {rep.gold_matched_with_ties} matched pairs"),
        ("Cohen's kappa (A / B / tie)", kappa),
        ("confusion (gold -> judge)", conf),
    ]  # fmt: skip


def plot(rep: JudgeReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    keys = ["A", "B", "tie", "failed"]
    ax1.bar(
        keys,
        [rep.labels.get(k, 0) for k in keys],
        color=["#4c72b0", "#55a868", "#c4c4c4", "#c44e52"],
    )
    ax1.set_title("Label distribution")
    names = list(rep.per_principle)
    ax2.barh(names, [rep.per_principle[n]["consistent"] or 0 for n in names])
    ax2.set_xlim(0, 1)
    ax2.set_title("Position consistency by principle")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_gold(rep: JudgeReport, path: Path) -> None:
    """The agreement figure: the confusion matrix (gold rows, judge columns) as a heat map,
    and agreement with gold per principle as bars with their Wilson 95% CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = rep.gold_confusion or {g: {j: 0 for j in GOLD_LABELS} for g in GOLD_LABELS}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    grid = [[conf[g][j] for j in GOLD_LABELS] for g in GOLD_LABELS]
    ax1.imshow(grid, cmap="Blues", vmin=0)
    top = max(max(row) for row in grid) or 1
    for y, row in enumerate(grid):
        for x, n in enumerate(row):
            ax1.text(x, y, str(n), ha="center", va="center", color="white" if n > top / 2 else "black")  # fmt: skip
    ax1.set_xticks(range(3), GOLD_LABELS)
    ax1.set_yticks(range(3), GOLD_LABELS)
    ax1.set_xlabel("judge")
    ax1.set_ylabel("gold")
    kappa = "n/a" if rep.gold_kappa is None else f"{rep.gold_kappa:.2f}"
    ax1.set_title(f"Gold vs judge ({rep.gold_matched_with_ties} pairs, kappa {kappa})")
    names = [n for n, d in rep.gold_per_principle.items() if d["agreement"] is not None]
    vals = [rep.gold_per_principle[n]["agreement"] for n in names]
    cis = [rep.gold_per_principle[n]["agreement_ci"] or [v, v] for n, v in zip(names, vals, strict=True)]  # fmt: skip
    err = [[v - c[0] for v, c in zip(vals, cis, strict=True)], [c[1] - v for v, c in zip(vals, cis, strict=True)]]  # fmt: skip
    ax2.barh(names, vals, xerr=err if names else None, capsize=4, color="#4c72b0")
    ax2.set_yticks(range(len(names)), [f"{n} ({rep.gold_per_principle[n]['matched']})" for n in names])  # fmt: skip
    ax2.set_xlim(0, 1)
    ax2.set_title("Agreement with gold by principle (ties included, 95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
