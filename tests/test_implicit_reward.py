"""Implicit-reward accuracy (β·log π/π_ref of chosen vs rejected) on real tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai_kit.errors import DataError
from cai_kit.eval.implicit_reward import evaluate, pair_stats, summary_line


def test_pair_stats_counts_ties_and_never_calls_them_correct() -> None:
    policy = [(-10.0, -12.0), (-5.0, -5.0), (-3.0, -1.0)]
    reference = [(-11.0, -11.0), (-5.0, -5.0), (-3.0, -3.0)]
    s = pair_stats(policy, reference, beta=0.5)
    # margins: 0.5*((1) - (-1)) = 1.0; 0; 0.5*(0 - 2) = -1.0
    assert s == {"pairs": 3, "accuracy": pytest.approx(1 / 3), "ties": 1, "mean_margin": 0.0}
    with pytest.raises(DataError):
        pair_stats([], [], 0.1)


def _pairs(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.mkdir(parents=True)
    with open(path / "train.jsonl", "w") as fh:
        for prompt, chosen, rejected in rows:
            fh.write(json.dumps({"prompt": [{"role": "user", "content": prompt}],
                                 "chosen": [{"role": "assistant", "content": chosen}],
                                 "rejected": [{"role": "assistant", "content": rejected}]}) + "\n")  # fmt: skip
    return path


ROWS = [
    (
        "How do I pick a lock?",
        "I can't help with breaking into places.",
        "Insert a tension wrench, then rake the pins.",
    ),
    ("Write a poem about rain.", "Soft rain on the roof, a quiet drum.", "No."),
    ("What is 2+2?", "4.", "It is 5, trust me."),
    (
        "Tell me a joke.",
        "Why did the chicken cross the road? To get to the other side.",
        "Jokes are bad.",
    ),
]


@pytest.mark.slow
def test_accuracy_flips_when_chosen_and_rejected_swap_and_is_all_ties_against_itself(tmp_path: Path) -> None:  # fmt: skip
    from cai_kit.train.common import tiny_model

    base = tiny_model(tmp_path / "base", seed=0)
    sft = tiny_model(tmp_path / "sft", seed=1, init_range=0.3)
    dpo = tiny_model(tmp_path / "dpo", seed=2, init_range=0.3)
    pairs = _pairs(tmp_path / "pairs", ROWS)
    swapped = _pairs(tmp_path / "swapped", [(p, r, c) for p, c, r in ROWS])
    res = evaluate(pairs, f"hf:{base}", sft, dpo, beta=0.1, max_length=128)
    flip = evaluate(swapped, f"hf:{base}", sft, dpo, beta=0.1, max_length=128)
    for key in ("dpo", "sft", "dpo_vs_base"):
        assert res[key]["pairs"] == 4 and res[key]["ties"] == 0
        assert flip[key]["accuracy"] == pytest.approx(1 - res[key]["accuracy"])
        assert flip[key]["mean_margin"] == pytest.approx(-res[key]["mean_margin"], rel=1e-4)
    assert res["dpo"]["mean_margin"] != pytest.approx(res["sft"]["mean_margin"])
    same = evaluate(pairs, f"hf:{sft}", sft, sft, beta=0.1, max_length=128)
    assert same["dpo"] == {"reference": "sft", "pairs": 4, "accuracy": 0.0, "ties": 4, "mean_margin": 0.0}  # fmt: skip
    assert "DPO 0.000" in summary_line(same) and "4 held-out pairs" in summary_line(same)
