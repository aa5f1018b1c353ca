"""Who may call `cai-kit serve` or `cai-kit review`: its own page and real API clients, never
another web page.

    app = web.Application(middlewares=[..., guard, ...]); app.on_response_prepare.append(cors_headers)
    # guard's answers all carry frame-ancestors 'none' and X-Frame-Options: DENY
    origin = parse_origin("http://localhost:3000")     # ValueError with one sentence if bad
    body = await read_json(request)                    # 415 unless JSON, 400 unless it parses
    host = parse_allowed_host("chat.internal:443")

Any web page can make its visitor's browser send a "simple" POST (`text/plain`, no preflight)
to a server on loopback, or rebind its own domain to 127.0.0.1 (DNS rebinding) so that its
requests are same-origin for the browser but carry `Host: evil.example`. Without a key either
would generate on the user's machine and plant ratings that become training data. So, before
the key is looked at:

- **Host** must name the address served: the local address the connection arrived on, with its
  port; on a loopback connection also `localhost`, `127.0.0.1` and `[::1]` with that port; or a
  name given with `--allowed-host` (`NAME`: any port, `NAME:PORT`: that port). Otherwise 403.
- **Origin** (browsers send it; the openai SDK, litellm, curl and `cai-kit chat` do not): when
  present it must be this server itself (the same host and port as Host) or one given with
  `--cors-origin`. Otherwise 403. Only an allowed `--cors-origin` gets CORS headers, preflight
  (OPTIONS) included.
- **Content-Type** `application/json` for JSON bodies (415 otherwise: `check_json_body`): a
  page may send text/plain without asking the server first, but not JSON.
- **Framing**: every answer says no page may frame it (`Content-Security-Policy:
  frame-ancestors 'none'`, and `X-Frame-Options: DENY` for older browsers), so another site
  cannot show the page in a frame and lure clicks and keys into it (a framed page's requests
  would carry the page's own origin and pass the Origin check).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from cai_kit.web.errors import ApiError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_CORS = web.RequestKey("cors_origin", str)  # the allowed cross-origin this request came from
_ALLOW_HEADERS = "Authorization, Content-Type"


def _split_host(value: str) -> tuple[str, int | None]:
    """'name:port', '[v6]:port', 'name' -> (name lowercased without brackets, port or None)."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        name, port = value.split(":")
    else:
        name, port = value, ""
    if port and not port.isdigit():
        raise ValueError(f"{value!r} has a port that is not a number")
    return name, int(port) if port else None


def _same_address(name: str, address: str) -> bool:
    try:
        return ipaddress.ip_address(name) == ipaddress.ip_address(address)
    except ValueError:
        return False


def is_loopback(address: str) -> bool:
    """A loopback address or name (`localhost`, `127.0.0.1`, `[::1]`)?"""
    address = address.strip("[]")
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def parse_origin(value: str) -> str:
    """A --cors-origin value -> its canonical form 'scheme://host[:port]' (ValueError if not)."""
    if value.strip() in ("*", "null"):
        raise ValueError(
            f"--cors-origin {value.strip()!r} would let every web page use this server and write "
            "ratings; name each page's origin, e.g. --cors-origin http://localhost:3000."
        )
    parts = urlsplit(value.strip())
    if (
        parts.scheme not in ("http", "https")
        or not parts.netloc
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        raise ValueError(
            f"--cors-origin {value!r} is not an origin: write scheme://host[:port], "
            "e.g. http://localhost:3000 (no path)."
        )
    return f"{parts.scheme}://{parts.netloc}".lower()


def parse_allowed_host(value: str) -> str:
    """A --allowed-host value -> 'name' or 'name:port', lowercased (ValueError if not)."""
    try:
        name, port = _split_host(value)
    except ValueError:
        name, port = "", None
    if not name or "/" in value or "@" in value or " " in name:
        raise ValueError(
            f"--allowed-host {value!r} is not a host name: write NAME or NAME:PORT, "
            "e.g. chat.internal or chat.internal:443 (no scheme, no path)."
        )
    shown = f"[{name}]" if ":" in name else name
    return shown if port is None else f"{shown}:{port}"


def host_allowed(host: str, local: tuple[str, int] | None, extra: tuple[str, ...]) -> bool:
    """Does the Host header name this server? `local` is (address, port) the connection hit."""
    try:
        name, port = _split_host(host)
    except ValueError:
        return False
    for entry in extra:
        e_name, e_port = _split_host(entry)
        if name == e_name and (e_port is None or e_port == port):
            return True
    if local is None:
        return False
    address, served_port = local
    if (port or 80) != served_port:
        return False
    return _same_address(name, address) or (is_loopback(address) and name in LOOPBACK_NAMES)


def _same_origin(origin: str, host: str | None) -> bool:
    """The page this server serves: its Origin names the host and port of the Host header."""
    parts = urlsplit(origin)
    return bool(host) and parts.scheme in ("http", "https") and parts.netloc == host.lower()


def _local(request: web.Request) -> tuple[str, int] | None:
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    return (str(sock[0]), int(sock[1])) if isinstance(sock, tuple) and len(sock) >= 2 else None


def _cors_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": "X-Cai-Kit-Stream",
        "Vary": "Origin",
    }


