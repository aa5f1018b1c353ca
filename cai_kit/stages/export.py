"""Run records -> datasets in exactly the column layouts TRL's trainers accept.

- `sft`    from revisions.jsonl: conversational `messages` (prompt turns + final revision).
- `prefs`  from revisions.jsonl: prompt/chosen/rejected, chosen = final revision, rejected =
           initial response (the Hugging Face CAI recipe's construction).
- `dpo`    from prefs.jsonl (judged pairs): prompt/chosen/rejected; failed judgements, ties,
           pairs below --min-margin and pairs of identical responses are left out, and counted;
           a prompt's same two responses judged under two ids are exported once (the later).
           A tie kept by `include_ties` is oriented by p_a: B chosen when p_a < 0.5, A when
           above; at exactly 0.5 (or no p_a) as written, response_a chosen.
- `kto`    from prefs.jsonl: unpaired prompt/completion/label rows.
- `reward` from prefs.jsonl: chosen/rejected with a `margin` column (the judge's confidence).

`format="conversational"` writes lists of messages; `"standard"` writes plain strings (the
prompt rendered as its last user turn). Every export writes OUT/train.jsonl (+ test.jsonl
with `eval_fraction`) and a dataset card OUT/README.md with provenance and counts. Load with
`datasets.load_dataset("json", data_files="OUT/train.jsonl")`.
"""

from __future__ import annotations

import json
import random
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cai_kit.errors import DataError
from cai_kit.io import latest_by_id
from cai_kit.records import Message, PreferenceRecord, RevisionRecord

Format = Literal["conversational", "standard"]
Kind = Literal["sft", "prefs", "dpo", "kto", "reward"]


@dataclass
class HumanLabels:
    """Human labels that take the judge's place (`export --prefer-human`), by record id: a pair
    A | B | tie | both-bad, a revision better | worse | unchanged (from `cai-kit review`).
    `used` and `overrode` (a label other than the judge's, or than "the revision is better")
    are counted while exporting."""

    labels: dict[str, str]
    used: int = 0
    overrode: int = 0
    by_change: dict[str, int] = field(default_factory=dict)  # "judge B -> human A": pairs

    def take(self, record_id: str, machine: str) -> str | None:
        label = self.labels.get(record_id)
        if label is not None:
            self.used += 1
            if label != machine:
                self.overrode += 1
                key = f"{machine} -> {label}"
                self.by_change[key] = self.by_change.get(key, 0) + 1
        return label

    def line(self) -> str:
        changes = ", ".join(f"{n} {k}" for k, n in sorted(self.by_change.items()))
        return (f"human labels: {self.used} used, {self.overrode} overrode the judge"
                + (f" ({changes})" if changes else ""))  # fmt: skip


