"""Ratings in a feedback DB -> TRL datasets: unpaired KTO rows, or 👍/👎 preference pairs.

    counts = export_feedback(Path("feedback.db"), Path("runs/kto"), "kto")
    counts = export_feedback(Path("feedback.db"), Path("runs/pairs"), "prefs")

- `kto`: one row per rated completion: `prompt` (the conversation it answered), `completion`,
  `label` (True for 👍). The card gives the desirable/undesirable counts and the
  `desirable_weight`/`undesirable_weight` that balance them: the KTO paper (Eq. 8) wants
  λ_D·n_D / (λ_U·n_U) in [1, 4/3]; we move only the minority class's weight and aim at 1.15,
  the middle of that range, so TRL's own check agrees even after an eval split.
- `prefs`: a turn (same conversation, e.g. the page's "regenerate") with a 👍 response and a
  👎 response gives prompt/chosen/rejected; with several of each, every 👍 pairs with every 👎.

Both write OUT/train.jsonl (+ test.jsonl) and a dataset card OUT/README.md, and train with
`cai-kit train kto OUT` / `cai-kit train dpo OUT` as they are.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from cai_kit.errors import DataError
from cai_kit.records import Message
from cai_kit.serve.store import FeedbackStore, RatedCompletion, is_feedback_db
from cai_kit.stages.export import LOAD_WITH, Format, _completion, _prompt, train_command, write_rows

FeedbackKind = Literal["kto", "prefs"]
TARGET_RATIO = 1.15  # λ_D·n_D / (λ_U·n_U): the middle of the KTO paper's [1, 4/3]


def kto_weights(n_desirable: int, n_undesirable: int) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight): the minority class is up-weighted, the other is 1."""
    if not n_desirable or not n_undesirable or n_desirable == n_undesirable:
        return 1.0, 1.0
    if n_desirable < n_undesirable:
        return round(TARGET_RATIO * n_undesirable / n_desirable, 2), 1.0
    return 1.0, round(n_desirable / (TARGET_RATIO * n_undesirable), 2)


def _prompt_of(r: RatedCompletion, fmt: Format) -> Any:
    return _prompt([Message(**m) for m in r.messages], fmt)


def build_feedback_rows(
    rated: list[RatedCompletion], kind: FeedbackKind, fmt: Format = "conversational"
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    rows: list[dict[str, Any]] = []
    skipped: dict[str, int] = defaultdict(int)
    if kind == "kto":
        for r in rated:
            if not r.text.strip():
                skipped["empty reply"] += 1
                continue
            rows.append({"prompt": _prompt_of(r, fmt), "completion": _completion(r.text, fmt),
                         "label": r.rating == 1})  # fmt: skip
        return rows, dict(skipped)
    turns: dict[str, list[RatedCompletion]] = defaultdict(list)
    for r in rated:
        turns[r.turn].append(r)
    for group in turns.values():
        ups = [r for r in group if r.rating == 1]
        downs = [r for r in group if r.rating == -1]
        if not ups or not downs:
            skipped["turns without both a 👍 and a 👎"] += 1
            continue
        for good, bad in itertools.product(ups, downs):
            if good.text.strip() == bad.text.strip():
                skipped["chosen equals rejected"] += 1
                continue
            rows.append({"prompt": _prompt_of(good, fmt), "chosen": _completion(good.text, fmt),
                         "rejected": _completion(bad.text, fmt)})  # fmt: skip
    return rows, dict(skipped)


def _card(
    kind: FeedbackKind, db: Path, out_dir: Path, store: FeedbackStore, rows: list[dict[str, Any]],
    n_train: int, n_test: int, skipped: dict[str, int], fmt: Format,
) -> str:  # fmt: skip
    counts = store.counts()
    lines = [
        "---", "tags: [cai-kit, human-feedback, " + ("kto]" if kind == "kto" else "dpo]"), "---", "",
        f"# cai-kit {kind} dataset from served feedback", "",
        f"Exported by `cai-kit export {kind}` from the feedback database `{db}` ({fmt} format).", "",
        f"- rows: {n_train} train, {n_test} test",
        f"- served completions: {counts['completions']}; rated 👍 {counts['up']}, 👎 {counts['down']}",
        f"- models served: {', '.join(store.models()) or 'none'}",
    ]  # fmt: skip
    if skipped:
        lines.append("- left out: " + ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())))
    if kind == "kto":
        n_d = sum(1 for r in rows if r["label"])
        n_u = len(rows) - n_d
        w_d, w_u = kto_weights(n_d, n_u)
        ratio = (w_d * n_d) / (w_u * n_u) if n_u else float("inf")
        lines += [
            f"- desirable (👍): {n_d}",
            f"- undesirable (👎): {n_u}",
            f"- balancing weights: desirable_weight={w_d}, undesirable_weight={w_u} "
            f"(λ_D·n_D / λ_U·n_U = {ratio:.2f}; the KTO paper advises 1 to 4/3)",
            "", "Train with the balancing weights:", "", "```bash",
            train_command("kto", out_dir, desirable_weight=w_d, undesirable_weight=w_u),
            "```",
        ]  # fmt: skip
    else:
        lines += ["", "Train with:", "", "```bash", train_command("dpo", out_dir), "```"]
    lines += LOAD_WITH
    return "\n".join(lines)


def export_feedback(
    db: Path,
    out_dir: Path,
    kind: FeedbackKind,
    fmt: Format = "conversational",
    eval_fraction: float = 0.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Write OUT/train.jsonl (+ test.jsonl) and OUT/README.md; returns counts (and KTO weights)."""
    if not is_feedback_db(db):
        raise DataError(f"{db} is not a feedback database (an SQLite file from `cai-kit serve`).")
    store = FeedbackStore(db)
    try:
        rated = store.rated()
        rows, skipped = build_feedback_rows(rated, kind, fmt)
        if not rows:
            c = store.counts()
            hint = " (pairs need a 👍 and a 👎 on two responses to one turn: regenerate)"
            raise DataError(
                f"Nothing to export from {db} as {kind}: {c['completions']} completions, "
                f"{c['up']} 👍 and {c['down']} 👎{hint if kind == 'prefs' else ''}."
            )
        n_train, n_test = write_rows(rows, out_dir, eval_fraction, seed)
        card = _card(kind, db, out_dir, store, rows, n_train, n_test, skipped, fmt)
        (out_dir / "README.md").write_text(card, encoding="utf-8")
    finally:
        store.close()
    counts: dict[str, Any] = {"train": n_train, "test": n_test, "skipped": skipped}
    if kind == "kto":
        n_d = sum(1 for r in rows if r["label"])
        counts.update(desirable=n_d, undesirable=len(rows) - n_d)
        counts["weights"] = kto_weights(n_d, len(rows) - n_d)
    return counts
