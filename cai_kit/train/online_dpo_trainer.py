"""Online DPO with AI feedback (OAIF, Guo et al. 2024, arXiv 2402.04792), in one small loop.

    for each step:
        prompts          = a batch drawn from the prompt file
        a, b             = two samples per prompt from the *current* policy (temperature > 0)
        p_a              = judge(prompts, a, b)        # P(a better), both orders; None: failed
        decisive         = pairs with |p_a - 0.5| >= tie_margin (ties and failures are skipped)
        chosen, rejected = (a, b) if p_a > 0.5 else (b, a)
        loss             = -logsigmoid(beta * ((logp_c - ref_c) - (logp_r - ref_r)))   # DPO, sigmoid
        one optimiser step on the mean loss over the decisive pairs

The reference is the starting model (under LoRA: the same weights with the adapters off).
Instead of a pairwise judge, `PointwisePairs` turns a per-response reward (a constitution's
rubric, a Python `--reward-fn`, or both: `rubric_reward`) into verdicts: the two samples are
scored alone and the higher score is chosen (`p_a` 1 or 0; 0.5, a tie, when the scores differ
by less than `tie_margin`); a response that could not be scored makes its pair failed.
The judge is a `PairSource`: a callable `(prompts, responses_a, responses_b) ->
list[float | None]` with `usage`, `last_metrics` and `close`. `PairJudge` asks the pairwise
judge (`judges.pairwise.judge_pair`, both orders) through one `JudgeClient` for the whole run
(cache, --max-cost, rpm/tpm carry across steps), like `rewards.JudgeReward`. When more than `max_judge_failures`
of a step's pairs failed, training stops with `JudgeFailed`; --max-cost reached raises
`BudgetExceeded`; either way the finished steps stay in `history` for the caller to save.

Generation, batching, the reference log-probs and prompt encoding are PPO's own
(`ppo_trainer.PPOTrainer`'s methods, borrowed as they are): the same temperature-consistent log-probs,
no dropout, LoRA merged while sampling.

Under `torchrun`/`accelerate launch`, as PPO: rank r samples from prompts[r::world] with seed + r
and judges its own pairs (each process may spend its share of --max-cost); a judge that raises
on one rank stops every rank at that step (`rewards.stop_together`), and the judge-failure
limit, like the decision to step at all, uses counts summed over ranks, so every rank decides
alike. When any rank has a decisive pair every rank steps (DDP all-reduces the gradients in
each backward): rank r's loss is the sum of its pair losses x world / all decisive pairs, so the
averaged gradient is that of the mean over all decisive pairs (a rank with none backpropagates
a pair times 0). Statistics are totals or means over ranks; only rank 0 logs and writes.
"""

from __future__ import annotations

import inspect
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from cai_kit.constitution import Constitution
from cai_kit.engine import Engine, EngineConfig
from cai_kit.errors import CaiKitError, ConfigError
from cai_kit.judges.client import JudgeClient, all_or_cancel
from cai_kit.judges.pairwise import JudgeConfig, judge_pair
from cai_kit.llm.base import Backend
from cai_kit.train.ppo_trainer import PPOTrainer, policy_and_reference, token_logprobs
from cai_kit.train.resume import ResumableLoop
from cai_kit.train.rewards import (
    JudgeFailed,
    RewardSource,
    as_reward_source,
    stop_together,
    sum_over_ranks,
)


@dataclass
class OnlineDPOConfig:
    learning_rate: float = 5e-6
    batch_size: int = 4  # prompts per step (two responses each)
    beta: float = 0.1
    tie_margin: float = 0.05  # |p_a - 0.5| below this is a tie (the judge's own default)
    max_judge_failures: float = 0.1  # share of a step's pairs
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    max_grad_norm: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(
                "--temperature must be above 0: the two responses of a prompt are two samples."
            )


