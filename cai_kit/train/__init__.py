"""Local training on TRL + PEFT; torch, transformers, trl and peft are imported here only,
and only inside the functions that use them.

The calls a notebook makes (loaded on first use; `import cai_kit.train` stays light):
`train.sft|dpo|kto|orpo|reward|spin(data, out, ...)` (`trl_api.py`, options and defaults from
`TrainOptions`), `train.ppo(...)`, `train.online_dpo(...)`, `train.grpo(...)` (`api.py`), each
returning `TrainResult(path, history)`, and `train.build_reward(RewardConfig(...))` (`sources.py`,
which is also `cai_kit.rewards`: `rewards.rubric`, `judge`, `group`, `pairwise`, `python`,
`reward_model`, `blend`).

- `api.py`           the RL trainers from plain Python (the calls the CLI makes)
- `trl_api.py`       the TRL trainers (SFT, DPO, KTO, ORPO, reward) and SPIN from plain Python
- `sources.py`       reward sources from plain Python: RewardConfig, build_reward, rewards.*
- `run.py`           one runner for every TRL trainer (SFT, reward, DPO and its losses, KTO, ORPO)
- `ppo_trainer.py`   our own PPO (TRL 1.x has none), LoRA, multi-process under torchrun
- `online_dpo_trainer.py`  our own online DPO (OAIF): the pairwise judge or a pointwise reward
- `own_loop.py`      our loops run to the end: resume, stop, run files (log, config, curves)
- `self_play.py`     SPIN: own generations as rejected, SFT targets as chosen, iterated
- `online.py`        online RLAIF on TRL's GRPO, the judge or a reward model as the reward
- `rewards.py`       the RewardSource protocol; a trained reward model; the one-question judge
- `rubric_reward.py` the rubric reward, Python rewards, blends
- `group_reward.py`  the group judge as GRPO's reward
- `reward_score.py`  a trained reward model's accuracy on held-out pairs
- `logprobs.py`      sequence log-probs of chosen/rejected (for `eval.implicit_reward`)
- `common.py`, `data.py`, `report.py`  model loading and LoRA, training data, cards and curves

May import `judges`, `engine`, `llm` and the ground; never `stages`, `eval`, `serve`, `review`,
`web`, `pipeline` or `cli`. Imported by `cli` (and `eval.implicit_reward`, for model log-probs).
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it (loaded on first use)
_LAZY: dict[str, str] = {
    "ppo": "cai_kit.train.api",
    "online_dpo": "cai_kit.train.api",
    "grpo": "cai_kit.train.api",
    "TrainResult": "cai_kit.train.api",
    "sft": "cai_kit.train.trl_api",
    "dpo": "cai_kit.train.trl_api",
    "kto": "cai_kit.train.trl_api",
    "orpo": "cai_kit.train.trl_api",
    "reward": "cai_kit.train.trl_api",
    "spin": "cai_kit.train.trl_api",
    "TrainOptions": "cai_kit.train.run",
    "build_reward": "cai_kit.train.sources",
    "RewardConfig": "cai_kit.train.sources",
    "RewardSource": "cai_kit.train.rewards",
    "PPOConfig": "cai_kit.train.ppo_trainer",
    "OnlineDPOConfig": "cai_kit.train.online_dpo_trainer",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cai_kit.train' has no attribute {name!r}")