def _msgs(messages: list[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def _prompt(messages: list[Message], fmt: Format) -> Any:
    return _msgs(messages) if fmt == "conversational" else messages[-1].content


def _completion(text: str, fmt: Format) -> Any:
    return [{"role": "assistant", "content": text}] if fmt == "conversational" else text


def _q(path: Path) -> str:
    """A path for a suggested command: absolute (works from any directory) and shell-quoted."""
    return shlex.quote(str(path.resolve()))


def _revisions(run_dir: Path) -> list[RevisionRecord]:
    path = run_dir / "revisions.jsonl"
    if not path.is_file():
        raise DataError(
            f"No revisions.jsonl in {run_dir}: make it with `cai-kit revise PROMPTS --out {_q(run_dir)}` first."
        )
    return list(latest_by_id(path, RevisionRecord).values())


def _preferences(run_dir: Path) -> list[PreferenceRecord]:
    path = run_dir / "prefs.jsonl"
    if not path.is_file():
        raise DataError(
            f"No prefs.jsonl in {run_dir}: make it with `cai-kit prefs PROMPTS --out {_q(run_dir)}` "
            f"(or `cai-kit judge PAIRS --out {_q(run_dir)}`) first."
        )
    return list(latest_by_id(path, PreferenceRecord).values())


def latest_pairs(records: list[PreferenceRecord]) -> tuple[list[PreferenceRecord], int]:
    """One record per pair (prompt + the two responses, in either order): a pair judged again
    under another id (a run written before pair ids hashed only the pair's own samples, or
    another judge in the same run directory) is superseded by the later record. Returns the
    records kept, in file order, and how many were superseded."""
    by_pair: dict[tuple[str, tuple[str, ...]], PreferenceRecord] = {}
    for r in records:  # file order of each id's first line; the later record wins
        key = (r.prompt_id, tuple(sorted((r.response_a, r.response_b))))
        by_pair.pop(key, None)
        by_pair[key] = r
    return list(by_pair.values()), len(records) - len(by_pair)


def build_rows(
    run_dir: Path,
    kind: Kind,
    fmt: Format = "conversational",
    min_margin: float = 0.0,
    include_ties: bool = False,
    human: HumanLabels | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The rows of one export and counts of the records left out, by reason (`failed`, `tie`,
    `below --min-margin M`, `identical responses`, ...). Every record is either exported or
    counted under exactly one reason. With `human`, a record's human label replaces the
    judge's (a failed judgement included; --min-margin does not apply to it)."""
    rows: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    # In content order, not file order: records are appended as their calls finish, so the same
    # command run twice writes them in different orders, and the seeded shuffle in write_rows
    # must see one order to give one train.jsonl. Not by record id either: ids also hash the
    # models' identities (a server's URL), which another run may give another port.
    if kind in ("sft", "prefs"):
        for r in sorted(
            _revisions(run_dir), key=lambda r: (r.prompt_id, r.final_response or "", r.id)
        ):
            if r.status != "ok":
                skip("failed")
                continue
            final, initial = (r.final_response or "").strip(), (r.initial_response or "").strip()
            if not final:
                skip("empty final response")
                continue
            verdict = human.take(r.id, "better") if human else None
            if verdict == "unchanged" or (verdict == "worse" and kind == "sft"):
                skip(f"revision {verdict} (human label)")
                continue
            if verdict == "worse":  # prefs: the human preferred the initial response
                final, initial = initial, final
            if kind == "sft":
                rows.append(
                    {"messages": [*_msgs(r.messages), {"role": "assistant", "content": final}]}
                )
            elif not any(s.revision for s in r.steps):
                skip("no revision")
            elif final == initial:
                skip("revision equals initial response")
            else:
                rows.append({"prompt": _prompt(r.messages, fmt), "chosen": _completion(final, fmt),
                             "rejected": _completion(initial, fmt)})  # fmt: skip
        return rows, skipped

    kept, superseded = latest_pairs(_preferences(run_dir))
    if superseded:
        skipped["same pair judged again (the later judgement kept)"] = superseded
    for p in sorted(kept, key=lambda r: (r.prompt_id, r.response_a, r.response_b, r.id)):
        label, margin = p.verdict.label, p.verdict.margin or 0.0
        verdict = human.take(p.id, "failed" if p.status != "ok" else label) if human else None
        if verdict is not None:
            label, margin = verdict, 1.0  # a person's label: certain, whatever the judge said
        if p.status != "ok" and verdict is None:
            skip("failed")
            continue
        if label == "both-bad":
            skip("both bad (human label)")
            continue
        if p.response_a.strip() == p.response_b.strip():
            skip("identical responses")
            continue
        if label == "tie" and not include_ties:
            skip("tie")
            continue
        if margin < min_margin:
            skip(f"below --min-margin {min_margin:g}")
            continue
        # A kept tie leans where p_a leans (B when p_a < 0.5); at exactly 0.5, or with no p_a,
        # the pair stays as written: response_a chosen.
        lean_b = label == "B" or (
            label == "tie" and p.verdict.p_a is not None and p.verdict.p_a < 0.5
        )
        chosen, rejected = (p.response_b, p.response_a) if lean_b else (p.response_a, p.response_b)
        prompt = _prompt(p.messages, fmt)
        if kind == "dpo":
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": _completion(chosen, fmt),
                    "rejected": _completion(rejected, fmt),
                }
            )
        elif kind == "reward":
            rows.append({"prompt": prompt, "chosen": _completion(chosen, fmt), "rejected": _completion(rejected, fmt),
                         "margin": round(margin, 6)})  # fmt: skip
        else:  # kto: one desirable and one undesirable row per pair
            rows.append({"prompt": prompt, "completion": _completion(chosen, fmt), "label": True})
            rows.append(
                {"prompt": prompt, "completion": _completion(rejected, fmt), "label": False}
            )
    return rows, skipped


# The last lines of every dataset card: how to load the export.
LOAD_WITH = ["", "Load with:", "", "```python", "from datasets import load_dataset",
             'ds = load_dataset("json", data_files={"train": "train.jsonl"})', "```", ""]  # fmt: skip


def train_command(kind: str, data_dir: Path, **trl: object) -> str:
    """The `cai-kit train KIND DATA --out MODEL [--set k=v ...]` line an export suggests, with
    absolute quoted paths so it works from any directory (MODEL: DATA's sibling `DATA-model`)."""
    data = data_dir.resolve()
    sets = "".join(f" --set {k}={v}" for k, v in trl.items())
    return f"cai-kit train {kind} {_q(data)} --out {_q(data.with_name(data.name + '-model'))}{sets}"


def left_out(skipped: dict[str, int]) -> str:
    """`3 failed, 2 tie, 1 identical responses`: what an export left out and why."""
    return ", ".join(
        f"{n} {why}" for why, n in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0]))
    )


