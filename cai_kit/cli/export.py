"""`cai-kit export sft | prefs | dpo | kto | reward`: run records -> TRL-ready datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

export_app = typer.Typer(
    help="Export run records as TRL-ready datasets (JSONL + dataset card).", no_args_is_help=True
)

RunDir = Annotated[Path, typer.Argument(help="Run directory (from revise, prefs or judge).")]
Out = Annotated[
    Path,
    typer.Option("--out", "-o", help="Output directory for train.jsonl, test.jsonl, README.md."),
]
Fmt = Annotated[
    str, typer.Option("--format", help="conversational (lists of messages) | standard (strings).")
]
EvalFrac = Annotated[
    float, typer.Option("--eval-fraction", help="Share of rows held out in test.jsonl.")
]
MinMargin = Annotated[
    float,
    typer.Option("--min-margin", help="Keep pairs whose judge margin is at least this (0..1)."),
]
Ties = Annotated[bool, typer.Option("--include-ties", help="Keep pairs the judge called a tie.")]
PreferHuman = Annotated[
    bool,
    typer.Option(
        "--prefer-human",
        help="Human labels from `cai-kit review` (RUN/labels.sqlite) replace the judge's "
        "(pairs: A|B|tie|both-bad; revisions: better|worse|unchanged).",
    ),
]
PushToHub = Annotated[
    str | None,
    typer.Option("--push-to-hub", help="Also push the dataset to this Hub repo (needs network)."),
]


def _human(run_dir: Path, kind: str) -> Any:
    """RUN/labels.sqlite's labels of the kind `kind` exports (one per row over reviewers)."""
    from cai_kit.review.labels import FILENAME, human_labels
    from cai_kit.stages.export import HumanLabels

    hl = human_labels(run_dir / FILENAME, "revision" if kind in ("sft", "prefs") else "pair")
    if hl.split:
        typer.echo(f"Reviewers split with no majority on {hl.split} rows: the judge's label stays.")
    return HumanLabels(hl.by_row)


def _run(kind: str, run_dir: Path, out: Path, fmt: str, eval_fraction: float, min_margin: float = 0.0,
         include_ties: bool = False, push_to_hub: str | None = None, prefer_human: bool = False) -> None:  # fmt: skip
    from cai_kit.cli.common import fail
    from cai_kit.stages.export import export, left_out

    if fmt not in ("conversational", "standard"):
        fail(f"--format must be conversational or standard, not {fmt!r}.")
    human = _human(run_dir, kind) if prefer_human else None
    counts = export(run_dir, out, kind, fmt, min_margin, include_ties, eval_fraction, human=human)  # type: ignore[arg-type]
    skipped = counts["skipped"]
    typer.echo(
        f"Wrote {counts['train']} train / {counts['test']} test rows to {out}"
        + (f"; left out {sum(skipped.values())} records: {left_out(skipped)}" if skipped else "")
    )
    if human is not None:
        typer.echo(human.line()[:1].upper() + human.line()[1:] + ".")
    if push_to_hub:
        from datasets import load_dataset

        files = {"train": str(out / "train.jsonl")} | (
            {"test": str(out / "test.jsonl")} if counts["test"] else {}
        )
        load_dataset("json", data_files=files).push_to_hub(push_to_hub)
        typer.echo(f"Pushed to {push_to_hub}")


RunDirOrDb = Annotated[
    Path,
    typer.Argument(
        help="Run directory (from revise, prefs or judge), or a feedback DB from `serve`."
    ),
]


def _feedback(kind: str, source: Path, out: Path, fmt: str, eval_fraction: float) -> bool:
    """Export served 👍/👎 feedback when SOURCE is a feedback DB; False for a run directory."""
    from cai_kit.serve.store import is_feedback_db

    if not is_feedback_db(source):
        return False
    from cai_kit.cli.common import fail
    from cai_kit.serve.feedback import export_feedback
    from cai_kit.stages.export import train_command

    if fmt not in ("conversational", "standard"):
        fail(f"--format must be conversational or standard, not {fmt!r}.")
    counts = export_feedback(source, out, kind, fmt, eval_fraction)  # type: ignore[arg-type]
    left = ", ".join(f"{n} {why}" for why, n in counts["skipped"].items())
    typer.echo(
        f"Wrote {counts['train']} train / {counts['test']} test rows to {out}"
        + (f" (left out: {left})" if left else "")
    )
    if kind == "kto":
        (w_d, w_u) = counts["weights"]
        cmd = train_command("kto", out, desirable_weight=w_d, undesirable_weight=w_u)
        typer.echo(
            f"{counts['desirable']} desirable, {counts['undesirable']} undesirable; balance with: {cmd}"
        )
    return True


@export_app.command("sft")
def sft(
    run_dir: RunDir, out: Out, eval_fraction: EvalFrac = 0.0, push_to_hub: PushToHub = None,
    prefer_human: PreferHuman = False,
) -> None:  # fmt: skip
    """SFT data from revise: conversational messages ending in the final revision."""
    _run("sft", run_dir, out, "conversational", eval_fraction, push_to_hub=push_to_hub,
         prefer_human=prefer_human)  # fmt: skip


@export_app.command("prefs")
def prefs(
    run_dir: RunDirOrDb,
    out: Out,
    fmt: Fmt = "conversational",
    eval_fraction: EvalFrac = 0.0,
    push_to_hub: PushToHub = None,
    prefer_human: PreferHuman = False,
) -> None:
    """Pairs from revise (revision chosen, initial rejected), or from a feedback DB (👍 vs 👎
    responses to the same turn)."""
    if _feedback("prefs", run_dir, out, fmt, eval_fraction):
        return
    _run(
        "prefs",
        run_dir,
        out,
        fmt,
        eval_fraction,
        push_to_hub=push_to_hub,
        prefer_human=prefer_human,
    )


@export_app.command("dpo")
def dpo(run_dir: RunDir, out: Out, fmt: Fmt = "conversational", eval_fraction: EvalFrac = 0.0, min_margin: MinMargin = 0.0,
        include_ties: Ties = False, push_to_hub: PushToHub = None, prefer_human: PreferHuman = False) -> None:  # fmt: skip
    """Judged pairs (prefs.jsonl) as prompt/chosen/rejected for DPO/IPO/ORPO."""
    _run(
        "dpo", run_dir, out, fmt, eval_fraction, min_margin, include_ties, push_to_hub, prefer_human
    )


@export_app.command("kto")
def kto(run_dir: RunDirOrDb, out: Out, fmt: Fmt = "conversational", eval_fraction: EvalFrac = 0.0, min_margin: MinMargin = 0.0,
        push_to_hub: PushToHub = None, prefer_human: PreferHuman = False) -> None:  # fmt: skip
    """Judged pairs, or a feedback DB's 👍/👎 ratings, as unpaired prompt/completion/label rows for KTO."""
    if _feedback("kto", run_dir, out, fmt, eval_fraction):
        return
    _run("kto", run_dir, out, fmt, eval_fraction, min_margin, False, push_to_hub, prefer_human)


@export_app.command("reward")
def reward(run_dir: RunDir, out: Out, fmt: Fmt = "conversational", eval_fraction: EvalFrac = 0.0, min_margin: MinMargin = 0.0,
           include_ties: Ties = False, push_to_hub: PushToHub = None, prefer_human: PreferHuman = False) -> None:  # fmt: skip
    """Judged pairs with a margin column for reward-model training."""
    _run(
        "reward",
        run_dir,
        out,
        fmt,
        eval_fraction,
        min_margin,
        include_ties,
        push_to_hub,
        prefer_human,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
