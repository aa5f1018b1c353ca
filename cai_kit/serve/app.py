"""The `cai-kit serve` web app: OpenAI-compatible endpoints, the feedback page, ratings.

    app = create_app(backend, store, ServeConfig(model="local", api_key=None))
    runner, port = await start(app, "127.0.0.1", 8000)  # web/server.py; port: the one bound

Routes:
  GET  /                       the chat page (static HTML; it asks for the key if one is set;
                               every other route needs the key when one is set)
  GET  /v1/models              the one model served
  POST /v1/chat/completions    OpenAI chat completions; `"stream": true` for SSE
  POST /v1/feedback            {"completion_id": ID, "rating": 1 | -1, "comment": "..."}

Only this server's own page and API clients get in (web/guard.py): a Host that does not name the
server, or an Origin other than its own or a --cors-origin, is a 403, and a JSON body must say
`Content-Type: application/json` (415). Every served completion is written to the feedback store before the client gets its `id`,
so a rating can always find it. Errors are OpenAI-shaped JSON (`{"error": {"message"}}`)
with a 4xx/5xx status; a bug answers 500 with one sentence and is logged here, never sent
as a traceback. Streaming sends real tokens when the backend has `chat_stream` (the
embedded llama.cpp model); other backends are called once and the reply is sent as SSE
chunks (header `X-Cai-Kit-Stream: buffered`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

from aiohttp import web

from cai_kit.errors import BackendError, RetryableError
from cai_kit.llm.base import Backend, Completion
from cai_kit.serve.protocol import (
    ChatRequest,
    Limits,
    chunk_body,
    completion_body,
    parse_chat_request,
)
from cai_kit.serve.store import FeedbackStore, new_completion_id
from cai_kit.web.errors import ApiError, error_middleware
from cai_kit.web.guard import cors_headers, guard, read_json

log = logging.getLogger("cai_kit.serve")


@dataclass(frozen=True)
class ServeConfig:
    model: str  # the model string served; reported as the model id
    api_key: str | None = None  # when set, all but / need "Authorization: Bearer KEY"
    max_body_bytes: int = 1024 * 1024
    limits: Limits = field(default_factory=Limits)
    max_comment_chars: int = 4000
    cors_origins: tuple[str, ...] = ()  # other pages' origins that may call the API (guard.py)
    allowed_hosts: tuple[str, ...] = ()  # Host names served besides the address bound


_CSP = "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
CONFIG = web.AppKey("config", ServeConfig)
BACKEND = web.AppKey("backend", Backend)
STORE = web.AppKey("store", FeedbackStore)
# Store writes get their own thread: in the default pool they would queue behind model calls
# that wait for the (one-at-a-time) local model, adding a whole generation to a reply's latency.
DB_POOL = web.AppKey("db_pool", ThreadPoolExecutor)


async def _in_db(request: web.Request, fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(request.app[DB_POOL], fn, *args)


@web.middleware
async def _auth(request: web.Request, handler: Any) -> web.StreamResponse:
    key = request.app[CONFIG].api_key
    if key and request.path != "/":  # everything but the static page, which holds no data
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise ApiError(
                401, "Missing or wrong API key: send 'Authorization: Bearer KEY'.", "auth_error"
            )
    return await handler(request)


async def page(request: web.Request) -> web.Response:
    html = files("cai_kit.serve").joinpath("page.html").read_text(encoding="utf-8")
    return web.Response(
        text=html,
        content_type="text/html",
        headers={"Content-Security-Policy": _CSP},
    )


async def models(request: web.Request) -> web.Response:
    cfg, backend = request.app[CONFIG], request.app[BACKEND]
    entry = {
        "id": cfg.model,
        "object": "model",
        "created": 0,
        "owned_by": "cai-kit",
        "backend": backend.kind,
    }
    return web.json_response({"object": "list", "data": [entry]})


def _backend_error(exc: BackendError) -> ApiError:
    if isinstance(exc, RetryableError):
        return ApiError(503, f"The model backend is unavailable: {exc}", "backend_unavailable")
    return ApiError(502, f"The model backend refused the request: {exc}", "backend_error")


def _record(request: web.Request, cid: str, req: ChatRequest, c: Completion) -> None:
    cfg, backend, store = request.app[CONFIG], request.app[BACKEND], request.app[STORE]
    usage = {"prompt_tokens": c.usage.prompt_tokens, "completion_tokens": c.usage.completion_tokens}
    store.add_completion(
        req.messages,
        c.text,
        model=cfg.model,
        identity=backend.identity(),
        params=req.params.to_dict(),
        usage=usage,
        finish_reason=c.finish_reason,
        regenerate_of=req.regenerate_of,
        source=req.source,
        completion_id=cid,
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    cfg, backend = request.app[CONFIG], request.app[BACKEND]
    req = parse_chat_request(await read_json(request), cfg.limits)
    if req.logprobs and not backend.supports_logprobs:
        raise ApiError(400, f"The {backend.kind} backend cannot return logprobs.")
    cid = new_completion_id()
    if req.stream:
        return await _stream(request, cid, req)
    try:
        c = await backend.chat(req.messages, req.params)
    except BackendError as exc:
        raise _backend_error(exc) from None
    await _in_db(request, _record, request, cid, req, c)
    return web.json_response(completion_body(cid, cfg.model, req, c))


async def _deltas(backend: Backend, req: ChatRequest) -> AsyncIterator[str | Completion]:
    """Text pieces, then the whole Completion: real tokens when the backend can stream."""
    stream = getattr(backend, "chat_stream", None)
    if stream is not None and not req.logprobs:
        async for item in stream(req.messages, req.params):
            yield item
        return
    c = await backend.chat(req.messages, req.params)
    words = c.text.split(" ")
    for i in range(0, len(words), 4):
        yield (" " if i else "") + " ".join(words[i : i + 4])
    yield c


async def _stream(request: web.Request, cid: str, req: ChatRequest) -> web.StreamResponse:
    cfg, backend = request.app[CONFIG], request.app[BACKEND]
    created = int(time.time())
    buffered = req.logprobs or getattr(backend, "chat_stream", None) is None
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Cai-Kit-Stream": "buffered" if buffered else "tokens",
        }
    )

    async def send(body: dict[str, Any] | str) -> None:
        data = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
        await resp.write(f"data: {data}\n\n".encode())

    items = _deltas(backend, req)
    try:
        first = await anext(items)  # a backend error before any token is still a plain 4xx/5xx
    except BackendError as exc:
        raise _backend_error(exc) from None
    try:
        await resp.prepare(request)
        await send(chunk_body(cid, cfg.model, created, {"role": "assistant", "content": ""}))
        item = first
        while not isinstance(item, Completion):
            await send(chunk_body(cid, cfg.model, created, {"content": item}))
            item = await anext(items)
        await _in_db(request, _record, request, cid, req, item)  # stored before [DONE]
        await send(chunk_body(cid, cfg.model, created, finish_reason=item.finish_reason or "stop"))
        if req.include_usage:
            await send(chunk_body(cid, cfg.model, created, usage=item))
        await send("[DONE]")
        await resp.write_eof()
    except BackendError as exc:  # mid-stream: the OpenAI SDK raises on an "error" event
        await send(_backend_error(exc).body())
        await resp.write_eof()
    except ConnectionError:  # the client left: stop generating, store nothing half-done
        pass
    finally:
        await items.aclose()
    return resp


async def feedback(request: web.Request) -> web.Response:
    cfg, store = request.app[CONFIG], request.app[STORE]
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    cid, rating, comment = body.get("completion_id"), body.get("rating"), body.get("comment")
    if not isinstance(cid, str) or not cid:
        raise ApiError(400, "completion_id must be the id of a chat completion from this server.")
    if isinstance(rating, bool) or rating not in (1, -1):
        raise ApiError(400, f"rating must be 1 (thumbs up) or -1 (thumbs down), not {rating!r}.")
    if comment is not None and not isinstance(comment, str):
        raise ApiError(400, "comment must be a string.")
    if comment and len(comment) > cfg.max_comment_chars:
        raise ApiError(400, f"comment is longer than {cfg.max_comment_chars} characters.")
    if not await _in_db(request, store.rate, cid, int(rating), comment or None):
        raise ApiError(404, f"No completion with id {cid!r} was served into {store.path}.")
    return web.json_response({"ok": True, "completion_id": cid, "rating": rating})


def create_app(backend: Backend, store: FeedbackStore, config: ServeConfig) -> web.Application:
    too_large = (
        f"The request body is larger than this server's limit of {config.max_body_bytes} "
        "bytes (--max-body-bytes)."
    )
    app = web.Application(
        middlewares=[
            error_middleware(log, too_large, secrets=[config.api_key or ""]),
            guard(config.cors_origins, config.allowed_hosts),
            _auth,
        ],
        client_max_size=config.max_body_bytes,
    )
    app.on_response_prepare.append(cors_headers)
    app[CONFIG], app[BACKEND], app[STORE] = config, backend, store
    app[DB_POOL] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cai-kit-feedback-db")
    app.router.add_get("/", page)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/feedback", feedback)

    async def close(_: web.Application) -> None:
        await backend.aclose()
        app[DB_POOL].shutdown(wait=True)

    app.on_cleanup.append(close)
    return app
