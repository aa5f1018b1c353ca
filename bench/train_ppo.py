"""Benchmark: PPO rollouts/s and updates/s on the embedded model, ours vs a reference PPO.

    python bench/train_ppo.py [--steps 3] [--batch 8] [--new-tokens 32] [--no-reference]

Both sides run the same model (SmolLM2-135M, LoRA r=16 all-linear), the same tokenised
prompts (chat template applied once, here), the same settings (batch 8, mini-batch 4,
2 PPO epochs, sampling at temperature 1 over the full vocabulary, adaptive KL) and the same
toy reward (response length in tokens / new tokens, so scoring costs nothing), one after the
other in separate processes. Time is split into generation, reward, the no-grad forward
passes (old log-probs + values + reference) and the update (mini-batch forward/backward/step).

The reference is TRL 0.11.4's `PPOTrainer` (the classic PPO that LLaMA-Factory still runs),
installed by this script into a throwaway virtual environment (`--venv`, default
$TMPDIR/cai-kit-trl011-venv; it reuses the system torch and needs PyPI once). Both trainers
compute old log-probs and values in one pass, the reference with adapters off, and update
on the same mini-batches; TRL 0.11 keeps LoRA unmerged while sampling, ours merges it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE_PINS = ["trl==0.11.4", "transformers==4.46.3", "peft==0.13.2", "accelerate==1.0.1",
                  "tokenizers>=0.20,<0.21", "huggingface-hub<1.0"]  # fmt: skip
SETTINGS = {
    "mini_batch": 4,  # set to batch // 2 by --batch
    "ppo_epochs": 2,
    "lr": 1.4e-5,
    "init_kl_coef": 0.05,
    "target_kl": 6.0,
}


def toy_reward(n_tokens: int, new_tokens: int) -> float:
    return min(n_tokens / new_tokens, 1.0)


def queries_for(batch: int) -> tuple[str, list[list[int]]]:
    from cai_kit.train.common import load_tokenizer, resolve_model

    path = resolve_model("local")
    tok = load_tokenizer(path)
    out = []
    for i in range(batch):
        text = tok.apply_chat_template([{"role": "user", "content": f"Give me advice about topic {i}."}],
                                       tokenize=False, add_generation_prompt=True)  # fmt: skip
        out.append(tok(text, add_special_tokens=False)["input_ids"])
    return path, out


def run_ours(path: str, queries: list[list[int]], steps: int, new_tokens: int) -> dict[str, float]:
    import torch

    from cai_kit.train.common import load_model, load_tokenizer, lora_config
    from cai_kit.train.ppo_trainer import PPOConfig, PPOTrainer

    cfg = PPOConfig(batch_size=len(queries), mini_batch_size=SETTINGS["mini_batch"], ppo_epochs=SETTINGS["ppo_epochs"],
                    learning_rate=SETTINGS["lr"], init_kl_coef=SETTINGS["init_kl_coef"], target_kl=SETTINGS["target_kl"],
                    max_new_tokens=new_tokens)  # fmt: skip
    trainer = PPOTrainer(cfg, load_model(path), load_tokenizer(path), peft_config=lora_config())
    q = [torch.tensor(x) for x in queries]
    t = {"generate": 0.0, "reward": 0.0, "forward": 0.0, "update": 0.0, "tokens": 0.0}
    for _ in range(steps):
        s = time.perf_counter()
        responses = trainer.generate(q)
        t["generate"] += time.perf_counter() - s
        s = time.perf_counter()
        rewards = [toy_reward(len(r), new_tokens) for r in responses]
        t["reward"] += time.perf_counter() - s
        stats = trainer.step(q, responses, rewards)
        t["forward"] += stats["time_forward"]
        t["update"] += stats["time_update"]
        t["tokens"] += sum(len(r) for r in responses)
    return t


def run_reference(
    path: str, queries: list[list[int]], steps: int, new_tokens: int
) -> dict[str, float]:
    """TRL 0.11's PPOTrainer (run inside the throwaway venv)."""
    import torch
    from peft import LoraConfig
    from transformers import PreTrainedTokenizerFast
    from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

    tok = PreTrainedTokenizerFast(
        tokenizer_file=f"{path}/tokenizer.json"
    )  # this checkpoint's config is transformers 5's
    gen_cfg = json.loads(Path(f"{path}/generation_config.json").read_text())
    eos = gen_cfg["eos_token_id"]
    eos = eos[0] if isinstance(eos, list) else eos
    tok.eos_token = tok.convert_ids_to_tokens(eos)
    tok.pad_token = tok.eos_token
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    model = AutoModelForCausalLMWithValueHead.from_pretrained(path, peft_config=lora)
    config = PPOConfig(batch_size=len(queries), mini_batch_size=SETTINGS["mini_batch"], ppo_epochs=SETTINGS["ppo_epochs"],
                       learning_rate=SETTINGS["lr"], init_kl_coef=SETTINGS["init_kl_coef"], target=SETTINGS["target_kl"],
                       adap_kl_ctrl=True, seed=0)  # fmt: skip
    trainer = PPOTrainer(config=config, model=model, ref_model=None, tokenizer=tok)
    q = [torch.tensor(x) for x in queries]
    gen = {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": 1.0, "max_new_tokens": new_tokens,
           "min_length": -1, "pad_token_id": tok.pad_token_id, "eos_token_id": eos}  # fmt: skip
    t = {"generate": 0.0, "reward": 0.0, "forward": 0.0, "update": 0.0, "tokens": 0.0}
    for _ in range(steps):
        s = time.perf_counter()
        responses = trainer.generate(q, return_prompt=False, batch_size=len(q), **gen)
        t["generate"] += time.perf_counter() - s
        s = time.perf_counter()
        rewards = [torch.tensor(toy_reward(len(r), new_tokens)) for r in responses]
        t["reward"] += time.perf_counter() - s
        stats = trainer.step(q, responses, rewards)
        t["forward"] += (
            stats["time/ppo/forward_pass"]
            + stats["time/ppo/compute_rewards"]
            + stats["time/ppo/compute_advantages"]
        )
        t["update"] += stats["time/ppo/optimize_step"] + stats.get("time/ppo/calc_stats", 0.0)
        t["tokens"] += sum(len(r) for r in responses)
    return t


