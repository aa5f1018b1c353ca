"""Request guards for cai-kit's local web pages (`cai-kit review`; usable by any aiohttp app).

A page served on loopback is still reachable from every web page the user's browser opens: a
foreign site can POST to http://127.0.0.1:PORT (CSRF) or rebind its own name to 127.0.0.1
(DNS rebinding) and read the answers. Three checks close that:

- **Host**: on a loopback bind, the Host header must be a loopback name (127.0.0.1,
  localhost, [::1]) with the bound port; a rebound foreign name is refused (403).
- **Origin**: a request that carries an Origin must come from the page's own origin (403).
- **Content-Type**: a request with a body must say `application/json` (415): a cross-site
  form or `text/plain` fetch cannot send JSON without a CORS preflight, which is never
  answered here.

    guard = Guard(host="127.0.0.1")
    app = web.Application(middlewares=[guard.middleware])
    ... bind ...; guard.port = bound_port

Errors are `GuardError(status, message)`; the app's error middleware turns them into JSON.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class GuardError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_host(value: str) -> tuple[str, int | None]:
    """'127.0.0.1:8080' -> ('127.0.0.1', 8080); '[::1]:80' -> ('::1', 80); no port -> None."""
    try:
        parts = urlsplit(f"//{value}")
        return (parts.hostname or "", parts.port)
    except ValueError:
        return ("", None)


@dataclass
class Guard:
    host: str  # the address bound
    port: int = 0  # the port bound (set once known: binding port 0 picks one)

    def check(self, method: str, headers: Any) -> None:
        host_header = headers.get("Host", "")
        name, port = _split_host(host_header)
        if is_loopback(self.host) and (
            name.lower() not in LOOPBACK_NAMES or (port or 80) != self.port
        ):
            raise GuardError(
                403,
                f"Refused: Host {host_header!r} is not this loopback server "
                f"(open http://127.0.0.1:{self.port}/).",
            )
        origin = headers.get("Origin")
        if origin is not None and origin != "null":
            o = urlsplit(origin)
            try:
                same = (
                    o.scheme == "http"
                    and (o.hostname or "") == name.lower()
                    and (o.port or 80) == (port or 80)
                )
            except ValueError:
                same = False
            if not same:
                raise GuardError(403, f"Refused: requests from origin {origin!r} are not allowed.")
        elif origin == "null":
            raise GuardError(403, "Refused: requests from an opaque origin are not allowed.")
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            ctype = headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                raise GuardError(
                    415, f"Send the request body as application/json, not {ctype or 'nothing'}."
                )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.check(request.method, request.headers)
        return await handler(request)
