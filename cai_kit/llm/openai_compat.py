"""Any OpenAI-compatible `/chat/completions` server: vLLM, llama.cpp server, Ollama, gateways
(`NAME --api-base URL`), and the hosted providers that speak the same protocol
(`openai/gpt-4o-mini`, `groq/...`, `together_ai/...`: see `providers.py`).

An aiohttp client: measured here it is 2-5x faster than httpx- or litellm-based clients at
high concurrency. It has no retries of its own (the engine retries) and maps HTTP status to
`RetryableError` (429 + Retry-After, 5xx, timeouts, dropped connections, malformed bodies)
or `FatalBackendError` (400/401/403/404), each with one sentence saying what to do.
A key comes from the environment (the provider's variable; for --api-base CAI_KIT_API_KEY or
OPENAI_API_KEY), is sent in a header only where `providers.key_allowed` permits, and is never
logged or cached.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import time
from typing import Any

from cai_kit.errors import ConfigError, FatalBackendError, RetryableError
from cai_kit.llm import providers
from cai_kit.llm.base import (
    Backend,
    ChatMessages,
    Completion,
    GenParams,
    Usage,
    parse_openai_logprobs,
)
from cai_kit.llm.reasoning import LOGPROBS, effort_timeout, reasoning_rules

GENERIC_KEY_VARS = ("CAI_KIT_API_KEY", "OPENAI_API_KEY")  # for a server given by --api-base


def _generic_key(api_base: str) -> str | None:
    key = next((os.environ[v] for v in GENERIC_KEY_VARS if os.environ.get(v)), None)
    return key if key and providers.key_allowed(api_base) else None


def make_openai_compat_backend(model: str, api_base: str | None = None, **options: Any) -> Backend:
    """`NAME --api-base URL`: a server the user runs or picked (no list price)."""
    assert api_base is not None
    key = _generic_key(api_base)
    return OpenAICompatBackend(model.removeprefix("openai/"), api_base, api_key=key, **options)


async def served_models(api_base: str, timeout_s: float = 30.0) -> list[str]:
    """The model ids a server at --api-base lists at GET {api_base}/models, in its order
    (ConfigError, one sentence, when it cannot be asked)."""
    import aiohttp

    url = api_base.rstrip("/") + "/models"
    key = _generic_key(api_base)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    hint = "name the model with --model NAME"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.get(url, headers=headers) as resp,
        ):
            if resp.status != 200:
                raise ConfigError(f"{url} answered HTTP {resp.status} to a model listing; {hint}.")
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        raise ConfigError(
            f"Could not list the models at {url} ({type(exc).__name__}); is the server running? "
            f"Or {hint}."
        ) from None
    listed = data.get("data") if isinstance(data, dict) else None
    ids = [m["id"] for m in listed or [] if isinstance(m, dict) and isinstance(m.get("id"), str)]
    if not ids:
        raise ConfigError(f"{url} lists no models; {hint}.")
    return ids


def make_provider_backend(model: str, api_base: str | None = None, **options: Any) -> Backend:
    """`PROVIDER/MODEL` for a provider in the OpenAI-compatible table, at its base URL (or the
    one its base-URL variable names, e.g. OPENAI_BASE_URL) with its usual key variable."""
    provider = providers.lookup(model)
    assert provider is not None and provider.fast
    var, key = provider.key()
    if key is None and options.pop("require_key", True):  # (a --dry-run calls nothing)
        raise ConfigError(
            f"Set {var} to use {model} (or pass --api-base for a local OpenAI-compatible server)."
        )
    base = api_base or provider.resolved_base_url()
    assert base is not None
    if not providers.key_allowed(base):
        key = None
    return OpenAICompatBackend(
        model.split("/", 1)[1],
        base,
        api_key=key,
        key_var=var,
        provider=provider,
        price_model=model,
        **options,
    )


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds, from either delta-seconds or an HTTP-date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAICompatBackend(Backend):
    kind = "openai-compat"
    default_concurrency = 64
    supports_logprobs = True

    def __init__(
        self,
        model: str,
        api_base: str,
        timeout_s: float = 120.0,
        *,
        api_key: str | None = None,
        key_var: str = "OPENAI_API_KEY (or CAI_KIT_API_KEY)",
        provider: providers.Provider | None = None,
        price_model: str | None = None,
        timeout_given: bool = False,
        **_: Any,
    ) -> None:
        super().__init__(model)
        self.api_base = api_base.rstrip("/")
        self.timeout_s = timeout_s
        self.provider = provider
        self.price_model = price_model  # the model string a list price is looked up by
        # what the model takes when it reasons (llm/reasoning.py): by the provider's model string,
        # or by the name a server at --api-base serves (CAI_KIT_REASONING_MODELS can describe it)
        self.reasoning = reasoning_rules(price_model or model)
        self.timeout_given = timeout_given  # --timeout was given: not grown with the effort
        self.supports_logprobs = self.logprobs_at(None)
        self._max_top = provider.max_top_logprobs if provider else 20
        self._key = api_key  # kept in memory for the header only: never in identity or repr
        self._key_var = key_var
        self._session: Any = None

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "api_base": self.api_base}

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        return headers

    async def _get_session(self) -> Any:
        if self._session is None:
            import aiohttp

            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers())
        return self._session

    def refused(self, effort: str | None) -> frozenset[str]:
        """The request fields this model refuses at `effort`: the provider table's rows and the
        model's reasoning rules (Provider.refused), or the rules alone at an --api-base."""
        if self.provider is not None:
            return self.provider.refused(self.model, effort)
        return self.reasoning.refuses(effort) if self.reasoning is not None else frozenset()

    def logprobs_at(self, effort: str | None) -> bool:
        """Whether top log-probs can be asked for (and come back) at this effort."""
        if self.provider is not None and not self.provider.logprobs:
            return False
        return not LOGPROBS & self.refused(effort)

    def _body(self, messages: ChatMessages, params: GenParams) -> dict[str, Any]:
        provider = self.provider
        body = request_body(
            self.model, messages, params, self.refused(params.reasoning_effort),
            token_field=provider.max_tokens_field if provider else None,
            seed_field=provider.seed_field if provider else "seed",
            effort_field=provider.effort_field if provider else "reasoning_effort",
            max_top=self._max_top, logprobs=provider is None or provider.logprobs,
        )  # fmt: skip
        if provider:
            body.update(provider.extra_body)
        if self.service_tier is not None:  # `--service-tier flex` (checked at start)
            body["service_tier"] = self.service_tier
        return body

    def timeout_for(self, params: GenParams) -> float:
        """The call's timeout: --timeout as given, else grown with the reasoning effort."""
        if self.timeout_given or self.reasoning is None or not self.reasoning.reasons:
            return self.timeout_s
        return effort_timeout(params.reasoning_effort, self.timeout_s)

    async def chat(self, messages: ChatMessages, params: GenParams) -> Completion:
        import aiohttp

        url = f"{self.api_base}/chat/completions"
        session = await self._get_session()
        try:
            async with session.post(
                url,
                json=self._body(messages, params),
                timeout=aiohttp.ClientTimeout(total=self.timeout_for(params)),
            ) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except asyncio.TimeoutError:
            raise RetryableError(
                f"The server at {self.api_base} did not answer within "
                f"{self.timeout_for(params):g} s (--timeout).",
                unanswered=True,
            ) from None
        except aiohttp.ClientConnectorError:
            raise RetryableError(
                f"The server at {self.api_base} is unreachable: is it running, and is --api-base right?"
            ) from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise RetryableError(
                f"The connection to {self.api_base} dropped ({type(exc).__name__}).",
                unanswered=True,
            ) from None
        if status != 200:
            raise _status_error(
                status, raw, self.api_base, self.model, retry_after, self._key_hint(),
                hosted=self.provider is not None,
            )  # fmt: skip
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        completion = parse_chat_completion(data, self.api_base, self.model)
        if params.stop and "stop" in self.refused(params.reasoning_effort):
            _apply_stop(completion, params.stop)
        return completion

    def _key_hint(self) -> str:
        if self._key is None and os.environ.get(self._key_var.split(" ")[0]):
            return f"{self._key_var} is set but was not sent (plain http://, see the warning above)"
        return f"set {self._key_var} to a valid key"

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _apply_stop(completion: Completion, stop: tuple[str, ...]) -> None:
    """Cut the text at the first stop sequence, as the server would have (for models that
    refuse `stop`): the text before it, without it, finish_reason "stop"."""
    cuts = [i for i in (completion.text.find(s) for s in stop if s) if i >= 0]
    if cuts:
        completion.text = completion.text[: min(cuts)]
        completion.finish_reason = "stop"