def reference_python(venv: Path) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run(
            [sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True
        )
        subprocess.run([str(py), "-m", "pip", "install", "-q", *REFERENCE_PINS], check=True)
    return py


def report(name: str, t: dict[str, float], rollouts: int, steps: int) -> dict[str, float]:
    total = sum(v for k, v in t.items() if k != "tokens")
    print(f"{name:<22} {rollouts / total:6.3f} rollouts/s  {steps / total:6.4f} updates/s  "
          f"{t['tokens'] / t['generate']:6.1f} tokens/s sampled ({t['tokens'] / rollouts:.1f}/rollout)")  # fmt: skip
    for k in ("generate", "reward", "forward", "update"):
        print(f"    {k:<9} {t[k]:8.2f} s  {100 * t[k] / total:5.1f}%")
    return {"rollouts_per_s": rollouts / total, "s_per_rollout": total / rollouts}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--no-reference", action="store_true", help="Only our PPO.")
    ap.add_argument(
        "--venv", type=Path, default=Path(tempfile.gettempdir()) / "cai-kit-trl011-venv"
    )
    ap.add_argument("--side", choices=["ours", "reference"], help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:  # a worker: read the job, print the timings
        job = json.loads(Path(args.job).read_text())
        SETTINGS["mini_batch"] = max(1, len(job["queries"]) // 2)
        fn = run_ours if args.side == "ours" else run_reference
        print(json.dumps(fn(job["path"], job["queries"], args.steps, args.new_tokens)))
        return
    SETTINGS["mini_batch"] = max(1, args.batch // 2)
    path, queries = queries_for(args.batch)
    job = Path(tempfile.mkdtemp(prefix="cai-ppo-bench-")) / "job.json"
    job.write_text(json.dumps({"path": path, "queries": queries}))
    sides = [("ours", sys.executable)]
    if not args.no_reference:
        sides.append(("reference", str(reference_python(args.venv))))
    results = {}
    for side, python in sides:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        cmd = [
            python,
            __file__,
            "--side",
            side,
            "--job",
            str(job),
            "--steps",
            str(args.steps),
            "--new-tokens",
            str(args.new_tokens),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)  # fmt: skip
        if out.returncode != 0:
            sys.exit(f"{side} failed:\n{out.stderr[-3000:]}")
        results[side] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"PPO with LoRA on SmolLM2-135M, CPU: batch {args.batch}, up to {args.new_tokens} new tokens, "
          f"{args.steps} steps, mini-batch {SETTINGS['mini_batch']}, {SETTINGS['ppo_epochs']} PPO epochs")  # fmt: skip
    figures = {}
    names = {"ours": "ours (cai_kit)", "reference": "TRL 0.11.4 PPOTrainer"}
    for side, t in results.items():
        figures[side] = report(names[side], t, args.batch * args.steps, args.steps)
    if "reference" in figures:
        ratio = figures["ours"]["s_per_rollout"] / figures["reference"]["s_per_rollout"]
        print(f"time per rollout, ours / reference: {ratio:.2f}x (goal: <= 1)")


if __name__ == "__main__":
    main()
