"""Local training on TRL + PEFT; torch, transformers, trl and peft are imported here only,
and only inside the functions that use them.

- `run.py`           one runner for every TRL trainer (SFT, reward, DPO and its losses, KTO, ORPO)
- `ppo_trainer.py`           our own PPO (TRL 1.x has none), LoRA, multi-process under torchrun
- `spin.py`          SPIN: own generations as rejected, SFT targets as chosen, iterated
- `online.py`        online RLAIF on TRL's GRPO, the judge or a reward model as the reward
- `rewards.py`       reward sources: a trained reward model, or the AI judge through the engine
- `rubric_reward.py` the rubric reward (its rubric handed in by the CLI), Python rewards, blends
- `reward_score.py`  a trained reward model's accuracy on held-out pairs
- `logprobs.py`      sequence log-probs of chosen/rejected (for `eval.implicit_reward`)
- `common.py`, `data.py`, `report.py`  model loading and LoRA, training data, cards and curves

May import `judges`, `engine`, `llm` and the ground; never `stages`, `eval`, `serve`, `pipeline` or
`cli`. Imported by `cli` (and `eval.implicit_reward`, for model log-probs).
"""
