"""OpenAI chat-completions request checking and response shapes, with no server in sight.

    req = parse_chat_request(body, limits)      # raises ApiError(400, "...") on bad input
    completion_body(cid, model, req, completion)   # the JSON of a non-streaming answer
    chunk_body(cid, model, created, delta=..., finish_reason=...)   # one SSE chunk

Unknown request fields that OpenAI clients send (`user`, penalties, ...) are ignored, as
llama.cpp's server does; fields cai-kit cannot honour (`n > 1`, tools) get a clear 400.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from cai_kit.llm.base import Completion, GenParams
from cai_kit.web.errors import ApiError


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 1024  # the most a request may ask for
    default_max_tokens: int = 256  # when the request does not say
    default_temperature: float = 0.7


@dataclass
class ChatRequest:
    messages: list[dict[str, str]]
    params: GenParams
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    regenerate_of: str | None = None
    source: str = "api"


def _content(i: int, content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": "..."}] parts
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported.")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts.")


def _number(body: dict[str, Any], name: str, lo: float, hi: float, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ApiError(400, f"{name} must be a number from {lo:g} to {hi:g}, not {value!r}.")
    return float(value)


def _integer(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ApiError(400, f"{name} must be an integer, not {value!r}.")
    return value


def parse_chat_request(body: Any, limits: Limits) -> ChatRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects.")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise ApiError(400, f"messages[{i}] must have role system, user or assistant.")
        messages.append({"role": m["role"], "content": _content(i, m.get("content"))})
    if (_integer(body, "n") or 1) != 1:
        raise ApiError(400, "n must be 1 here; send several requests for several responses.")
    if body.get("tools") or body.get("functions"):
        raise ApiError(400, "Tool and function calls are not supported by cai-kit serve.")
    max_tokens = _integer(body, "max_completion_tokens") or _integer(body, "max_tokens")
    if max_tokens is None:
        max_tokens = min(limits.default_max_tokens, limits.max_tokens)
    if not 1 <= max_tokens <= limits.max_tokens:
        raise ApiError(
            400,
            f"max_tokens must be from 1 to {limits.max_tokens} on this server, not {max_tokens} "
            "(the server's --max-tokens-limit).",
        )
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "stop must be a string or a list of at most 4 strings.")
    seed = _integer(body, "seed")
    logprobs = bool(body.get("logprobs"))
    top = _integer(body, "top_logprobs") or 0
    if not 0 <= top <= 20:
        raise ApiError(400, f"top_logprobs must be from 0 to 20, not {top}.")
    stream_options = body.get("stream_options") or {}
    regenerate_of = body.get("regenerate_of")
    if regenerate_of is not None and not isinstance(regenerate_of, str):
        raise ApiError(400, "regenerate_of must be the id of an earlier chat completion.")
    params = GenParams(
        temperature=_number(body, "temperature", 0.0, 2.0, limits.default_temperature),
        top_p=_number(body, "top_p", 0.0, 1.0, 1.0),
        max_tokens=max_tokens,
        # No seed means a fresh draw (like a hosted provider), never the backend's fixed default.
        seed=seed if seed is not None else random.SystemRandom().getrandbits(31),
        stop=tuple(stop),
        top_logprobs=max(top, 1) if logprobs else 0,
    )
    return ChatRequest(
        messages=messages,
        params=params,
        stream=bool(body.get("stream")),
        include_usage=isinstance(stream_options, dict)
        and bool(stream_options.get("include_usage")),
        logprobs=logprobs,
        regenerate_of=regenerate_of,
        source="page" if body.get("cai_kit_source") == "page" else "api",
    )


def _usage(c: Completion) -> dict[str, int]:
    u = c.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }


def _logprobs(c: Completion) -> dict[str, Any] | None:
    if not c.logprobs:
        return None
    return {
        "content": [
            {
                "token": t.token,
                "logprob": t.logprob,
                "top_logprobs": [{"token": k, "logprob": v} for k, v in t.top.items()],
            }
            for t in c.logprobs
        ]
    }


def completion_body(cid: str, model: str, req: ChatRequest, c: Completion) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish_reason or "stop",
                "logprobs": _logprobs(c) if req.logprobs else None,
            }
        ],
        "usage": _usage(c),
    }


def chunk_body(
    cid: str,
    model: str,
    created: int,
    delta: dict[str, str] | None = None,
    finish_reason: str | None = None,
    usage: Completion | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": []
        if usage is not None
        else [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = _usage(usage)
    return body