@runtime_checkable
class PairSource(Protocol):
    """What online DPO calls each step: P(a better) per pair (None: failed), plus the judge's
    usage and per-step metrics; `close()` at the end of the run."""

    last_metrics: dict[str, float]

    def __call__(self, prompts: list[str], a: list[str], b: list[str]) -> list[float | None]: ...

    def usage(self) -> dict[str, float]: ...

    def close(self) -> None: ...


class PairJudge:
    """The pairwise judge (`judges.pairwise.judge_pair`: both orders, soft labels) over a step's
    pairs, through one `JudgeClient` for the run; `close()` at the end. Under N processes each
    one's engine may spend --max-cost / N (one cap for the run)."""

    def __init__(self, model: str, constitution: Constitution, config: JudgeConfig | None = None,
                 api_base: str | None = None, engine_config: EngineConfig | None = None) -> None:  # fmt: skip
        self.model, self.constitution = model, constitution
        self.config = config or JudgeConfig()
        self.client = JudgeClient(model, api_base, engine_config)
        self.last_metrics: dict[str, float] = {}

    async def _one(
        self, engine: Engine, backend: Backend, prompt: str, a: str, b: str
    ) -> float | None:
        conversation = [{"role": "user", "content": prompt}]
        v = await judge_pair(conversation, a, b, self.constitution, self.config, engine, backend)
        return None if v.label == "failed" else v.p_a

    def __call__(self, prompts: list[str], a: list[str], b: list[str]) -> list[float | None]:
        triples = list(zip(prompts, a, b, strict=True))

        async def judge_all(engine: Engine, backend: Backend | None) -> list[float | None]:
            assert backend is not None
            return await all_or_cancel(self._one(engine, backend, *t) for t in triples)

        return self.client.run(judge_all)

    def usage(self) -> dict[str, float]:
        """This process's judge calls (answered, paid) and their cost in USD so far."""
        return self.client.usage()

    def close(self) -> None:
        self.client.close()


@dataclass
class PointwisePairs:
    """A per-response reward (`rewards.RewardSource`) as a pair judge: both samples of each
    pair scored alone, the higher one chosen. Failed scorings (the reward's `last_failed_mask`)
    make their pair None; its `last_metrics` (e.g. `rubric/<id>`) and usage are logged per
    step like the judge's; `close()` closes it."""

    reward: RewardSource
    tie_margin: float = 0.05
    last_metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reward = as_reward_source(self.reward)

    def __call__(self, prompts: list[str], a: list[str], b: list[str]) -> list[float | None]:
        n = len(a)
        scores = self.reward(list(prompts) * 2, list(a) + list(b))
        mask = self.reward.last_failed_mask or [False] * (2 * n)
        self.last_metrics = dict(self.reward.last_metrics)
        verdicts: list[float | None] = []
        for i in range(n):
            if mask[i] or mask[n + i]:
                verdicts.append(None)
                continue
            d = scores[i] - scores[n + i]
            verdicts.append(0.5 if abs(d) < self.tie_margin else (1.0 if d > 0 else 0.0))
        return verdicts

    def usage(self) -> dict[str, float]:
        """The reward's judge calls and cost (a blend's: its parts'; none: zero)."""
        return self.reward.usage()

    def close(self) -> None:
        self.reward.close()


class FunctionPairs:
    """A plain `(prompts, a, b) -> list[float | None]` function as a pair judge (no calls)."""

    def __init__(self, fn: Callable[[list[str], list[str], list[str]], Any]) -> None:
        self.fn = fn
        self.last_metrics: dict[str, float] = {}

    def __call__(self, prompts: list[str], a: list[str], b: list[str]) -> list[float | None]:
        return list(self.fn(prompts, a, b))

    def usage(self) -> dict[str, float]:
        return {"judge_calls": 0.0, "judge_cost": 0.0}

    def close(self) -> None:
        pass


