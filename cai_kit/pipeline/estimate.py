"""What a recipe will cost before it runs: `cai-kit pipeline RECIPE --dry-run`.

    rows = estimate(recipe, split_prompts(recipe)); print(format_estimates(rows))

For every stage and every model it calls: the number of calls, input and output tokens and the
cost, synchronous and as a provider Batch job (`cai_kit.engine.pricing`: `--price`-style `price:` in the
teacher section, litellm's cost map, free for local models). Input tokens are counted (about 4
characters a token) on the real prompts inside the real templates (revise's critique/revision
turns with the constitution's few-shot examples, the judge's prompt); every answer is assumed to
use its whole `max_tokens`, so token and cost figures are upper bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from cai_kit.engine.cost_preview import prompt_tokens
from cai_kit.engine.cost_preview import stand_in as _filler
from cai_kit.engine.pricing import Price, parse_price, price_for

if TYPE_CHECKING:
    from cai_kit.pipeline.recipe import Recipe
    from cai_kit.pipeline.split import Split
    from cai_kit.records import PromptRecord

Msgs = list[dict[str, str]]


@dataclass
class StageEstimate:
    stage: str
    role: str
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    price: Price | None  # None: unknown (not in litellm's cost map and no `price:` given)
    note: str = ""

    def cost(self, batch: bool = False) -> float | None:
        if self.price is None:
            return None
        return self.price.cost(self.input_tokens, self.output_tokens, batch=batch)


def _price(r: Recipe, model: str, api_base: str | None) -> Price | None:
    from cai_kit.llm.registry import resolve

    explicit = None
    if r.teacher is not None and model == r.teacher.model and r.teacher.price:
        explicit = parse_price(r.teacher.price)
    try:
        kind = resolve(model, api_base).name
    except Exception:  # an unknown model string: the stage itself will say so
        kind = "unknown"
    return price_for(model, kind, explicit)


def _cap(r: Recipe, model: str, api_base: str | None, answer: int, *, judge: bool = False) -> int:
    """The output cap a call of `model` is sent with, as the stages send it: the engine fits the
    call (`fit_call`: the teacher's `reasoning_effort`, or for judge-like calls its
    `judge_reasoning_effort`, else the model's own default or least effort) and the backend adds
    its room to think (`Backend.output_cap`: OpenAI's allowance on the fast client, Anthropic's
    and Gemini's thinking budget on the litellm route). A local model sends the answer's cap."""
    t = r.teacher if r.teacher is not None and r.teacher.model == model else None
    efforts = (t.reasoning_effort, t.judge_reasoning_effort) if t else (None, None)
    return _sent_cap(model, api_base, answer, judge, *efforts)


@lru_cache(maxsize=1024)
def _sent_cap(model: str, api_base: str | None, answer: int, judge: bool, effort: str | None,
              judge_effort: str | None) -> int:  # fmt: skip
    """`_cap`, once per distinct call shape (an estimate asks it for every call it counts)."""
    from cai_kit.engine.core import EngineConfig, fit_call
    from cai_kit.llm.base import GenParams
    from cai_kit.llm.reasoning import LOWEST
    from cai_kit.llm.registry import get_backend, resolve

    try:
        if resolve(model, api_base).name in ("local", "hf"):
            return answer
        backend = get_backend(model, api_base=api_base, require_key=False)  # nothing is sent
    except Exception:  # an unknown model string: the stage itself will say so
        return answer
    config = EngineConfig(reasoning_effort=effort, judge_reasoning_effort=judge_effort)
    params = GenParams(max_tokens=answer, reasoning_effort=LOWEST if judge else None)
    return backend.output_cap(fit_call(config, backend, params))


def _revise(r: Recipe, stage: str, prompts: list[PromptRecord]) -> list[StageEstimate]:
    from cai_kit.constitution import load_constitution
    from cai_kit.stages.revise import CRITIQUE_PREFIX, REVISION_PREFIX, few_shot_turns

    const = load_constitution(r.constitution)
    m = r.revise.max_tokens
    rounds = len(const.principles) if r.revise.principles == "all" else r.revise.rounds
    avg_crit = sum(len(p.critique) for p in const.principles) // len(const.principles)
    avg_rev = sum(len(p.revision) for p in const.principles) // len(const.principles)
    shots = few_shot_turns(const.few_shot, const.principles[0])
    resp_calls = resp_in = crit_calls = crit_in = 0
    for p in prompts:
        base = [mm.model_dump() for mm in p.messages]
        if p.response is None:
            resp_calls += 1
            resp_in += prompt_tokens(base)
        convo = [*shots, *base, {"role": "assistant", "content": _filler(m)}]
        for _ in range(rounds):
            convo += [{"role": "user", "content": CRITIQUE_PREFIX + "x" * avg_crit}]
            crit_in += prompt_tokens(convo)
            convo += [{"role": "assistant", "content": _filler(m)},
                      {"role": "user", "content": REVISION_PREFIX + "x" * avg_rev}]  # fmt: skip
            crit_in += prompt_tokens(convo)
            convo += [{"role": "assistant", "content": _filler(m)}]
            crit_calls += 2
    resp, resp_base = r.served_by("responses")
    critic, critic_base = r.served_by("critiques")
    return [
        StageEstimate(stage, "responses", resp, resp_calls, resp_in, resp_calls * _cap(r, resp, resp_base, m),
                      _price(r, resp, resp_base)),
        StageEstimate(stage, "critiques+revisions", critic, crit_calls, crit_in, crit_calls * _cap(r, critic, critic_base, m),
                      _price(r, critic, critic_base), f"{rounds} round(s)"),
    ]  # fmt: skip


def _judge_calls(r: Recipe, stage: str, role: str, prompts: list[PromptRecord], pairs_per_prompt: int,
                 answer_tokens: int, mode: str) -> StageEstimate:  # fmt: skip
    from cai_kit.constitution import load_constitution
    from cai_kit.judges.pairwise import JudgeConfig, judge_calls

    const = load_constitution(r.constitution)
    cfg = JudgeConfig(mode=mode)  # type: ignore[arg-type]  # the stage runs with the defaults
    model, base = r.served_by(role)  # type: ignore[arg-type]
    calls = in_tok = out_tok = 0
    for p in prompts:
        answer = _filler(answer_tokens)
        pair = judge_calls(
            [mm.model_dump() for mm in p.messages], answer, answer, const, cfg, model
        )
        calls += pairs_per_prompt * len(pair)
        in_tok += pairs_per_prompt * sum(c[1] for c in pair)
        out_tok += pairs_per_prompt * sum(_cap(r, model, base, c[2], judge=True) for c in pair)
    votes = f", {cfg.samples} votes each" if mode == "votes" else ""
    return StageEstimate(stage, "judge", model, calls, in_tok, out_tok, _price(r, model, base), f"both orders{votes}")  # fmt: skip


def _local(stage: str, role: str, model: str, calls: int, in_tok: int, out_tok: int, note: str = "") -> StageEstimate:  # fmt: skip
    from cai_kit.engine.pricing import FREE

    return StageEstimate(stage, role, model, calls, in_tok, out_tok, FREE, note)


def _expand(r: Recipe) -> list[StageEstimate]:
    """expand's first round (later rounds only if duplicates or keep-if leave fewer than n),
    on the real seed prompts in the real template; keep-if: every new prompt asked once."""
    import math

    from cai_kit.prompts import load_prompts
    from cai_kit.stages.expand import CallPlan, ExpandConfig, keep_messages

    e = r.expand
    assert e is not None
    cfg = ExpandConfig(n=e.n, per_call=e.per_call, shots=e.shots, oversample=e.oversample,
                       topic_column=e.topic_column, keep_if=e.keep_if, seed=r.seed)  # fmt: skip
    plan = CallPlan(load_prompts(r.prompts).records, cfg)
    calls = math.ceil(e.n * e.oversample / e.per_call)
    in_tok = sum(prompt_tokens(plan.messages(i)) for i in range(calls))
    model, base = r.step_model(e)
    price = _price(r, model, base)
    rows = [StageEstimate("expand", "new prompts", model, calls, in_tok, calls * _cap(r, model, base, e.max_tokens), price,
                          f"first of up to {e.max_rounds} round(s)")]  # fmt: skip
    if e.keep_if:
        # every prompt written, at most (as `prompts expand --dry-run` counts them)
        texts = [f"prompt {i}.{k} " + "word " * 20 for i in range(calls) for k in range(e.per_call)]
        asks, one = len(texts), sum(prompt_tokens(keep_messages(t, e.keep_if)) for t in texts)
        rows.append(StageEstimate("expand", "keep-if", model, asks, one, asks * _cap(r, model, base, cfg.keep_params.max_tokens, judge=True), price))  # fmt: skip
    return rows


def _infer(r: Recipe, train: list[PromptRecord]) -> list[StageEstimate]:
    """infer on the preference pairs (one per training prompt from revisions; the judge's pairs
    per prompt otherwise): proposals on one part, every candidate judging the held-out part
    in both orders; principles not proposed yet are counted at `max_candidates`."""
    from cai_kit.constitution import Constitution
    from cai_kit.judges.pairwise import JudgeConfig, judge_calls
    from cai_kit.stages.infer import (
        PRINCIPLE_TOKENS,
        LabelledPair,
        principle_from_text,
        propose_messages,
    )

    i = r.infer
    assert i is not None
    if r.preferences == "judge":
        k, pairs = r.prefs.k, r.prefs.pairs
        per = (
            1
            if pairs == "best-worst"
            else k * (k - 1) // 2
            if pairs == "all"
            else int(pairs.split(":")[1])
        )
        answer = r.prefs.max_tokens
    else:
        per, answer = 1, r.revise.max_tokens
    n = len(train) * per
    n_test = min(n - 1, max(1, round(n * i.holdout)))
    propose, test = min(n - n_test, i.propose_pairs), min(n_test, i.test_pairs)
    model, base = r.step_model(i)
    price = _price(r, model, base)
    msgs = [[mm.model_dump() for mm in p.messages] for p in train] or [
        [{"role": "user", "content": ""}]
    ]
    a = _filler(answer)
    in_tok = sum(prompt_tokens(propose_messages(LabelledPair("x", msgs[j % len(msgs)], a, a), i.per_pair))
                 for j in range(propose))  # fmt: skip
    const = Constitution(name="candidate", principles=[principle_from_text("c", _filler(PRINCIPLE_TOKENS))])  # fmt: skip
    cfg = JudgeConfig(mode=i.mode)
    t_calls = t_in = t_out = 0
    for j in range(test):
        for _, tin, tout, *_ in judge_calls(msgs[j % len(msgs)], a, a, const, cfg, model):
            t_calls, t_in, t_out = (
                t_calls + 1,
                t_in + tin,
                t_out + _cap(r, model, base, tout, judge=True),
            )
    c = i.max_candidates
    return [
        StageEstimate("infer", "propose", model, propose, in_tok, propose * _cap(r, model, base, i.max_tokens), price,
                      f"{n} pairs at most, {test} held out"),
        StageEstimate("infer", "test", model, c * t_calls, c * t_in, c * t_out, price,
                      f"{c} candidates at most, both orders"),
    ]  # fmt: skip


def estimate(r: Recipe, split: Split) -> list[StageEstimate]:
    """One row per (stage, model) with its calls, tokens and price; training rows have no calls."""
    _sent_cap.cache_clear()  # per estimate: a model's rules may come from the environment
    train, held = split.train, split.eval
    rows = _expand(r) if r.expand is not None else []
    rows += _revise(r, "revise", train)
    rows.append(
        _local("train-sft", "training", r.student.model, 0, 0, 0, f"{r.sft.max_steps} steps")
    )
    if r.preferences == "judge":
        k, pairs = r.prefs.k, r.prefs.pairs
        n_pairs = k * (k - 1) // 2 if pairs in ("all", "best-worst") else int(pairs.split(":")[1])
        in_tok = sum(prompt_tokens([mm.model_dump() for mm in p.messages]) for p in train) * k
        rows.append(_local("prefs", "samples", "hf:sft_model", len(train) * k, in_tok, len(train) * k * r.prefs.max_tokens))  # fmt: skip
        rows.append(_judge_calls(r, "prefs", "judging", train, n_pairs, r.prefs.max_tokens, r.prefs.mode))  # fmt: skip
    if r.infer is not None:
        rows += _infer(r, train)
    rows.append(
        _local("train-dpo", "training", "hf:sft_model", 0, 0, 0, f"{r.dpo.max_steps} steps")
    )
    in_tok = sum(prompt_tokens([mm.model_dump() for mm in p.messages]) for p in held)
    rows.append(_local("eval", "answers", f"hf:dpo_model + {r.student.model}", 2 * len(held), 2 * in_tok,
                       2 * len(held) * r.eval.max_tokens, "model and baseline"))  # fmt: skip
    rows.append(_judge_calls(r, "eval", "eval_judging", held, 1, r.eval.max_tokens, r.eval.mode))
    if r.eval.implicit_reward:
        rows += _revise(r, "revise-heldout", held)
        rows.append(_local("implicit-reward", "log-probs", "base, SFT, DPO", 0, 0, 0, "local forward passes"))  # fmt: skip
    return rows


def _money(x: float | None) -> str:
    return "unknown" if x is None else f"${x:,.4f}"


def format_estimates(rows: list[StageEstimate]) -> str:
    """A plain-text table and a total line (synchronous and Batch API)."""
    head = ("stage", "role", "model", "calls", "in tokens", "out tokens", "cost", "batch cost", "")
    table = [head] + [
        (e.stage, e.role, e.model, f"{e.calls:,}", f"{e.input_tokens:,}", f"{e.output_tokens:,}",
         _money(e.cost()), _money(e.cost(batch=True)), e.note)
        for e in rows
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    right = {3, 4, 5, 6, 7}
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in table]  # fmt: skip
    calls = sum(e.calls for e in rows)
    tokens = sum(e.input_tokens + e.output_tokens for e in rows)
    unknown = sorted({e.model for e in rows if e.price is None and e.calls})
    sync = sum(e.cost() or 0.0 for e in rows)
    batch = sum(e.cost(batch=True) or 0.0 for e in rows)
    total = f"total: {calls:,} calls, {tokens:,} tokens (upper bound); cost {_money(sync)} synchronous, {_money(batch)} as Batch API jobs"  # fmt: skip
    if unknown:
        total += (f"; plus the unknown price of {', '.join(unknown)} (add `price: IN,OUT` in USD per "
                  "million tokens to the teacher section)")  # fmt: skip
    basis = ("An estimate, the worst case: prompts counted at about 4 characters a token in the "
             "real templates, every call using its full output cap (hidden reasoning included), "
             "no prompt cache discount.")  # fmt: skip
    return "\n".join([*lines, total, basis])