def request_body(
    model: str,
    messages: ChatMessages,
    params: GenParams,
    refused: frozenset[str] = frozenset(),
    *,
    token_field: str | None = None,
    seed_field: str = "seed",
    effort_field: str = "reasoning_effort",
    max_top: int = 20,
    logprobs: bool = True,
) -> dict[str, Any]:
    """An OpenAI `/chat/completions` body with only the fields the model takes: a field in
    `refused` is left out (a stage's default temperature is then simply not sent; a value the
    user set is refused at start, `cai_kit.llm.reasoning`), the cap goes in `token_field` (None:
    max_tokens, or max_completion_tokens where max_tokens is refused), the effort in
    `effort_field` (OpenRouter: `reasoning: {effort}`)."""
    body: dict[str, Any] = {"model": model, "messages": messages}
    for name in ("temperature", "top_p"):
        if name not in refused:
            body[name] = getattr(params, name)
    field = token_field or ("max_completion_tokens" if "max_tokens" in refused else "max_tokens")
    body[field] = params.max_tokens
    if params.seed is not None:  # a reasoning model takes a seed too: sample i is its own draw
        body[seed_field] = params.seed
    if params.stop and "stop" not in refused:  # else cut here (`_apply_stop`)
        body["stop"] = list(params.stop)
    if params.top_logprobs > 0 and logprobs and not LOGPROBS & refused:
        body["logprobs"] = True
        body["top_logprobs"] = min(params.top_logprobs, max_top)
    if params.reasoning_effort is not None:
        if effort_field == "reasoning":
            body["reasoning"] = {"effort": params.reasoning_effort}
        else:
            body[effort_field] = params.reasoning_effort
    return body


