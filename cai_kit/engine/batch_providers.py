"""Provider Batch APIs behind one small interface, used by `cai_kit.engine.batch`.

    client = batch_client_for(backend)            # None: this backend has no Batch API
    line = client.line(key, messages, params)     # one JSONL line; custom_id = the cache key
    batch_id = await client.submit(path, tag)     # upload + create (tag goes into metadata)
    state = await client.poll(batch_id)           # BatchState(status, done, ...)
    async for key, result in client.results(state):  # Completion, or an error sentence

- OpenAI-compatible providers (OpenAI, Groq, DeepInfra, vLLM's batch runner, any `--api-base`
  server that implements `/v1/files` and `/v1/batches`) go through the official `openai` SDK.
  Together, Fireworks, Mistral and xAI have batch APIs of other shapes (Together's create
  answers `{job, warning}` with upper-case statuses; Mistral's is `/v1/batch/jobs`; Fireworks'
  are batch inference jobs over datasets; xAI pages its own way): their calls run synchronously.
  Each line's body is exactly the body of the synchronous call (`chat_body`), and answers are
  read by the same parser (`parse_chat_completion`), so both paths give the same records.
- Anthropic's Message Batches API is spoken over plain HTTP (aiohttp) from its documented
  shape (POST /v1/messages/batches, GET .../{id}, the `results_url` JSONL); it is implemented
  from the documentation and has not been run against Anthropic itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai_kit.errors import BackendError
from cai_kit.llm.base import Backend, ChatMessages, Completion, GenParams, Usage
from cai_kit.llm.openai_compat import chat_body, parse_chat_completion
from cai_kit.llm.thinking import reasoning_request

BodyFn = Callable[[ChatMessages, GenParams], dict[str, Any]]

# hosted providers (cai_kit.llm.providers) that take OpenAI-format batch jobs at /v1/batches,
# with `metadata` (the wave tag): OpenAI, Groq, DeepInfra (documented OpenAI-compatible)
BATCH_PROVIDERS = ("openai", "groq", "deepinfra")
TERMINAL = ("completed", "failed", "expired", "cancelled", "ended")


@dataclass
class BatchState:
    batch_id: str
    status: str  # the provider's word: validating, in_progress, completed, expired, ...
    done: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    files: tuple[str | None, ...] = ()  # where the answers are (output and error files, a URL)
    errors: str = ""  # why a whole batch failed


class BatchClient:
    """One provider's Batch API. `max_requests` / `max_bytes`: its limits per batch."""

    name = "batch"
    price: Any = None  # the backend's price (cai_kit.engine.pricing), set by the collector
    max_requests = 50_000
    max_bytes = 190 * 1024**2

    def line(self, key: str, messages: ChatMessages, params: GenParams) -> dict[str, Any]:
        raise NotImplementedError

    async def submit(self, path: Path, tag: str) -> str:
        raise NotImplementedError

    async def find(
        self, tag: str, since: float | None = None, requests: int = 0, known: frozenset[str] = frozenset()
    ) -> str | None:  # fmt: skip
        """The batch created for the wave `tag` (of `requests` calls, submitted at `since`, a
        Unix time) before a crash, if the provider lists it and it is none of the `known`
        batch ids; None when it was never created. Raises BackendError when the provider
        can't say (a listing that fails is not "never created": that would pay twice)."""
        return None

    async def poll(self, batch_id: str) -> BatchState:
        raise NotImplementedError

    async def cancel(self, batch_id: str) -> None:
        """Ask the provider to cancel the batch (it ends as cancelled on a later poll)."""
        raise NotImplementedError

    def results(self, state: BatchState) -> AsyncIterator[tuple[str, Completion | str]]:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


