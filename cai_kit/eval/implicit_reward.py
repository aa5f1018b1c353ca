"""Implicit-reward accuracy: does a trained policy prefer the chosen response of held-out pairs?

DPO's implicit reward of a response y to a prompt x is r(x, y) = β·(log π(y|x) − log π_ref(y|x)).
A pair counts as correct when r(chosen) > r(rejected) (TRL logs the same as `rewards/accuracies`
during training; here it is measured on pairs the model never saw). Unlike a judge's win rate
it moves even when the judge ties on everything, because it reads the models' own log-probs.

    python -m cai_kit.eval.implicit_reward --pairs RUN/heldout_pairs --base local \\
        --sft RUN/sft_model --dpo RUN/dpo_model --beta 0.1 --out RUN/implicit_reward

scores the DPO model against its reference (the SFT model) and the SFT model against the base,
writing OUT/implicit_reward.json and one summary line. `pair_stats` is the arithmetic; the
models run in `cai_kit.train.logprobs` (the [train] extra), so this module imports no torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cai_kit.errors import CaiKitError, DataError


def pair_stats(
    policy: list[tuple[float, float]], reference: list[tuple[float, float]], beta: float
) -> dict[str, Any]:
    """Accuracy (ties count as not correct, and are counted) and mean reward margin, from
    each pair's (log π(chosen|x), log π(rejected|x)) under the policy and its reference."""
    if len(policy) != len(reference) or not policy:
        raise DataError("implicit reward: need the same, non-zero number of pairs for both models.")
    margins = [
        beta * ((pc - rc) - (pr - rr)) for (pc, pr), (rc, rr) in zip(policy, reference, strict=True)
    ]
    return {
        "pairs": len(margins),
        "accuracy": sum(m > 0 for m in margins) / len(margins),
        "ties": sum(m == 0 for m in margins),
        "mean_margin": sum(margins) / len(margins),
    }


def evaluate(pairs: Path, base: str, sft: Path, dpo: Path, beta: float, max_length: int = 512) -> dict[str, Any]:  # fmt: skip
    """Implicit-reward stats of the DPO model (reference: SFT) and the SFT model (reference: base)."""
    from cai_kit.train.logprobs import pair_logprobs

    models = {"base": base, "sft": str(sft), "dpo": str(dpo)}
    lp = pair_logprobs(pairs, models, tokenizer=str(sft), max_length=max_length)
    return {
        "pairs_path": str(pairs), "beta": beta, "max_length": max_length,
        "dpo": {"reference": "sft", **pair_stats(lp["dpo"], lp["sft"], beta)},
        "sft": {"reference": "base", **pair_stats(lp["sft"], lp["base"], beta)},
        "dpo_vs_base": {"reference": "base", **pair_stats(lp["dpo"], lp["base"], beta)},
    }  # fmt: skip


def summary_line(res: dict[str, Any]) -> str:
    d, s = res["dpo"], res["sft"]
    return (f"implicit reward accuracy on {d['pairs']} held-out pairs: DPO {d['accuracy']:.3f} "
            f"(margin {d['mean_margin']:+.4f}, ref SFT), SFT {s['accuracy']:.3f} "
            f"(margin {s['mean_margin']:+.4f}, ref base)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cai_kit.eval.implicit_reward", description=__doc__.split("\n\n")[0])  # fmt: skip
    ap.add_argument(
        "--pairs", type=Path, required=True, help="prompt/chosen/rejected JSONL or export dir"
    )
    ap.add_argument("--base", default="local", help="the model SFT started from (local, hf:PATH)")
    ap.add_argument("--sft", type=Path, required=True, help="the SFT model directory")
    ap.add_argument("--dpo", type=Path, required=True, help="the DPO model directory")
    ap.add_argument("--beta", type=float, default=0.1, help="β of the implicit reward")
    ap.add_argument("--max-length", type=int, default=512, help="max tokens per sequence")
    ap.add_argument("--out", type=Path, required=True, help="directory for implicit_reward.json")
    args = ap.parse_args(argv)
    try:
        res = evaluate(args.pairs, args.base, args.sft, args.dpo, args.beta, args.max_length)
    except CaiKitError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "implicit_reward.json").write_text(json.dumps(res, indent=2) + "\n")
    print(summary_line(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