def chat_body(model: str, messages: ChatMessages, params: GenParams) -> dict[str, Any]:
    """A plain OpenAI `/chat/completions` body (Batch API lines for `litellm:` strings; the
    backend's own `_body` adds a provider's seed field and extra fields), with the model's
    reasoning rules applied as the synchronous call applies them."""
    rules = reasoning_rules(model)
    refused = rules.refuses(params.reasoning_effort) if rules is not None else frozenset()
    return request_body(model, messages, params, refused)


def parse_chat_completion(data: Any, api_base: str, model: str) -> Completion:
    """An OpenAI `chat.completion` body -> Completion. Shared by the synchronous call and the
    Batch API (`cai_kit.engine.batch`), so both paths read an answer the same way."""
    try:
        choice = data["choices"][0]
        text = choice["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        raise RetryableError(f"The server at {api_base} sent a malformed response body.") from None
    usage = data.get("usage") or {}
    return Completion(
        text=text,
        logprobs=parse_openai_logprobs(choice.get("logprobs")),
        usage=parse_usage(usage),
        cost=float(usage["cost"])
        if isinstance(usage.get("cost"), int | float)
        else None,  # gateways that report it
        model=data.get("model") or model,
        finish_reason=choice.get("finish_reason"),
    )


def parse_usage(usage: dict[str, Any]) -> Usage:
    """OpenAI's `usage`: cached input tokens (`prompt_tokens_details.cached_tokens`) are part of
    `prompt_tokens`, hidden reasoning tokens (`completion_tokens_details.reasoning_tokens`) part
    of `completion_tokens`; either detail may be absent or null (servers that have none)."""
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Usage(
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        cached_tokens=int(prompt_details.get("cached_tokens") or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )


def _status_error(
    status: int,
    raw: bytes,
    api_base: str,
    model: str,
    retry_after: float | None,
    key_hint: str = "set OPENAI_API_KEY (or CAI_KIT_API_KEY) to a valid key",
    *,
    hosted: bool = False,
) -> Exception:
    detail = raw[:300].decode("utf-8", "replace").strip()
    if status == 429:
        return RetryableError(
            f"Rate limited by {api_base} (429).", status=429, retry_after=retry_after
        )
    if status >= 500:
        return RetryableError(
            f"The server at {api_base} failed ({status}).", status=status, retry_after=retry_after
        )
    if status in (400, 403) and "logprobs" in detail.lower():
        # o-series: 403 "You are not allowed to request logprobs from this model" (a refused
        # parameter, not a key problem)
        return FatalBackendError(
            f"{model} does not give log-probs ({status}: {detail}); use the judge's default "
            "mode or --mode letter.",
            status=status,
        )
    if status in (401, 403):
        return FatalBackendError(
            f"The server at {api_base} refused the credentials ({status}): {key_hint}.",
            status=status,
        )
    if status == 404:
        check = "the model string" if hosted else "the model name and that --api-base ends in /v1"
        return FatalBackendError(
            f"The server at {api_base} says model {model!r} or the endpoint does not exist (404): "
            f"check {check}.",
            status=status,
        )
    return FatalBackendError(
        f"The server at {api_base} rejected the request ({status}): {detail}", status=status
    )
