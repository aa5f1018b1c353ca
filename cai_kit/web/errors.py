"""`ApiError`: what a handler of `serve` or `review` raises to answer the client with an HTTP
status and one sentence (`{"error": {"message", "type", "code"}}` on the wire).

    raise ApiError(400, "rating must be 1 or -1, not 3.")
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error for the client: HTTP status + one sentence (OpenAI error shape on the wire)."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.status}}
