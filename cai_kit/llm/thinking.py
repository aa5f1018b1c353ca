"""Reasoning effort -> each provider's own control, for the litellm route and Anthropic's
Message Batches lines. Pure functions of (model string, GenParams); nothing is sent here.

    req = reasoning_request("anthropic/claude-sonnet-4-5", GenParams(max_tokens=256,
                                                                     reasoning_effort="low"))
    req.fields     # {"thinking": {"type": "enabled", "budget_tokens": 1024}}
    req.max_tokens # 1280: the answer's 256 plus the thinking budget (thinking counts as output)
    req.drop       # {"temperature", "top_p"}: extended thinking takes neither

A model that does not take the effort asked for raises `ConfigError` (one sentence), also
from `check_reasoning_effort(model, effort)`, which a command can call before its first call.
`judge_effort(model)` is the effort a judge-like call gets (a model that thinks by default,
as Gemini does, thinks its least, so a 4-token verdict still has room for its letter).

Why cai-kit builds these fields instead of passing `reasoning_effort` to litellm: for
`anthropic/` litellm (1.109) maps an effort to a fixed budget but leaves our `max_tokens` below
it and our temperature in place, both of which Anthropic answers with a 400; for `gemini/` 2.5
it keeps `maxOutputTokens` at the answer's size, which thinking then uses up. Here the output
cap grows by the thinking allowance and the sampling fields thinking refuses are left out.

Per-model facts, litellm's model map first (`supports_reasoning`, `supports_adaptive_thinking`,
`thinking_always_on`, `supports_sampling_params`, `supports_xhigh/max_reasoning_effort`,
`supports_minimal_reasoning_effort`), our own table (below) second:

- Anthropic (platform.claude.com, "Building with extended thinking" and the Messages API
  reference): manual thinking is `thinking: {type: enabled, budget_tokens}` with budget_tokens
  >= 1,024 and below max_tokens; thinking tokens are output tokens, counted in max_tokens;
  with thinking, temperature may only be 1 and top_k must be unset, top_p 0.95..1 (so neither
  is sent). Opus/Sonnet 4.6 take adaptive thinking (`thinking: {type: adaptive}` plus
  `output_config: {effort: low|medium|high|max}`; budget_tokens still works there but is
  deprecated). Opus 4.7 and later accept only adaptive thinking, add `xhigh`, and refuse
  temperature/top_p/top_k outright ("`temperature` is deprecated for this model"). Claude 3.x
  before 3.7 Sonnet does not think.
- Gemini (ai.google.dev, "Gemini thinking"): thinking tokens count against maxOutputTokens;
  2.5 Pro takes a budget of 128..32,768 and cannot turn thinking off, 2.5 Flash 0..24,576,
  2.5 Flash-Lite 0 or 512..24,576; Gemini 3 takes `thinking_level` instead of a budget (Pro:
  low, high; Flash: minimal, low, medium, high) and cannot turn thinking off; sending both
  a level and a budget is a 400. litellm turns `thinking={type, budget_tokens}` into
  thinkingConfig.thinkingBudget for 2.5, and `reasoning_effort` into thinkingLevel for 3.
- OpenRouter (openrouter.ai/docs, "Reasoning tokens"): `reasoning: {effort}` with none,
  minimal, low, medium, high, xhigh, normalised by OpenRouter for the model behind it.
- Any other provider through litellm gets `reasoning_effort` as given (OpenAI's own
  per-model rules live with the fast client).

Budgets and allowances per effort are litellm's defaults (DEFAULT_REASONING_EFFORT_*_THINKING_
BUDGET), so a user coming from litellm sees the same numbers: low 1,024, medium 2,048, high
4,096, xhigh 8,192, max 16,384 (minimal: the model's smallest budget). For adaptive thinking and
Gemini 3 levels, which take no budget, the same number is added to the output cap as room to
think.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from cai_kit.errors import ConfigError
from cai_kit.llm import cost_map
from cai_kit.llm.base import GenParams

EFFORT_TOKENS = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096, "xhigh": 8192,
                 "max": 16384}  # fmt: skip
ANTHROPIC_MIN_BUDGET = 1024  # budget_tokens below this is a 400
_SAMPLING = frozenset({"temperature", "top_p"})


@dataclass(frozen=True)
class ReasoningRequest:
    """What a request needs for the effort asked: fields to set, fields to leave out, and the
    output cap to send (the answer's max_tokens plus any thinking allowance)."""

    max_tokens: int
    fields: dict[str, Any] = field(default_factory=dict)
    drop: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Capabilities:
    """One model's reasoning controls. `efforts`: the values it takes (none included where it
    can think less than by default or not at all); `budget`: (min, max) thinking budget, or None
    where it takes no budget; `levels`: it takes a level / effort name instead."""

    reasons: bool
    efforts: tuple[str, ...] = ("none",)
    budget: tuple[int, int] | None = None
    levels: bool = False
    sampling: bool = True  # False: temperature/top_p are refused whatever the effort


def split(model: str) -> tuple[str, str]:
    """("anthropic", "claude-sonnet-4-5") from "anthropic/claude-sonnet-4-5" (a litellm: prefix
    is ignored); ("", model) for a bare name."""
    prefix, sep, bare = model.removeprefix("litellm:").partition("/")
    return (prefix, bare) if sep else ("", prefix)


def capabilities(model: str) -> Capabilities | None:
    """The reasoning controls of `model` where cai-kit maps them (Anthropic, Gemini), else None
    (its effort is passed on unchanged)."""
    provider, bare = split(model)
    if provider == "anthropic":
        return _anthropic(bare)
    if provider in ("gemini", "vertex_ai") and bare.startswith("gemini-"):
        return _gemini(provider, bare)
    return None


def check_reasoning_effort(model: str, effort: str | None) -> None:
    """Raise ConfigError (one sentence) when `model` does not take this effort."""
    if effort is None:
        return
    caps = capabilities(model)
    provider, _ = split(model)
    if caps is None:
        if provider == "openrouter" and effort not in OPENROUTER_EFFORTS:
            raise ConfigError(_refusal(model, effort, OPENROUTER_EFFORTS))
        return
    if effort in caps.efforts:
        return
    if not caps.reasons:
        raise ConfigError(
            f"{model} does not reason: leave the reasoning effort unset (or none), not {effort!r}."
        )
    raise ConfigError(_refusal(model, effort, caps.efforts))


def judge_effort(model: str) -> str | None:
    """The effort of a judge-like call (`reasoning.LOWEST`: one letter or a number) on the
    litellm route: the least `model` takes where it thinks unless told not to, so thinking
    cannot spend the few tokens the answer has (Gemini 2.5 and 3 think by default: 2.5 Pro gets
    its smallest budget, 128, on top of the answer; 2.5 Flash thinking off; Gemini 3 its lowest
    level). None where nothing would be gained (Claude thinks only when asked; an unmapped model)."""
    caps = capabilities(model)
    if caps is None or not caps.reasons or split(model)[0] == "anthropic":
        return None
    return caps.efforts[0]


def _refusal(model: str, effort: str, efforts: tuple[str, ...]) -> str:
    taken = ", ".join(efforts[:-1]) + f" or {efforts[-1]}" if len(efforts) > 1 else efforts[0]
    return f"{model} takes the reasoning effort {taken}, not {effort!r}."


def reasoning_request(model: str, params: GenParams) -> ReasoningRequest:
    """The request fields for `params.reasoning_effort` on `model` (see the module docstring)."""
    effort = params.reasoning_effort
    check_reasoning_effort(model, effort)
    caps = capabilities(model)
    provider, _ = split(model)
    base = params.max_tokens
    if caps is None:
        if effort is None:
            return ReasoningRequest(base)
        if provider == "openrouter":
            return ReasoningRequest(base, {"reasoning": {"effort": effort}})
        return ReasoningRequest(base, {"reasoning_effort": effort})
    drop = frozenset() if caps.sampling else _SAMPLING
    if effort is None or not caps.reasons:
        return ReasoningRequest(base, {}, drop)
    if provider == "anthropic":
        return _anthropic_request(caps, effort, base, drop)
    return _gemini_request(caps, effort, base, drop)


def _anthropic_request(
    caps: Capabilities, effort: str, base: int, drop: frozenset[str]
) -> ReasoningRequest:
    if effort == "none":  # no thinking field: Claude does not think unless asked
        return ReasoningRequest(base, {}, drop)
    if caps.levels:  # adaptive thinking: the model decides how much, within max_tokens
        fields = {"thinking": {"type": "adaptive"}, "output_config": {"effort": effort}}
        return ReasoningRequest(base + EFFORT_TOKENS[effort], fields, drop | _SAMPLING)
    budget = max(ANTHROPIC_MIN_BUDGET, EFFORT_TOKENS[effort])
    fields = {"thinking": {"type": "enabled", "budget_tokens": budget}}
    return ReasoningRequest(base + budget, fields, drop | _SAMPLING)  # budget < max_tokens


def _gemini_request(
    caps: Capabilities, effort: str, base: int, drop: frozenset[str]
) -> ReasoningRequest:
    if caps.levels:  # Gemini 3: litellm sends reasoning_effort as thinkingConfig.thinkingLevel
        return ReasoningRequest(base + EFFORT_TOKENS[effort], {"reasoning_effort": effort}, drop)
    assert caps.budget is not None
    low, high = caps.budget
    if effort == "none":
        return ReasoningRequest(base, {"thinking": {"type": "disabled", "budget_tokens": 0}}, drop)
    budget = low if effort == "minimal" else min(max(EFFORT_TOKENS[effort], low), high)
    fields = {"thinking": {"type": "enabled", "budget_tokens": budget}}
    return ReasoningRequest(base + budget, fields, drop)  # thinking counts in maxOutputTokens


OPENROUTER_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
_BUDGET_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")

# Our own table, where litellm's model map is silent: (bare-name pattern, capabilities); the
# first match wins. Sources: the module docstring.
_ANTHROPIC_TABLE: tuple[tuple[str, Capabilities], ...] = (
    (r"^claude-3-7-sonnet", Capabilities(True, _BUDGET_EFFORTS, (1024, 64000))),
    (r"^claude-(3|2|instant)", Capabilities(False)),
    (r"^claude-(opus|sonnet)-4-6", Capabilities(True, ("none", "low", "medium", "high", "max"),
                                                levels=True)),
    (r"^claude-(opus-4-([7-9]|\d\d)|[a-z]+-([5-9]|\d\d))",
     Capabilities(True, ("none", "low", "medium", "high", "xhigh", "max"), levels=True,
                  sampling=False)),
    (r"^claude-(opus|sonnet|haiku)-4", Capabilities(True, _BUDGET_EFFORTS, (1024, 64000))),
)  # fmt: skip
_GEMINI_TABLE: tuple[tuple[str, tuple[int, int], bool], ...] = (
    # (pattern, budget range, can be turned off)
    (r"^gemini-2\.5-pro", (128, 32768), False),
    (r"^gemini-2\.5-flash-lite", (512, 24576), True),
    (r"^gemini-2\.5-flash", (1, 24576), True),
)


def _litellm_info(provider: str, bare: str) -> dict[str, Any]:
    """litellm's model-map entry for the model ({} when litellm or the entry is missing), read
    as the prices and OpenAI's rules read it (`cost_map`): without importing litellm, which
    takes seconds and prints its provider list for a model it does not know."""
    return dict(cost_map.entry(f"{provider}/{bare}") or {})


@lru_cache(maxsize=256)
def _anthropic(bare: str) -> Capabilities:
    info = _litellm_info("anthropic", bare)
    if info.get("supports_reasoning") is False:
        return Capabilities(False)
    if info.get("supports_adaptive_thinking"):
        efforts = ["low", "medium", "high"]
        efforts += ["xhigh"] if info.get("supports_xhigh_reasoning_effort") else []
        efforts += ["max"] if info.get("supports_max_reasoning_effort") else []
        none = [] if info.get("thinking_always_on") else ["none"]
        sampling = info.get("supports_sampling_params") is not False
        return Capabilities(True, tuple(none + efforts), levels=True, sampling=sampling)
    for pattern, caps in _ANTHROPIC_TABLE:
        if re.match(pattern, bare):
            return caps
    if info.get("supports_reasoning"):  # a thinking model the table does not know: manual
        return Capabilities(
            True, _BUDGET_EFFORTS, (1024, int(info.get("max_output_tokens") or 64000))
        )
    return Capabilities(False)


@lru_cache(maxsize=256)
def _gemini(provider: str, bare: str) -> Capabilities:
    info = _litellm_info(provider, bare)
    sampling = info.get("supports_sampling_params") is not False
    if info.get("supports_reasoning") is False:
        return Capabilities(False, sampling=sampling)
    for pattern, budget, can_stop in _GEMINI_TABLE:
        if re.match(pattern, bare):
            efforts = _BUDGET_EFFORTS if can_stop else _BUDGET_EFFORTS[1:]
            return Capabilities(True, efforts, budget, sampling=sampling)
    if re.match(r"^gemini-([3-9]|\d\d)", bare):
        if "-pro" in bare:
            return Capabilities(True, ("low", "high"), levels=True, sampling=sampling)
        minimal = [] if info.get("supports_minimal_reasoning_effort") is False else ["minimal"]
        levels = (*minimal, "low", "medium", "high")
        return Capabilities(True, levels, levels=True, sampling=sampling)
    return Capabilities(False, sampling=sampling)
