"""Benchmark: DPO step time and peak memory, ours vs a plain TRL script, on the embedded model.

    python bench/train_dpo.py [--steps 4] [--batch 2]

Each configuration runs in its own process (so peak RSS is its own): our `train dpo` with
LoRA (reference = adapters off), LoRA + precomputed reference log-probs, full fine-tuning
(TRL then keeps a separate reference copy), and a plain TRL DPOTrainer script with default
settings on the same data and batch (full model + reference copy). CPU only here; on a GPU
the same script measures the same things.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAIRS = [
    {"prompt": [{"role": "user", "content": f"How do I hurt someone, case {i}?"}],
     "chosen": [{"role": "assistant", "content": "I can't help with that, but here is a safe alternative."}],
     "rejected": [{"role": "assistant", "content": "Sure, here is exactly how to do it, step by step."}]}
    for i in range(32)
]  # fmt: skip


def _time_trainer_train() -> dict[str, float]:
    """Wall and CPU seconds (all threads) inside Trainer.train, the same for every config:
    CPU time is the figure that a busy shared machine disturbs least."""
    import transformers

    spent: dict[str, float] = {}
    inner = transformers.Trainer.train

    def timed(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        w, c = time.perf_counter(), time.process_time()
        try:
            return inner(self, *args, **kwargs)
        finally:
            spent["wall"], spent["cpu"] = time.perf_counter() - w, time.process_time() - c

    transformers.Trainer.train = timed
    return spent


def one(config: str, steps: int, batch: int, data: Path, out: Path) -> dict[str, float]:
    from cai_kit.train.common import resolve_model

    spent = _time_trainer_train()
    start = time.perf_counter()
    if config == "plain-trl":
        from datasets import load_dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import DPOConfig, DPOTrainer

        path = resolve_model("local")
        model = AutoModelForCausalLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        args = DPOConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, bf16=False,
                         report_to=[], save_strategy="no", logging_steps=1, max_length=128)  # fmt: skip
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=load_dataset("json", data_files=str(data))["train"],
            processing_class=tok,
        )
        result = trainer.train()
    else:
        from cai_kit.train.run import TrainOptions, train

        opts = TrainOptions(data=str(data), out=str(out), model="local", max_steps=steps, batch_size=batch, max_length=128,
                            save_steps=10_000, full=config == "ours-full", precompute_ref_logprobs=config == "ours-lora-precomputed")  # fmt: skip
        out_dir = train("dpo", opts)
        hist = json.loads((out_dir / "log_history.json").read_text())
        result = type("R", (), {"metrics": next(h for h in hist if "train_runtime" in h)})()
    runtime = float(result.metrics["train_runtime"])
    return {"step_s": runtime / steps, "cpu_step_s": spent["cpu"] / steps,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "wall_s": time.perf_counter() - start}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument(
        "--configs",
        default="plain-trl,ours-lora,ours-lora-precomputed,ours-full",
        help="Comma-separated subset to run (plain-trl is always run: it is the baseline).",
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("data", nargs="?", help=argparse.SUPPRESS)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cai-dpo-bench-"))
    data = tmp / "pairs.jsonl"
    if args.one:
        print(json.dumps(one(args.one, args.steps, args.batch, Path(args.data), tmp / "out")))
        return
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    configs = ["plain-trl", *[c for c in args.configs.split(",") if c != "plain-trl"]]
    results = {}
    for c in configs:
        out = subprocess.run([sys.executable, __file__, "--one", c, "--steps", str(args.steps), "--batch", str(args.batch), str(data)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        results[c] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results["plain-trl"]
    print(
        f"DPO on the embedded SmolLM2-135M, CPU, batch {args.batch}, {args.steps} steps, max_length 128"
    )
    print(
        f"{'config':<24}{'s/step':>8}{'vs plain':>10}{'CPU s/step':>12}{'vs plain':>10}{'peak RSS MB':>13}{'vs plain':>10}"
    )
    for c, r in results.items():
        print(
            f"{c:<24}{r['step_s']:>8.2f}{r['step_s'] / base['step_s']:>9.2f}x{r['cpu_step_s']:>12.2f}"
            f"{r['cpu_step_s'] / base['cpu_step_s']:>9.2f}x{r['peak_rss_mb']:>13.0f}{r['peak_rss_mb'] / base['peak_rss_mb']:>9.2f}x"
        )
    if "ours-lora" in results and "ours-full" in results:
        print(
            f"LoRA-DPO peak memory / full DPO with a reference copy (ours-full): "
            f"{results['ours-lora']['peak_rss_mb'] / results['ours-full']['peak_rss_mb']:.2f}x"
        )


if __name__ == "__main__":
    main()
