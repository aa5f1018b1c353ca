"""Which models reason, which efforts they take, and which request fields they then refuse.

    >>> r = reasoning_rules("openai/gpt-5-mini")
    >>> (r.reasons, r.efforts, r.default_effort)
    (True, ('minimal', 'low', 'medium', 'high'), 'medium')
    >>> sorted(r.refuses("minimal"))
    ['logprobs', 'max_tokens', 'temperature', 'top_logprobs', 'top_p']
    >>> sorted(reasoning_rules("openai/gpt-5.1").refuses("none"))
    ['logprobs', 'max_tokens', 'top_logprobs']
    >>> reasoning_rules("openai/gpt-4o-mini").reasons
    False

Where the facts come from, first match wins:
  1. `CAI_KIT_REASONING_MODELS`: a model the toolkit cannot know (a name served at --api-base)
     described as one it knows, `NAME=KNOWN[;NAME=KNOWN...]`, e.g.
     `CAI_KIT_REASONING_MODELS="my-gpt=openai/gpt-5-mini"`; `NAME=none` says it does not reason.
  2. Our family table (`FAMILIES`) where litellm's map is silent or wrong, each row citing its
     source: gpt-5-pro takes only `high` (the map says it takes `minimal`); the o-series and the
     codex models take low-high (the map says nothing); a model that takes `none` defaults to it
     and accepts temperature/top_p there (gpt-5.1 and later).
  3. litellm's model map (`cost_map.py`, read without importing litellm): `supports_reasoning`,
     `supports_none_reasoning_effort`, `supports_minimal_reasoning_effort`,
     `supports_xhigh_reasoning_effort` (low/medium/high are every reasoning model's).
litellm's `get_supported_openai_params` is not used: it lists what litellm accepts, not what the
provider does.

OpenAI's facts (Chat Completions reference, `reasoning_effort`; reasoning guide): "gpt-5.1
defaults to none ... supported values for gpt-5.1 are none, low, medium, and high"; "All models
before gpt-5.1 default to medium reasoning effort, and do not support none"; "The gpt-5-pro model
defaults to (and only supports) high"; "xhigh is supported for all models after
gpt-5.1-codex-max". Reasoning models answer `max_tokens` with 400 `unsupported_parameter`
("Use 'max_completion_tokens' instead"), a temperature other than 1 with 400 `unsupported_value`
("Only the default (1) value is supported"), and log-probs (o-series) with 403 "You are not
allowed to request logprobs from this model". gpt-5.1 and later accept temperature and top_p only
at effort `none` (the GPT-5.x guide also lists logprobs there; we do not ask for them, which is
always safe: the judge then reads the letter).

A stage's output cap for a reasoning model is its answer plus `REASONING_ALLOWANCE[effort]`
(`output_cap`); the call timeout grows with `EFFORT_TIMEOUT_S`. Both are documented in
docs/backends.md and overridable (`--reasoning-tokens`, `--timeout`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol, TypeVar

from cai_kit.llm import cost_map

EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")  # OpenAI's set, least first
# A stage default, not a provider value: the least effort the model takes (judges, --keep-if and
# rubric scores answer a letter or a number). `fit_params` resolves it per model.
LOWEST = "lowest"
DESCRIBE_VAR = "CAI_KIT_REASONING_MODELS"

# Hidden reasoning tokens count against the output cap (OpenAI: max_completion_tokens bounds
# "visible output tokens and reasoning tokens"). A stage's cap is its answer plus this much, by
# effort; None is the provider's own default effort (medium at OpenAI). OpenAI's guide suggests
# reserving ~25,000 tokens when experimenting; the cap is also what --max-cost reserves and the
# preview prices, so these are lower, and `--reasoning-tokens N` sets another allowance.
REASONING_ALLOWANCE: dict[str | None, int] = {
    "none": 0,
    "minimal": 1024,
    "low": 4096,
    "medium": 8192,
    None: 8192,
    "high": 16384,
    "xhigh": 32768,
}
# The call timeout (seconds) by effort, where --timeout was not given (default 120 s): high
# effort can think for minutes.
EFFORT_TIMEOUT_S: dict[str | None, float] = {
    "none": 120.0,
    "minimal": 120.0,
    "low": 180.0,
    "medium": 300.0,
    None: 300.0,
    "high": 600.0,
    "xhigh": 900.0,
}

SAMPLING = frozenset({"temperature", "top_p"})
LOGPROBS = frozenset({"logprobs", "top_logprobs"})
# What OpenAI's reasoning models refuse (see the module docstring for the error bodies).
OPENAI_REASONING_REFUSES = frozenset({"max_tokens"}) | SAMPLING | LOGPROBS


@dataclass(frozen=True)
class ReasoningRules:
    """What one model takes. `refuses(effort)`: the request fields it answers with an error at
    that effort (None: its default effort); a backend leaves them out of the request."""

    model: str
    reasons: bool
    efforts: tuple[str, ...] = ()  # least first (EFFORTS order)
    default_effort: str | None = None  # None: unknown (the provider's own default)
    refused: frozenset[str] = frozenset()  # refused while it reasons
    sampling_at: frozenset[str] = frozenset()  # efforts at which temperature/top_p are taken
    source: str = ""  # where the facts came from (for docs and error messages)
    # hidden reasoning counts against the output cap (OpenAI: max_completion_tokens bounds
    # "visible output tokens and reasoning tokens"), so the cap gets room to think. Only where a
    # family row says so: elsewhere (DeepSeek's reasoner caps the answer after its reasoning,
    # and caps it lower) a larger cap could be refused.
    thinks_in_cap: bool = True

    def refuses(self, effort: str | None = None) -> frozenset[str]:
        if not self.reasons:
            return frozenset()
        effort = effort or self.default_effort
        if effort in self.sampling_at:
            return self.refused - SAMPLING
        return self.refused

    @property
    def lowest_effort(self) -> str | None:
        """The least thinking it takes (a judge answering one letter needs no more)."""
        return self.efforts[0] if self.efforts else None

    def effort_error(self, effort: str, flag: str = "--reasoning-effort") -> str | None:
        """One sentence when `effort` is not one this model takes, else None."""
        if effort not in EFFORTS:
            return f"{flag} takes one of {', '.join(EFFORTS)}; not {effort!r}."
        if not self.reasons:
            return f"{self.model} is not a reasoning model: drop {flag}."
        if self.efforts and effort not in self.efforts:
            return (
                f"{self.model} does not take {flag} {effort}; it takes "
                f"{', '.join(self.efforts)} ({self.source})."
            )
        return None

    def output_cap(
        self, answer_tokens: int, effort: str | None, allowance: int | None = None
    ) -> int:
        """The output cap to send: the answer the stage needs plus room to think."""
        effort = effort or self.default_effort
        if not self.reasons or not self.thinks_in_cap or effort == "none":  # none: no thinking
            return answer_tokens
        extra = REASONING_ALLOWANCE.get(effort, REASONING_ALLOWANCE[None])
        return answer_tokens + (extra if allowance is None else allowance)


@dataclass(frozen=True)
class Family:
    """One row of our own rules, for bare model names matching `pattern` (a dated snapshot,
    `-2025-08-07`, matches too)."""

    pattern: str
    efforts: tuple[str, ...] | None = None  # None: what litellm's map says
    default_effort: str | None = None
    refused: frozenset[str] = OPENAI_REASONING_REFUSES
    source: str = "OpenAI Chat Completions reference, reasoning_effort"
    reasons: bool = True
    thinks_in_cap: bool = True  # its reasoning counts against the output cap


_DATE = r"(-\d{4}-\d{2}-\d{2})?$"
FAMILIES: tuple[Family, ...] = (
    # "The gpt-5-pro model defaults to (and only supports) high" (litellm's map says minimal too)
    Family(r"gpt-5-pro" + _DATE, ("high",), "high"),
    # gpt-5-chat-latest takes no reasoning_effort (the same matrix); gpt-5.x-chat-latest: only
    # medium (OpenAI developer forum, reasoning-effort compatibility matrix, Dec 2025)
    Family(r"gpt-5-chat(-latest)?$", (), None, frozenset(), reasons=False,
           source="OpenAI developer forum, reasoning-effort compatibility matrix"),
    Family(r"gpt-5\.\d+-chat(-latest)?$", ("medium",), "medium",
           source="OpenAI developer forum, reasoning-effort compatibility matrix"),
    # codex models: low, medium, high; xhigh from gpt-5.1-codex-max on ("xhigh is supported for
    # all models after gpt-5.1-codex-max"); litellm's map is silent
    Family(r"gpt-5(\.1)?-codex(-mini)?" + _DATE, ("low", "medium", "high"), "medium"),
    Family(r"gpt-5\.\d+-codex(-max)?" + _DATE, ("low", "medium", "high", "xhigh"), "medium"),
    # gpt-5.1 and later take none and default to it; "gpt-5.1 ... none, low, medium, and high"
    # (no minimal; litellm's map agrees for gpt-5.1)
    Family(r"gpt-5\.1" + _DATE, ("none", "low", "medium", "high"), "none"),
    Family(r"gpt-5\.\d+(-mini|-nano)?" + _DATE, None, "none"),
    Family(r"gpt-5\.\d+-pro" + _DATE, None, "medium"),
    # "All models before gpt-5.1 default to medium ... and do not support none"
    Family(r"gpt-5(-mini|-nano)?" + _DATE, ("minimal", "low", "medium", "high"), "medium"),
    # o-series: low, medium, high (Chat Completions reference, before gpt-5); the map is silent
    Family(r"o[134](-mini|-pro)?" + _DATE, ("low", "medium", "high"), "medium"),
)  # fmt: skip


def _bare(model: str) -> str:
    return model.removeprefix("litellm:").rsplit("/", 1)[-1]


def _described(model: str) -> str | None:
    """What CAI_KIT_REASONING_MODELS says `model` is like ('none': not a reasoning model)."""
    spec = os.environ.get(DESCRIBE_VAR, "")
    for item in spec.split(";"):
        name, sep, like = item.partition("=")
        if sep and name.strip() in (model, _bare(model)) and like.strip():
            return like.strip()
    return None


def _from_map(model: str) -> tuple[bool | None, tuple[str, ...]]:
    found = cost_map.entry(model)
    if found is None or found.get("supports_reasoning") is None:
        return None, ()
    if not found["supports_reasoning"]:
        return False, ()
    takes = {"low", "medium", "high"}
    for effort in ("none", "minimal", "xhigh"):
        if found.get(f"supports_{effort}_reasoning_effort"):
            takes.add(effort)
    return True, tuple(e for e in EFFORTS if e in takes)


def _known_elsewhere(model: str) -> bool:
    """The map knows the model (it has a price) but says nothing of reasoning: not a reasoner."""
    found = cost_map.entry(model)
    return found is not None and found.get("input_cost_per_token") is not None


@lru_cache(maxsize=256)
def _rules(model: str, described: str | None) -> ReasoningRules | None:
    if described is not None:
        if described.lower() == "none":
            return ReasoningRules(model, False, source=f"{DESCRIBE_VAR}")
        like = _rules(described, None)
        if like is None:
            return None
        return ReasoningRules(model, like.reasons, like.efforts, like.default_effort,
                              like.refused, like.sampling_at,
                              f"{DESCRIBE_VAR}: like {described}", like.thinks_in_cap)  # fmt: skip
    bare = _bare(model)
    reasons, efforts = _from_map(model)
    for fam in FAMILIES:
        if re.match(fam.pattern, bare):
            takes = fam.efforts if fam.efforts is not None else efforts or ("low", "medium", "high")
            sampling = frozenset({"none"}) if "none" in takes else frozenset()
            source = fam.source if fam.efforts is not None else "litellm's model map"
            return ReasoningRules(model, fam.reasons, takes, fam.default_effort, fam.refused,
                                  sampling, source, fam.thinks_in_cap)  # fmt: skip
    if reasons is None:
        return (
            ReasoningRules(model, False, source="litellm's model map")
            if _known_elsewhere(model)
            else None
        )
    if not reasons:
        return ReasoningRules(model, False, source="litellm's model map")
    # A reasoning model of another family: its efforts from the map; the fields it refuses and
    # whether its reasoning counts against the cap are its family row's to say (add one to
    # FAMILIES; the litellm route maps effort to thinking budgets).
    return ReasoningRules(model, True, efforts, None, frozenset(), frozenset(),
                          "litellm's model map", thinks_in_cap=False)  # fmt: skip


def reasoning_rules(model: str) -> ReasoningRules | None:
    """The rules of a model string (`openai/gpt-5-mini`, `gpt-5-mini`, `litellm:...`,
    `openrouter/openai/o4-mini`, or a name described in CAI_KIT_REASONING_MODELS); None when
    nothing is known of it (a model behind --api-base that is not described)."""
    return _rules(model, _described(model))


class _Params(Protocol):
    reasoning_effort: str | None
    max_tokens: int

    def replace(self, **changes: Any) -> Any: ...


P = TypeVar("P", bound=_Params)


def fit_params(rules: ReasoningRules | None, params: P, allowance: int | None = None) -> P:
    """The parameters a call is really sent with (`Backend.fit`, applied by the engine and by
    the stages' cost estimates, once per call: it is not idempotent). For a reasoning model:
    the effort (the one asked for; LOWEST -> the least it takes; None -> its default) and an
    output cap of the answer plus the effort's allowance (`allowance`: --reasoning-tokens). For
    any other model the effort is dropped (a flag the model does not take is refused at start)."""
    effort = params.reasoning_effort
    if rules is None:  # nothing known (a name behind --api-base): sent as asked
        return params.replace(reasoning_effort=None) if effort == LOWEST else params
    if not rules.reasons:
        return params.replace(reasoning_effort=None) if effort is not None else params
    if effort == LOWEST:
        effort = rules.lowest_effort
    effort = effort or rules.default_effort
    cap = rules.output_cap(params.max_tokens, effort, allowance)
    return params.replace(reasoning_effort=effort, max_tokens=cap)


def effort_timeout(effort: str | None, given: float) -> float:
    """The call timeout for a reasoning call at `effort`: the default `given`, raised to the
    effort's EFFORT_TIMEOUT_S (a --timeout the user gave is used as it is, not through here)."""
    return max(given, EFFORT_TIMEOUT_S.get(effort, EFFORT_TIMEOUT_S[None]))