def _card(
    kind: Kind, run_dir: Path, n_train: int, n_test: int, skipped: dict[str, int], fmt: Format
) -> str:
    manifest_path = run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    prov = manifest.get("provenance", {})
    lines = [
        "---", "tags: [cai-kit, constitutional-ai, rlaif]", "---", "",
        f"# cai-kit {kind} dataset", "",
        f"Exported by `cai-kit export {kind}` from `{run_dir}` ({fmt} format).", "",
        f"- rows: {n_train} train, {n_test} test",
        f"- constitution: {prov.get('constitution')} (hash {prov.get('constitution_hash')})",
        f"- models: {json.dumps(prov.get('models', {}))}",
        f"- source command: `{' '.join(manifest.get('argv', []))}`",
        f"- cai-kit version: {prov.get('cai_kit_version')}",
    ]  # fmt: skip
    if skipped:
        lines.append(f"- left out: {left_out(skipped)}")
    lines += LOAD_WITH
    return "\n".join(lines)


def export(
    run_dir: Path,
    out_dir: Path,
    kind: Kind,
    fmt: Format = "conversational",
    min_margin: float = 0.0,
    include_ties: bool = False,
    eval_fraction: float = 0.0,
    seed: int = 0,
    human: HumanLabels | None = None,
) -> dict[str, Any]:
    """Write OUT/train.jsonl (+ test.jsonl) and OUT/README.md; returns counts."""
    rows, skipped = build_rows(run_dir, kind, fmt, min_margin, include_ties, human)
    if not rows:
        left = f"left out: {left_out(skipped)}" if skipped else "no records"
        raise DataError(f"Nothing to export from {run_dir} as {kind} ({left}).")
    n_train, n_test = write_rows(rows, out_dir, eval_fraction, seed)
    card = _card(kind, run_dir, n_train, n_test, skipped, fmt)
    if human is not None:
        card = card.replace("\nLoad with:", f"- {human.line()}\n\nLoad with:", 1)
    (out_dir / "README.md").write_text(card, encoding="utf-8")
    return {"train": n_train, "test": n_test, "skipped": skipped}


def write_rows(
    rows: list[dict[str, Any]], out_dir: Path, eval_fraction: float = 0.0, seed: int = 0
) -> tuple[int, int]:
    """Shuffle (seeded), split off `eval_fraction` as test, write OUT/train.jsonl (+ test.jsonl).

    Returns (train rows, test rows). Shared by every exporter (run records, served feedback).
    """
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n_test = int(len(rows) * eval_fraction)
    test, train = rows[:n_test], rows[n_test:]
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("test", test)):
        (out_dir / f"{name}.jsonl").unlink(missing_ok=True)  # no stale split from an older export
        if part:
            with open(out_dir / f"{name}.jsonl", "w", encoding="utf-8") as fh:
                for row in part:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(train), len(test)