class OpenAIBatchClient(BatchClient):
    """OpenAI's files + batches endpoints through the `openai` SDK."""

    def __init__(
        self, model: str, base_url: str, api_key: str | None, body: BodyFn | None = None
    ) -> None:
        self.model, self.base_url, self.name = model, base_url.rstrip("/"), base_url
        self._api_key = api_key or "sk-none"  # loopback servers take any key
        self._body = body or (lambda messages, params: chat_body(model, messages, params))
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from openai import AsyncOpenAI

            self._client = AsyncOpenAI(base_url=self.base_url, api_key=self._api_key)
        return self._client

    def line(self, key: str, messages: ChatMessages, params: GenParams) -> dict[str, Any]:
        body = self._body(messages, params)  # the synchronous call's body, byte for byte
        return {"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body}

    async def submit(self, path: Path, tag: str) -> str:
        try:
            with path.open("rb") as fh:
                upload = await self.client.files.create(file=(path.name, fh), purpose="batch")
            batch = await self.client.batches.create(
                input_file_id=upload.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={"cai_kit_wave": tag},
            )
        except Exception as exc:
            raise _sdk_error(exc, self.base_url) from None
        return str(batch.id)

    async def find(
        self, tag: str, since: float | None = None, requests: int = 0, known: frozenset[str] = frozenset()
    ) -> str | None:  # fmt: skip
        seen: set[str] = set()
        try:  # newest first, page after page, back to the wave's time (a few minutes' slack)
            page = await self.client.batches.list(limit=100)
            while True:
                fresh = [b for b in page.data if b.id not in seen]
                for b in fresh:
                    seen.add(b.id)
                    if (b.metadata or {}).get("cai_kit_wave") == tag and b.status != "cancelled":
                        return str(b.id)
                    if since is not None and b.created_at < since - 600:
                        return None
                # a list without `has_more` that ignores `after` (Groq documents no paging)
                # answers the same page again: nothing new means the list is done
                if not fresh or not page.has_next_page():
                    return None
                page = await page.get_next_page()
        except Exception as exc:
            raise _sdk_error(exc, self.base_url) from None

    async def poll(self, batch_id: str) -> BatchState:
        try:
            b = await self.client.batches.retrieve(batch_id)
        except Exception as exc:
            raise _sdk_error(exc, self.base_url) from None
        counts = b.request_counts.model_dump() if b.request_counts else {}
        errors = "; ".join(e.message or "" for e in (b.errors.data or [])) if b.errors else ""
        return BatchState(batch_id, b.status, b.status in TERMINAL, counts,
                          (b.output_file_id, b.error_file_id), errors)  # fmt: skip

    async def cancel(self, batch_id: str) -> None:
        try:
            await self.client.batches.cancel(batch_id)
        except Exception as exc:
            raise _sdk_error(exc, self.base_url) from None

    async def results(self, state: BatchState) -> AsyncIterator[tuple[str, Completion | str]]:
        for file_id in state.files:
            if not file_id:
                continue
            try:
                async with self.client.files.with_streaming_response.content(file_id) as resp:
                    async for raw in resp.iter_lines():
                        if raw.strip():
                            yield self._result(json.loads(raw))
            except BackendError:
                raise
            except Exception as exc:
                raise _sdk_error(exc, self.base_url) from None

    def _result(self, row: dict[str, Any]) -> tuple[str, Completion | str]:
        key, resp, err = row["custom_id"], row.get("response") or {}, row.get("error")
        if err:
            return key, f"{err.get('code') or 'error'}: {err.get('message') or ''}".strip()
        if resp.get("status_code") != 200:
            detail = ((resp.get("body") or {}).get("error") or {}).get("message", "")
            return key, f"the provider answered {resp.get('status_code')}: {detail}".strip()
        try:
            return key, parse_chat_completion(resp.get("body"), self.base_url, self.model)
        except BackendError as exc:
            return key, str(exc)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()


class AnthropicBatchClient(BatchClient):
    """Anthropic's Message Batches API (documented shape; not run against Anthropic here)."""

    name = "Anthropic Message Batches"
    max_requests = 100_000  # documented: 100,000 requests or 256 MB, whichever comes first
    max_bytes = 255 * 1000**2  # under 256 MB read either way, with room for the body's frame

    def __init__(self, model: str, api_base: str | None = None) -> None:
        self.model = model.split("/", 1)[-1]
        base = (
            api_base
            or os.environ.get("ANTHROPIC_BASE_URL")  # the anthropic SDK's variable
            or os.environ.get("ANTHROPIC_API_BASE")  # litellm's
            or "https://api.anthropic.com"
        )
        self.url = f"{base.rstrip('/')}/v1/messages/batches"
        self._session: Any = None

    def _headers(self) -> dict[str, str]:
        return {"x-api-key": os.environ.get("ANTHROPIC_API_KEY", ""),
                "anthropic-version": "2023-06-01", "content-type": "application/json"}  # fmt: skip

    async def _http(self, method: str, url: str, **kw: Any) -> Any:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers())
        try:
            async with self._session.request(method, url, **kw) as resp:
                text = await resp.text()
        except (aiohttp.ClientError, OSError) as exc:
            raise BackendError(f"{self.name} is unreachable ({type(exc).__name__}).") from None
        if resp.status != 200:
            raise BackendError(f"{self.name} answered {resp.status}: {text[:300]}")
        return text

    def line(self, key: str, messages: ChatMessages, params: GenParams) -> dict[str, Any]:
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        # the synchronous route's thinking fields, output cap and left-out sampling fields
        reasoning = reasoning_request(f"anthropic/{self.model}", params)
        req: dict[str, Any] = {
            "model": self.model,
            "max_tokens": reasoning.max_tokens,
            "messages": [m for m in messages if m["role"] != "system"],
            "temperature": min(params.temperature, 1.0),  # Anthropic's range is 0..1
        }
        if params.top_p != 1.0:  # 1.0 cuts nothing; Claude 4.5+ refuse it next to temperature
            req["top_p"] = params.top_p
        for name in reasoning.drop:
            req.pop(name, None)
        req.update(reasoning.fields)
        if system:
            req["system"] = system
        if params.stop:
            req["stop_sequences"] = list(params.stop)
        return {"custom_id": key, "params": req}  # custom_id: 64 hex chars, within its limit

    async def submit(self, path: Path, tag: str) -> str:
        # the lines' own UTF-8 bytes, as the wave was sized (re-encoding with \u escapes
        # could double non-Latin text past the 256 MB limit), streamed from the file
        with path.open("rb") as fh:
            sizes = [len(x.strip()) for x in fh if x.strip()]
        length = len(b'{"requests":[]}') + sum(sizes) + max(0, len(sizes) - 1)

        async def body() -> AsyncIterator[bytes]:
            yield b'{"requests":['
            with path.open("rb") as fh:
                first = True
                for raw in fh:
                    if raw.strip():
                        yield (b"" if first else b",") + raw.strip()
                        first = False
            yield b"]}"

        text = await self._http("POST", self.url, data=body(),
                                headers={"content-length": str(length)})  # fmt: skip
        return str(json.loads(text)["id"])

    async def find(
        self, tag: str, since: float | None = None, requests: int = 0, known: frozenset[str] = frozenset()
    ) -> str | None:  # fmt: skip
        """Message Batches carry no metadata, so the wave's batch is found by its time and
        size: created within minutes of `since` (clock skew and a long upload allowed), with
        as many requests, and not a batch the ledger already names. Only a single such batch
        is adopted; with none or several, the calls are sent again (paying twice rather than
        taking another job's batch)."""
        if since is None or not requests:
            return None
        found: list[str] = []
        after = None
        while True:
            query = "?limit=1000" + (f"&after_id={after}" if after else "")
            page = json.loads(await self._http("GET", self.url + query))
            for b in page.get("data") or []:
                created = _unix(b.get("created_at"))
                if created is not None and created < since - _SKEW_S:
                    return found[0] if len(found) == 1 else None  # newest first: no older one
                size = sum((b.get("request_counts") or {}).values())
                if created is not None and created <= since + _UPLOAD_S and size == requests \
                        and b["id"] not in known:  # fmt: skip
                    found.append(str(b["id"]))
            if not page.get("has_more") or not page.get("last_id"):
                return found[0] if len(found) == 1 else None
            after = page["last_id"]

    async def poll(self, batch_id: str) -> BatchState:
        b = json.loads(await self._http("GET", f"{self.url}/{batch_id}"))
        status = b["processing_status"]  # in_progress | canceling | ended
        counts = b.get("request_counts") or {}
        if status == "ended" and counts.get("expired"):  # an ended batch says it in its counts
            status = "expired"
        elif status == "ended" and counts.get("canceled"):
            status = "cancelled"
        return BatchState(batch_id, status, b["processing_status"] == "ended", counts,
                          (b.get("results_url"),))  # fmt: skip

    async def cancel(self, batch_id: str) -> None:
        await self._http("POST", f"{self.url}/{batch_id}/cancel")

    async def results(self, state: BatchState) -> AsyncIterator[tuple[str, Completion | str]]:
        url = state.files[0] if state.files else None
        if not url:
            return
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers())
        try:  # line by line: a results file can be hundreds of MB
            async with self._session.get(url) as resp:
                if resp.status != 200:
                    text = await resp.text()
                    raise BackendError(f"{self.name} answered {resp.status}: {text[:300]}")
                rest = b""
                async for chunk in resp.content.iter_chunked(1 << 16):  # lines of any length
                    *lines, rest = (rest + chunk).split(b"\n")
                    for raw in lines:
                        if raw.strip():
                            yield anthropic_result(json.loads(raw), self.model)
                if rest.strip():
                    yield anthropic_result(json.loads(rest), self.model)
        except (aiohttp.ClientError, OSError) as exc:
            raise BackendError(f"{self.name} is unreachable ({type(exc).__name__}).") from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


