"""Benchmark: PPO rollouts/s and optimisation steps/s on the embedded model, and where time goes.

    python bench/train_ppo.py [--steps 3] [--batch 8] [--new-tokens 32]

Our PPOTrainer with LoRA on SmolLM2-135M (CPU here), a cheap computable reward (so scoring
time is the reward function's own cost; swap in a reward model or judge to measure those),
timing generation, scoring and the PPO update separately.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()
    from cai_kit.train.common import load_model, load_tokenizer, lora_config, resolve_model
    from cai_kit.train.ppo import PPOConfig, PPOTrainer

    path = resolve_model("local")
    tok = load_tokenizer(path)
    cfg = PPOConfig(
        batch_size=args.batch,
        mini_batch_size=max(1, args.batch // 2),
        ppo_epochs=2,
        max_new_tokens=args.new_tokens,
    )
    trainer = PPOTrainer(cfg, load_model(path), tok, peft_config=lora_config())
    prompts = [f"Give me advice about topic {i}." for i in range(args.batch)]
    queries = [trainer._encode(p) for p in prompts]
    t = {"generate": 0.0, "score": 0.0, "optimise": 0.0}
    for _ in range(args.steps):
        s = time.perf_counter()
        responses = trainer.generate(queries)
        t["generate"] += time.perf_counter() - s
        s = time.perf_counter()
        texts = tok.batch_decode(responses, skip_special_tokens=True)
        rewards = [min(len(x) / 200, 1.0) for x in texts]
        t["score"] += time.perf_counter() - s
        s = time.perf_counter()
        trainer.step(queries, responses, rewards)
        t["optimise"] += time.perf_counter() - s
    total = sum(t.values())
    print(
        f"PPO (LoRA) on SmolLM2-135M, CPU: batch {args.batch}, {args.new_tokens} new tokens, {args.steps} steps, 2 PPO epochs"
    )
    print(
        f"rollouts/s: {args.batch * args.steps / total:.2f}   optimisation steps/s: {args.steps / total:.3f}"
    )
    for k, v in t.items():
        print(f"  {k:<9} {v:7.2f} s  {100 * v / total:5.1f}%")


if __name__ == "__main__":
    main()