def as_pair_source(judge: Any, tie_margin: float = 0.05) -> PairSource:
    """A pair judge as it is; a per-response reward source as `PointwisePairs`; a plain
    function by its arguments: (prompts, a, b) a pair judge, (prompts, responses) a reward."""
    if isinstance(judge, RewardSource):
        return PointwisePairs(judge, tie_margin)
    if isinstance(judge, PairSource):
        return judge
    if len(inspect.signature(judge).parameters) == 3:
        return FunctionPairs(judge)
    return PointwisePairs(judge, tie_margin)


class OnlineDPOTrainer(ResumableLoop):
    # PPO's rollout machinery, as it is (they read only the attributes set in __init__ below)
    generate = PPOTrainer.generate
    _batch = PPOTrainer._batch
    reference_logprobs = PPOTrainer.reference_logprobs
    _encode = PPOTrainer._encode
    is_main_process = PPOTrainer.is_main_process

    def __init__(self, config: OnlineDPOConfig, model: nn.Module, tokenizer: Any,
                 peft_config: Any = None) -> None:  # fmt: skip
        from accelerate import Accelerator

        self.config, self.tokenizer = config, tokenizer
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        # each rank samples its own draws; the initial weights still agree, since DDP (in
        # accelerator.prepare) broadcasts rank 0's parameters, the LoRA adapters included
        torch.manual_seed(config.seed + self.accelerator.process_index)
        self.use_peft = peft_config is not None
        model, self.ref_model = policy_and_reference(model, peft_config)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
        self.policy, self.optimizer = self.accelerator.prepare(model, optimizer)
        if self.ref_model is not None:
            self.ref_model = self.ref_model.to(self.accelerator.device)
        self._init_resumable()  # history, draws, judge totals, Ctrl-C watch (train.resume)

    @property
    def _lm(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.policy)

    def _sums(self, ids: torch.Tensor, att: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B] summed log-probs of each response under the policy (with grad)."""
        logits = self.policy(input_ids=ids, attention_mask=att).logits
        return (token_logprobs(logits, ids, self.config.temperature) * mask).sum(1)

    def dpo_step(self, queries: list[torch.Tensor], chosen: list[torch.Tensor],
                 rejected: list[torch.Tensor], weight: float | None = None) -> dict[str, float]:  # fmt: skip
        """One optimiser step of the sigmoid DPO loss over (query, chosen, rejected) triples.

        The loss backpropagated is the sum of the pair losses times `weight` (default 1/n: their
        mean); the returned statistics are means over these pairs whatever the weight."""
        cfg, n = self.config, len(queries)
        ids, att, mask = self._batch(queries + queries, chosen + rejected)  # chosen rows first
        self.policy.train()
        with torch.no_grad():
            ref = (self.reference_logprobs(ids, att) * mask).sum(1)
        logp = self._sums(ids, att, mask)
        margin = (logp[:n] - ref[:n]) - (logp[n:] - ref[n:])  # implicit reward margin / beta
        losses = -F.logsigmoid(cfg.beta * margin)
        self.accelerator.backward(losses.sum() * (1.0 / n if weight is None else weight))
        self.accelerator.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return {"loss": losses.mean().item(), "reward_margin": (cfg.beta * margin).mean().item(),
                "reward_accuracy": (margin > 0).float().mean().item(),
                "response_length": mask.sum(1).mean().item()}  # fmt: skip

    def train(self, prompts: list[str], judge: PairSource | Callable[..., Any], steps: int,
              log: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:  # fmt: skip
        """Sample, judge, step; `history` keeps every finished step if a stop is raised.

        Under several processes rank r draws from prompts[r::world] with seed + r; every rank
        stops, skips or steps at the same step (see the module docstring); `log` runs on rank 0
        only, with decisive/ties/failed and judge_calls/judge_cost as totals over all ranks and
        loss, reward_margin, reward_accuracy, response_length as means over all decisive pairs."""
        acc, cfg = self.accelerator, self.config
        world, rank = acc.num_processes, acc.process_index
        judge = as_pair_source(judge, cfg.tie_margin)  # a plain function too
        if not prompts:
            raise ConfigError("No prompts to train on.")
        if len(prompts) < world:  # every rank refuses alike (none waits in a collective)
            raise ConfigError(f"{len(prompts)} prompt(s) for {world} processes: "
                              "give at least one prompt per process.")  # fmt: skip
        mine = prompts[rank::world]
        rng = random.Random(cfg.seed + rank)
        if self.draws is not None:  # resumed (train.resume): the finished steps are in history
            rng.setstate(self.draws)
        for step in range(len(self.history), steps):
            self.begin_step(rng)
            batch = [rng.choice(mine) for _ in range(cfg.batch_size)]
            queries = [self._encode(p) for p in batch]
            t0 = time.perf_counter()
            # each prompt twice in one batch: two independent draws from the current policy
            responses = self.generate([q for q in queries for _ in range(2)])
            a_ids, b_ids = responses[0::2], responses[1::2]
            texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
            t1 = time.perf_counter()
            stop: CaiKitError | None = None
            verdicts: list[float | None] = []
            try:
                verdicts = list(judge(batch, texts[0::2], texts[1::2]))  # --max-cost: raises
            except CaiKitError as exc:
                stop = exc
            stop_together(stop)  # any rank's reason to stop stops every rank here
            t2 = time.perf_counter()
            chosen, rejected, qs = [], [], []
            for q, a, b, p in zip(queries, a_ids, b_ids, verdicts, strict=True):
                if p is None or abs(p - 0.5) < cfg.tie_margin:
                    continue
                qs.append(q)
                chosen.append(a if p > 0.5 else b)
                rejected.append(b if p > 0.5 else a)
            usage = judge.usage()
            failed, total, decisive, calls, cost = sum_over_ranks(
                [sum(p is None for p in verdicts), len(verdicts), len(qs),
                 usage["judge_calls"], usage["judge_cost"]]
            )  # fmt: skip
            if failed > cfg.max_judge_failures * total:  # the same counts: every rank alike
                raise JudgeFailed(
                    f"{failed:.0f} of {total:.0f} pair verdicts failed in step {step + 1} (limit "
                    f"{cfg.max_judge_failures:.0%}): training stopped rather than learn from "
                    "missing preferences. Check --judge, or raise --max-judge-failures."
                )
            stats: dict[str, float] = {}
            if decisive:  # every rank steps (DDP), or none does
                if qs:
                    own = self.dpo_step(qs, chosen, rejected, weight=world / decisive)
                else:  # no decisive pair here: a zero-weight loss joins the gradient all-reduce
                    self.dpo_step(queries[:1], a_ids[:1], b_ids[:1], weight=0.0)
                    own = {}
                n = len(qs)
                keys = ("loss", "reward_margin", "reward_accuracy", "response_length")
                sums = sum_over_ranks([own.get(k, 0.0) * n for k in keys])
                stats = {k: v / decisive for k, v in zip(keys, sums, strict=True)}
            stats.update(decisive=decisive, ties=total - failed - decisive, failed=failed,
                         time_generate=t1 - t0, time_judge=t2 - t1)  # fmt: skip
            stats.update(self.judge_so_far({"judge_calls": calls, "judge_cost": cost}))  # all ranks
            stats.update(judge.last_metrics)  # rubric/<id>: this rank's
            self.history.append(stats)
            if log and acc.is_main_process:
                log(step, stats)
        self.mark = None
        return self.history

    def loop_state(self) -> dict[str, Any]:
        """Nothing is carried from step to step besides the weights and the draws."""
        return {}

    def load_loop_state(self, state: dict[str, Any]) -> None:
        pass

    def save(self, out: str) -> None:
        """The model (adapter under LoRA) and tokenizer; rank 0 alone writes."""
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return
        self._lm.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