_SKEW_S = 300.0  # a found batch may look created this much before the wave (clock skew)...
_UPLOAD_S = 900.0  # ...or this much after it (a 256 MB body takes a while to send)


def _unix(stamp: Any) -> float | None:
    """An RFC 3339 time (Anthropic's `created_at`) as Unix seconds."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


_UNRUN = {
    "canceled": "canceled: not run (the batch was cancelled)",
    "expired": "expired: not run within the batch's 24 h",
}


def anthropic_usage(usage: dict[str, Any]) -> Usage:
    """Anthropic's `usage`: `input_tokens` counts only the input after the last cache
    breakpoint; cache reads and writes are counted apart, so every input token billed is the
    sum of the three (platform.claude.com, prompt caching: "Tracking cache performance").
    output_tokens holds the thinking, reported apart in `output_tokens_details.thinking_tokens`."""
    read = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    thinking = int((usage.get("output_tokens_details") or {}).get("thinking_tokens") or 0)
    return Usage(
        int(usage.get("input_tokens") or 0) + read + written,
        int(usage.get("output_tokens") or 0),
        cached_tokens=read,
        reasoning_tokens=thinking,
        cache_write_tokens=written,
    )


def anthropic_result(row: dict[str, Any], model: str) -> tuple[str, Completion | str]:
    """One line of a Message Batch's results: `{custom_id, result}`, where `result.type` is
    succeeded (a Message), errored (`error` is an error response: `{type: "error", error:
    {type, message}}`), canceled or expired."""
    result = row.get("result") or {}
    kind = result.get("type")
    if kind == "succeeded":
        msg = result["message"]
        text = "".join(c.get("text", "") for c in msg.get("content", []) if c.get("type") == "text")
        stop = msg.get("stop_reason")
        return row["custom_id"], Completion(
            text=text, usage=anthropic_usage(msg.get("usage") or {}), model=model,
            finish_reason=_STOP_REASONS.get(stop, stop),
        )  # fmt: skip
    if kind in _UNRUN:
        return row["custom_id"], _UNRUN[kind]
    err = result.get("error") or {}
    err = err.get("error") or err  # the error response wraps the error object
    detail = ": ".join(str(x) for x in (err.get("type"), err.get("message")) if x)
    return row["custom_id"], f"{kind}: {detail}" if detail else f"{kind}"


# Anthropic's stop_reason in OpenAI's words, as litellm maps them on the synchronous route (an
# answer cut at max_tokens, e.g. by thinking, reads "length" on both)
_STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


def batch_client_for(backend: Backend) -> BatchClient | None:
    """The Batch API that serves this backend, or None (local models, providers without one)."""
    api_base = getattr(backend, "api_base", None)
    if backend.kind == "openai-compat" and api_base:
        provider = getattr(backend, "provider", None)  # None: a server at the user's --api-base
        if provider is not None and provider.name not in BATCH_PROVIDERS:
            return None
        key = getattr(backend, "_key", None)  # as the backend sends it (never over plain http)
        return OpenAIBatchClient(backend.model, api_base, key, body=getattr(backend, "_body", None))
    if backend.kind != "litellm":
        return None
    name = backend.model.removeprefix("litellm:")
    prefix, _, bare = name.partition("/")
    if prefix == "anthropic":
        return AnthropicBatchClient(name, api_base)
    if api_base:  # litellm pointed at an OpenAI-compatible server
        return OpenAIBatchClient(bare or name, api_base, os.environ.get("OPENAI_API_KEY"))
    from cai_kit.llm.providers import lookup

    provider = lookup(name)
    url = provider.resolved_base_url() if provider is not None else None
    if provider is None or provider.name not in BATCH_PROVIDERS or not url:
        return None
    return OpenAIBatchClient(bare, url, provider.key()[1])


NO_BATCH_API = "has no Batch API"  # in a row's error: `retry-failed RUN --sync` redoes it


def _sdk_error(exc: Exception, where: str) -> BackendError:
    status = getattr(exc, "status_code", None)
    if status in (401, 403):
        return BackendError(f"{where} refused the credentials for its Batch API ({status}).")
    if status == 404:
        return BackendError(
            f"{where} {NO_BATCH_API} (404 on /files or /batches): run without --batch-api."
        )
    return BackendError(f"The Batch API at {where} failed ({type(exc).__name__}): {exc}"[:300])
