"""Hosted providers through litellm (openai/, anthropic/, gemini/, mistral/, ...).

litellm's own retries are off (the engine retries, one layer only), its verbose logging is
never enabled (it has leaked keys), and its price list is read from the installed package
rather than fetched at import (LITELLM_LOCAL_MODEL_COST_MAP=True). The per-sample `seed` is
sent to providers that take one; to the others (e.g. Anthropic, where litellm would refuse
the request) it is left out: they draw anew on every call, and the call cache, whose key
holds the sample index, keeps the k samples apart.
"""

from __future__ import annotations

import os
from typing import Any

from cai_kit.errors import ConfigError, FatalBackendError, RetryableError
from cai_kit.llm.base import Backend, ChatMessages, Completion, GenParams, TokenLogprob, Usage
from cai_kit.llm.prompt_cache import PrefixMarks, takes_cache_control
from cai_kit.llm.thinking import judge_effort, reasoning_request


def make_litellm_backend(model: str, api_base: str | None = None, **options: Any) -> Backend:
    from cai_kit.llm import providers

    name = model.removeprefix("litellm:")
    provider = providers.lookup(name)
    needs_key = provider is not None and api_base is None and provider.key()[1] is None
    if needs_key and options.pop("require_key", True):  # (a --dry-run calls nothing)
        raise ConfigError(
            f"Set {provider.key_vars[0]} to use {name} (or pass --api-base for a local "
            "OpenAI-compatible server)."
        )
    api_key = None
    if api_base is not None:  # a server the user named: the generic key, where it may go
        api_key = os.environ.get("CAI_KIT_API_KEY") or os.environ.get("OPENAI_API_KEY")
        if api_key and not providers.key_allowed(api_base):
            api_key = None
    return LiteLLMBackend(name, api_base=api_base, api_key=api_key, **options)


def _import_litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    return litellm


class LiteLLMBackend(Backend):
    kind = "litellm"
    default_concurrency = 16
    supports_logprobs = True

    def __init__(
        self,
        model: str,
        api_base: str | None = None,
        timeout_s: float = 120.0,
        *,
        api_key: str | None = None,
        **_: Any,
    ) -> None:
        super().__init__(model)
        self.api_base = api_base
        self.timeout_s = timeout_s
        self._key = api_key  # only for a user-named --api-base; never in identity or repr
        from cai_kit.llm import providers

        provider = providers.lookup(model)
        # a model whose provider refuses log-probs (Anthropic; Gemini 2.5+) is never asked for
        # them: the judge then reads its letter instead of failing every call
        self.supports_logprobs = provider.logprobs_for(model.split("/", 1)[1]) if provider else True
        self._marks = PrefixMarks(model) if takes_cache_control(model) else None

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "api_base": self.api_base}

    def judge_effort(self) -> str | None:
        """A judge's letter from a model that thinks by default: its least effort (Gemini)."""
        return judge_effort(self.model)

    def output_cap(self, params: GenParams) -> int:
        """The max_tokens actually sent for `params`: the answer's plus the thinking allowance
        of its reasoning effort (what a reservation or a cost preview must price)."""
        return reasoning_request(self.model, params).max_tokens

    async def chat(self, messages: ChatMessages, params: GenParams) -> Completion:
        litellm = _import_litellm()
        reasoning = reasoning_request(self.model, params)  # thinking fields, raised output cap
        if self._marks is not None and self.prompt_cache:  # Anthropic: cache the stable prefix
            messages = self._marks.mark(messages)
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": params.temperature,
            "max_tokens": reasoning.max_tokens,
            "num_retries": 0,
            "max_retries": 0,
            "timeout": self.timeout_s,
        }
        if params.top_p != 1.0:  # 1.0 cuts nothing; Claude 4.5+ refuse it next to temperature
            kwargs["top_p"] = params.top_p
        for name in reasoning.drop:  # e.g. temperature, which thinking takes only at 1
            kwargs.pop(name, None)
        kwargs.update(reasoning.fields)
        if self.api_base:
            kwargs["api_base"] = self.api_base
            kwargs["api_key"] = self._key or "sk-none"  # litellm insists on one
        if params.seed is not None and _takes_seed(litellm, self.model):
            kwargs["seed"] = params.seed
        if params.stop:
            kwargs["stop"] = list(params.stop)
        if params.top_logprobs > 0 and self.supports_logprobs:
            kwargs.update(logprobs=True, top_logprobs=min(params.top_logprobs, 20))
        try:
            resp = await litellm.acompletion(**kwargs)
        except Exception as exc:
            raise _map_error(litellm, exc, self.model) from None
        choice = resp.choices[0]
        usage = getattr(resp, "usage", None)
        cost = None
        try:
            cost = float(litellm.completion_cost(completion_response=resp))
        except Exception:  # unknown price: cost stays unknown, never guessed
            cost = None
        return Completion(
            text=choice.message.content or "",
            logprobs=_logprobs(getattr(choice, "logprobs", None)),
            usage=usage_of(usage),
            cost=cost,
            model=self.model,
            finish_reason=getattr(choice, "finish_reason", None),
        )


