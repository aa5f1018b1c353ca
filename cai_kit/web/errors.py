"""How `serve` and `review` answer an error: `ApiError` and the one error middleware.

    raise ApiError(400, "rating must be 1 or -1, not 3.")          # in a handler
    app = web.Application(middlewares=[error_middleware(log, too_large="..."), ...])

Every error is one sentence for the client, `{"error": {"message", "type", "code"}}` (the
OpenAI shape) with its 4xx/5xx status: an `ApiError` as raised, a body past the app's size
limit as 413 (`too_large` says which limit and how to raise it), aiohttp's own 4xx (no such
route, wrong method) as `REASON: METHOD PATH`. A bug is logged on the app's logger with its
traceback and answered 500 with one sentence, never the traceback. Every message goes through
`cai_kit.errors.redact` (the app's own key given as `secrets`, env keys, key-shaped strings).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from cai_kit.errors import redact

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error for the client: HTTP status + one sentence (OpenAI error shape on the wire)."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.status}}


def error_middleware(log: logging.Logger, too_large: str, secrets: Sequence[str] = ()) -> Any:
    """The middleware (first in the app's list, so it answers for the guard too)."""
    hidden = [s for s in secrets if s]

    def answer(status: int, message: str, type_: str = "invalid_request_error") -> web.Response:
        return web.json_response(
            ApiError(status, redact(message, hidden), type_).body(), status=status
        )

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return answer(exc.status, exc.message, exc.type)
        except web.HTTPRequestEntityTooLarge:
            return answer(413, too_large)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return answer(exc.status, f"{exc.reason}: {request.method} {request.path}")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("bug while serving %s %s", request.method, request.path)
            return answer(
                500, "Internal server error; the server's log has the details.", "server_error"
            )

    return errors
