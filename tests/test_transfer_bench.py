"""bench/transfer.py's parts (the runs themselves take minutes each; their stages are tested
elsewhere): settings parsed by bench/outcome.py's own parser, the prompt selection, the
constitution's checks, `--k-max` reaching `prefs`, and the per-setting summary."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from cai_kit.checks import run_check
from cai_kit.constitution import load_constitution

ROOT = Path(__file__).resolve().parent.parent


def _bench(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


transfer = _bench("transfer")


def test_a_setting_is_a_method_and_outcomes_own_flags_checked_before_any_run() -> None:
    assert transfer.parse_setting("dpo --k 8 --k-max 32") == ("dpo", ["--k", "8", "--k-max", "32"])
    assert transfer.slug("dpo", ["--k", "8", "--k-max", "32"]) == "dpo_k_8_k-max_32"
    with pytest.raises(ValueError, match="unknown method 'ppo'"):
        transfer.parse_setting("ppo --lr 1e-3")
    with pytest.raises(ValueError, match="give the seeds with --seeds"):
        transfer.parse_setting("grpo --seed 1")
    with pytest.raises(ValueError, match="does not take"):
        transfer.parse_setting("grpo --grpo-stepz 30")


def test_default_prompts_are_outcomes_split_of_one_kind_with_no_training_prompt_held_out(
    tmp_path: Path,
) -> None:
    train_file, held_file = transfer.outcome.split(tmp_path / "split")
    train, held = transfer.select(train_file, held_file, "benign", 10, None, tmp_path)
    tr = [json.loads(x) for x in train.open()]
    he = [json.loads(x) for x in held.open()]
    assert (len(tr), len(he)) == (10, 22)
    assert {r["kind"] for r in tr + he} == {"benign"}
    assert not {r["prompt"] for r in tr} & {r["prompt"] for r in he}
    # a held-out prompt that is also a training prompt is dropped: here every one of them
    with pytest.raises(ValueError, match="0 held out"):
        transfer.select(train, train, "benign", 10, None, tmp_path / "again")
    with pytest.raises(ValueError, match="wanted 99"):
        transfer.select(train_file, held_file, "benign", 99, None, tmp_path)


def test_terse_checks_pass_fifteen_finished_words_only() -> None:
    c = load_constitution(transfer.CONSTITUTION)
    words, finished = (p.check for p in c.principles)
    assert words is not None and finished is not None
    fifteen = " ".join(["word"] * 15) + "."
    assert run_check(words, "q", fifteen) == 1.0
    assert run_check(words, "q", "word " + fifteen) == 0.0
    assert run_check(finished, "q", 'He said "stop."') == 1.0
    assert run_check(finished, "q", "It was cut off in the") == 0.0
    assert run_check(finished, "q", "") == 0.0


def test_k_max_reaches_prefs_only_when_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(transfer.outcome, "_cli", lambda args, log: calls.append(args) or 0.0)
    for flags in (["--k", "8"], ["--k", "8", "--k-max", "32"]):
        a = transfer.outcome.settings().parse_args(flags)
        transfer.outcome.train_dpo(a, tmp_path / "t.jsonl", tmp_path, tmp_path / "log")
    without, with_max = (c for c in calls if c[0] == "prefs")
    assert "--k-max" not in without
    assert with_max[with_max.index("--k-max") + 1] == "32"
    assert with_max[with_max.index("-c") + 1] == "brief-and-safe"  # outcome's own by default


def test_summary_gives_each_settings_mean_and_spread_over_seeds() -> None:
    def run(seed: int, diff: float, **extra: Any) -> dict[str, Any]:
        return {"seed": seed, "before": 0.1, "after": 0.1 + diff, "diff": diff,
                "ci": [diff - 0.1, diff + 0.1], "train_s": 60.0, "eval_s": 60.0, **extra}  # fmt: skip

    text = transfer.table({
        "grpo --grpo-steps 12": [run(0, 0.1), run(1, 0.3), run(2, 0.2)],
        "dpo --k 8 --k-max 32": [run(0, 0.0, pairs=4, no_pair=2, no_pair_at_k=6, prompts=10)],
    })  # fmt: skip
    assert "| `grpo --grpo-steps 12` | +20 pts | +10 … +30 | 10 | 2.0 |" in text
    assert (
        "| `dpo --k 8 --k-max 32` | 0 | 10% → 10% | +0 pts [-10, +10] | 4; 6 → 2 of 10 | 2.0 |"
        in text
    )
