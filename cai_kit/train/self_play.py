"""SPIN (Self-Play fIne-tuNing, Chen et al. 2024) over TRL's DPO.

For each iteration k: the current model answers the SFT prompts (its answers are
`rejected`), the SFT targets are `chosen`, and DPO trains the model against the previous
iteration (LoRA: the adapter-free weights are the previous iteration; the result is merged
so the next iteration starts from it). Everything is kept: OUT/iter_k/{data,model}.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai_kit.train.data import data_files, read_rows
from cai_kit.train.run import TrainOptions, train


@dataclass(frozen=True)
class SpinOptions:
    """SPIN's own options and their defaults: `train.spin(...)` and `cai-kit train spin` read them."""

    iterations: int = 2
    max_steps: int = 20  # DPO steps per iteration
    batch_size: int = 4
    lr: float = 5e-5
    beta: float = 0.1
    max_new_tokens: int = 128  # length of the model's own answers


SPIN = SpinOptions()


def sft_pairs(path: Path) -> list[tuple[list[dict[str, str]], str]]:
    """(prompt turns, target) from `messages` rows (the last assistant turn is the target)."""
    from cai_kit.errors import DataError

    out = []
    for row in read_rows(data_files(path)["train"]):
        msgs = row.get("messages")
        if not msgs or msgs[-1].get("role") != "assistant":
            raise DataError(
                f"{path}: SPIN needs SFT rows with `messages` ending in an assistant turn (`cai-kit export sft`)."
            )
        out.append((msgs[:-1], msgs[-1]["content"]))
    return out


def _generate(
    model_dir: str, prompts: list[list[dict[str, str]]], max_new_tokens: int
) -> list[str]:
    from cai_kit.llm.base import GenParams
    from cai_kit.llm.registry import get_backend

    async def go() -> list[str]:
        b = get_backend(f"hf:{model_dir}")
        try:
            params = GenParams(
                temperature=1.0, max_tokens=max_new_tokens, seed=0
            )  # sampled, as in the paper
            return [c.text for c in await asyncio.gather(*(b.chat(p, params) for p in prompts))]
        finally:
            await b.aclose()

    from cai_kit.engine.loop import run_sync

    return run_sync(go())  # works in a notebook too


def run_spin(
    data: Path,
    model: str,
    out: Path,
    iterations: int,
    opts: dict[str, Any],
    max_new_tokens: int = SPIN.max_new_tokens,
) -> list[Path]:
    """Returns the model directory of each iteration."""
    from cai_kit.train.common import resolve_model
    from cai_kit.train.tracking import Tracker, parse_report_to

    pairs = sft_pairs(data)
    current = resolve_model(model)
    # each iteration's DPO logs its steps itself (TRL, report_to); the loop logs one point per
    # iteration to OUT (spin/pairs, and the iteration's last loss and reward margin)
    tracker = Tracker(parse_report_to(opts.get("report_to")), out, "spin", config=dict(opts))
    try:
        models = _iterations(pairs, current, out, iterations, opts, max_new_tokens, tracker)
    finally:
        tracker.close()
    return models


def _iterations(pairs: list[tuple[list[dict[str, str]], str]], current: str, out: Path, iterations: int,
                opts: dict[str, Any], max_new_tokens: int, tracker: Any) -> list[Path]:  # fmt: skip
    models = []
    for k in range(1, iterations + 1):
        it = out / f"iter_{k}"
        responses = _generate(current, [p for p, _ in pairs], max_new_tokens)
        (it / "data").mkdir(parents=True, exist_ok=True)
        rows = [{"prompt": p, "chosen": [{"role": "assistant", "content": t}], "rejected": [{"role": "assistant", "content": r}]}
                for (p, t), r in zip(pairs, responses, strict=True) if r.strip() and r.strip() != t.strip()]  # fmt: skip
        if not rows:
            from cai_kit.errors import DataError

            raise DataError(
                f"SPIN iteration {k}: every answer was empty or equal to its target; nothing to train on."
            )
        (it / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        trained = train(
            "dpo",
            TrainOptions(
                **{
                    **opts,
                    "data": str(it / "data"),
                    "out": str(it / "model"),
                    "model": f"hf:{current}",
                    "merge": True,
                }
            ),
        )
        current = str(trained)
        models.append(trained)
        last = {}
        for h in json.loads((trained / "log_history.json").read_text()):
            last.update(
                {m: h[m] for m in ("loss", "rewards/margins", "rewards/accuracies") if m in h}
            )
        tracker.log({"spin/pairs": len(rows), **{f"spin/{m}": v for m, v in last.items()}}, k)
    return models