def guard(cors_origins: tuple[str, ...], allowed_hosts: tuple[str, ...], flags: bool = True) -> Any:
    """The middleware: Host, then Origin (answering an allowed origin's preflight itself).
    `flags`: the refusals name `--allowed-host` / `--cors-origin` (False for a server without
    them, such as `cai-kit review`)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        host = request.headers.get("Host")
        if host is not None and not host_allowed(host, _local(request), allowed_hosts):
            raise ApiError(
                403,
                f"Host {host!r} does not name this server (a web page using DNS rebinding "
                "sends that); use the address it serves"
                + (", or start it with --allowed-host NAME." if flags else "."),
                "forbidden",
            )
        origin = request.headers.get("Origin")
        if origin is not None:
            origin = origin.strip().lower()
            if origin in cors_origins:
                request[_CORS] = origin
                if request.method == "OPTIONS":  # preflight: answered here, before the key
                    return web.Response(
                        status=204,
                        headers={
                            **_cors_headers(origin),
                            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                            "Access-Control-Allow-Headers": _ALLOW_HEADERS,
                            "Access-Control-Max-Age": "600",
                        },
                    )
            elif not _same_origin(origin, host):
                raise ApiError(
                    403,
                    f"Requests from the web page at {origin} are refused: this server answers "
                    "its own page and API clients only"
                    + (
                        f" (start it with --cors-origin {origin} to allow that page)."
                        if flags
                        else "."
                    ),
                    "forbidden",
                )
        response = await handler(request)
        if not response.prepared:  # a stream sent its headers already: it is no page
            deny_framing(response)
        return response

    return middleware


def deny_framing(response: web.StreamResponse) -> None:
    """No page may show this answer in a frame: `frame-ancestors 'none'` joins the answer's
    Content-Security-Policy (or is one), and `X-Frame-Options: DENY` for older browsers."""
    csp = response.headers.get("Content-Security-Policy", "")
    if "frame-ancestors" not in csp:
        csp = f"{csp}; frame-ancestors 'none'" if csp else "frame-ancestors 'none'"
        response.headers["Content-Security-Policy"] = csp
    response.headers["X-Frame-Options"] = "DENY"


async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: an allowed --cors-origin may read every answer, errors included."""
    origin = request.get(_CORS)
    if origin:
        response.headers.update(_cors_headers(origin))


def check_json_body(request: web.Request) -> None:
    """415 unless the body is declared JSON (a page can send text/plain without a preflight)."""
    if request.content_type != "application/json":
        given = request.headers.get("Content-Type") or "none"
        raise ApiError(
            415,
            f"Send the body as JSON with 'Content-Type: application/json' (this request's "
            f"Content-Type: {given}).",
            "unsupported_media_type",
        )


async def read_json(request: web.Request) -> Any:
    """The request's body as JSON: 415 unless declared JSON, 400 unless it parses; past the
    app's `client_max_size` aiohttp raises HTTPRequestEntityTooLarge (a 413 for the client)."""
    check_json_body(request)
    raw = await request.read()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"The request body is not valid JSON ({exc}).") from None