def usage_of(usage: Any) -> Usage:
    """litellm's usage as billed: prompt tokens with the cached ones among them (OpenAI's and
    Gemini's `prompt_tokens_details.cached_tokens`; Anthropic's cache reads, which litellm adds
    to prompt_tokens with the cache writes), completion tokens with hidden reasoning among them
    (`completion_tokens_details.reasoning_tokens`: Anthropic's thinking tokens, Gemini's
    thoughtsTokenCount, OpenAI's reasoning_tokens)."""

    def get(obj: Any, name: str) -> int:
        value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
        return int(value or 0)

    if usage is None:
        return Usage()
    details = getattr(usage, "prompt_tokens_details", None)
    out = getattr(usage, "completion_tokens_details", None)
    cached = get(details, "cached_tokens") if details is not None else 0
    return Usage(
        prompt_tokens=get(usage, "prompt_tokens"),
        completion_tokens=get(usage, "completion_tokens"),
        cached_tokens=cached or get(usage, "cache_read_input_tokens"),
        reasoning_tokens=get(out, "reasoning_tokens") if out is not None else 0,
    )


def _takes_seed(litellm: Any, model: str) -> bool:
    """Whether litellm forwards `seed` for this model's provider (unknown: let it try)."""
    if model not in _SEED_SUPPORT:
        try:
            name, provider, _, _ = litellm.get_llm_provider(model)
            supported = litellm.get_supported_openai_params(
                model=name, custom_llm_provider=provider
            )
        except Exception:  # an unmapped model: the provider decides
            supported = None
        _SEED_SUPPORT[model] = supported is None or "seed" in supported
    return _SEED_SUPPORT[model]


_SEED_SUPPORT: dict[str, bool] = {}


def _logprobs(lp: Any) -> list[TokenLogprob] | None:
    content = getattr(lp, "content", None) if lp is not None else None
    if content is None and isinstance(lp, dict):
        content = lp.get("content")
    if not content:
        return None
    out = []
    for t in content:
        get = t.get if isinstance(t, dict) else lambda k, t=t: getattr(t, k, None)
        tops = get("top_logprobs") or []
        top = {}
        for c in tops:
            cg = c.get if isinstance(c, dict) else lambda k, c=c: getattr(c, k, None)
            top[cg("token")] = float(cg("logprob"))
        out.append(TokenLogprob(token=get("token"), logprob=float(get("logprob")), top=top))
    return out


def _map_error(litellm: Any, exc: Exception, model: str) -> Exception:
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    retry_after = None
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    if hasattr(headers, "get") and headers.get("retry-after"):
        from cai_kit.llm.openai_compat import parse_retry_after

        retry_after = parse_retry_after(headers.get("retry-after"))
    if isinstance(exc, litellm.AuthenticationError) or status in (401, 403):
        return FatalBackendError(
            f"The provider refused the credentials for {model}: check the API key env var.",
            status=status,
        )
    if isinstance(exc, litellm.NotFoundError) or status == 404:
        return FatalBackendError(
            f"Model {model!r} does not exist at the provider (404): check the model string.",
            status=404,
        )
    if isinstance(exc, litellm.RateLimitError) or status == 429:
        return RetryableError(
            f"Rate limited by the provider for {model} (429).", status=429, retry_after=retry_after
        )
    if isinstance(exc, litellm.BadRequestError) or status == 400:
        return FatalBackendError(
            f"The provider rejected the request for {model} (400): {exc}", status=400
        )
    # a timeout or a lost connection: sent, and the provider may still bill it
    lost = tuple(
        getattr(litellm, n) for n in ("Timeout", "APIConnectionError") if hasattr(litellm, n)
    )
    return RetryableError(
        f"The call to {model} failed ({name}): {str(exc)[:200]}",
        status=status,
        retry_after=retry_after,
        unanswered=isinstance(exc, lost),
    )
