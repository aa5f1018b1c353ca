"""`cai-kit serve` answers its own page and real API clients, never another web page.

A page anywhere on the web can make the user's browser send a "simple" POST (text/plain, no
preflight) to a server on loopback, or rebind its own name to 127.0.0.1 (DNS rebinding) so its
requests carry `Host: evil.example`. Without these checks it could generate on the user's
machine and plant ratings that become KTO/DPO data. Real HTTP against the real server here;
tests/test_serve_page.py does the same from a real browser.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from tests.fixtures.fault_server import FaultServer
from tests.fixtures.serve_server import ServeHandle, serve_process

EVIL = "http://evil.example"
CHAT = json.dumps({"messages": [{"role": "user", "content": "hi"}]})


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(sql).fetchall()


def _served_id(url: str) -> str:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}]).id


async def _send(
    method: str, url: str, data: str | None = None, **headers: str
) -> tuple[int, dict, dict]:
    """One request with exactly these headers (names with '_' for '-'); status, JSON, headers."""
    sent = {k.replace("_", "-"): v for k, v in headers.items()}
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, url, data=data, headers=sent, skip_auto_headers={"Content-Type"}) as r,
    ):
        body = await r.json() if r.content_type == "application/json" else {}
        return r.status, body, dict(r.headers)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/feedback"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/json"])
async def test_another_origin_is_refused_on_both_endpoints(
    serve_upstream: ServeHandle, fault_server: FaultServer, path: str, content_type: str
) -> None:
    """A page's no-preflight text/plain POST (and a JSON one too) is a 403, never a reply or a
    rating; the old server answered 200 to both."""
    cid = _served_id(serve_upstream.url)
    data = CHAT if "chat" in path else json.dumps({"completion_id": cid, "rating": -1})
    before = fault_server.requests
    status, body, headers = await _send(
        "POST", serve_upstream.url + path, data, Content_Type=content_type, Origin=EVIL
    )
    assert status == 403, body
    assert EVIL in body["error"]["message"] and "--cors-origin" in body["error"]["message"]
    assert "Access-Control-Allow-Origin" not in headers
    assert fault_server.requests == before  # nothing generated for the page
    assert _rows(serve_upstream.db, "SELECT COUNT(*) FROM ratings") == [(0,)]
    assert _rows(serve_upstream.db, "SELECT COUNT(*) FROM completions") == [(1,)]


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
                         ("POST", "/v1/feedback")],
)  # fmt: skip
async def test_a_host_that_is_not_this_server_is_refused(
    serve_upstream: ServeHandle, fault_server: FaultServer, method: str, path: str
) -> None:
    """DNS rebinding: evil.example now resolves to 127.0.0.1, so the page's requests are
    same-origin for the browser, but their Host names the attacker's domain."""
    port = urlsplit(serve_upstream.url).port
    cid = _served_id(serve_upstream.url)
    data = (CHAT if "chat" in path else json.dumps({"completion_id": cid, "rating": 1})) if (
        method == "POST") else None  # fmt: skip
    before = fault_server.requests
    status, body, _ = await _send(
        method, serve_upstream.url + path, data, Host=f"evil.example:{port}",
        Origin=f"http://evil.example:{port}", Content_Type="application/json",
    )  # fmt: skip
    assert status == 403, body
    assert (
        "evil.example" in body["error"]["message"] and "--allowed-host" in body["error"]["message"]
    )
    assert fault_server.requests == before
    assert _rows(serve_upstream.db, "SELECT COUNT(*) FROM ratings") == [(0,)]


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost"])
async def test_the_servers_own_page_origin_is_served(
    serve_upstream: ServeHandle, fault_server: FaultServer, name: str
) -> None:
    """What the chat page sends: Origin and Host both name this server (under either name)."""
    port = urlsplit(serve_upstream.url).port
    own = f"{name}:{port}"
    status, body, headers = await _send(
        "POST", serve_upstream.url + "/v1/chat/completions", CHAT, Host=own,
        Origin=f"http://{own}", Content_Type="application/json",
    )  # fmt: skip
    assert status == 200 and body["choices"][0]["message"]["content"].startswith("echo ")
    assert "Access-Control-Allow-Origin" not in headers  # same origin needs no CORS
    status, body, _ = await _send(
        "POST", serve_upstream.url + "/v1/feedback",
        json.dumps({"completion_id": body["id"], "rating": 1}), Host=own, Origin=f"http://{own}",
        Content_Type="application/json; charset=utf-8",
    )  # fmt: skip
    assert status == 200 and body["ok"] is True
    assert _rows(serve_upstream.db, "SELECT rating FROM ratings") == [(1,)]


async def test_json_endpoints_take_json_only(serve_upstream: ServeHandle) -> None:
    """Even without an Origin (curl, a script), a body that is not application/json is a 415."""
    for content_type in ["text/plain", "application/x-www-form-urlencoded", None]:
        headers = {"Content_Type": content_type} if content_type else {}
        for path in ["/v1/chat/completions", "/v1/feedback"]:
            status, body, _ = await _send("POST", serve_upstream.url + path, CHAT, **headers)
            assert status == 415, (path, content_type, body)
            assert "application/json" in body["error"]["message"]
    assert _rows(serve_upstream.db, "SELECT COUNT(*) FROM completions") == [(0,)]


def test_openai_sdk_and_cai_kit_chat_send_no_origin_and_still_work(
    serve_upstream: ServeHandle,
) -> None:
    cid = _served_id(serve_upstream.url)  # the openai SDK
    res = CliRunner().invoke(
        app, ["chat", "hi", "--model", "m", "--api-base", serve_upstream.url + "/v1"]
    )
    assert res.exit_code == 0, res.output
    texts = [t for (i, t) in _rows(serve_upstream.db, "SELECT id, text FROM completions")
             if i != cid]  # fmt: skip
    assert [res.output.strip()] == texts


async def test_cors_origin_flag_allows_that_page_only(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """`--cors-origin` through the real CLI process: preflight and the request itself get CORS
    headers for that origin; any other origin is still refused, preflight included."""
    allowed = "http://localhost:3000"
    proc, url = serve_process(
        "openai/m", "--api-base", fault_server.base_url, "--feedback-db", str(tmp_path / "f.db"),
        "--cors-origin", allowed, "--cors-origin", "https://app.example.org",
    )  # fmt: skip
    try:
        status, _, headers = await _send(
            "OPTIONS", url + "/v1/chat/completions", Origin=allowed,
            Access_Control_Request_Method="POST",
            Access_Control_Request_Headers="authorization,content-type",
        )  # fmt: skip
        assert status == 204
        assert headers["Access-Control-Allow-Origin"] == allowed
        assert "POST" in headers["Access-Control-Allow-Methods"]
        allowed_headers = headers["Access-Control-Allow-Headers"].lower()
        assert "content-type" in allowed_headers and "authorization" in allowed_headers
        assert "Origin" in headers["Vary"]
        status, body, headers = await _send(
            "POST", url + "/v1/chat/completions", CHAT, Origin=allowed,
            Content_Type="application/json",
        )  # fmt: skip
        assert status == 200 and headers["Access-Control-Allow-Origin"] == allowed, body
        status, _, headers = await _send(
            "POST", url + "/v1/feedback", json.dumps({"completion_id": body["id"], "rating": 1}),
            Origin="https://app.example.org", Content_Type="application/json",
        )  # fmt: skip
        assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://app.example.org"
        for method in ["OPTIONS", "POST"]:
            status, body, headers = await _send(
                method, url + "/v1/chat/completions", CHAT if method == "POST" else None,
                Origin=EVIL, Content_Type="application/json",
                Access_Control_Request_Method="POST",
            )  # fmt: skip
            assert status == 403 and "Access-Control-Allow-Origin" not in headers, body
    finally:
        proc.terminate()
        proc.wait(30)
    assert fault_server.paid == 1


async def test_allowed_host_flag_adds_a_name(fault_server: FaultServer, tmp_path: Path) -> None:
    """`--allowed-host` for a name of this machine (a reverse proxy, /etc/hosts): that name is
    served, on its own or with a given port; other names still are not."""
    proc, url = serve_process(
        "openai/m", "--api-base", fault_server.base_url, "--feedback-db", str(tmp_path / "f.db"),
        "--allowed-host", "chat.internal", "--allowed-host", "proxy.internal:443",
    )  # fmt: skip
    port = urlsplit(url).port
    try:
        for host, want in [("chat.internal", 200), (f"chat.internal:{port}", 200),
                           ("proxy.internal:443", 200), ("proxy.internal", 403),
                           (f"proxy.internal:{port}", 403), (f"other.internal:{port}", 403)]:  # fmt: skip
            status, body, _ = await _send("GET", url + "/v1/models", Host=host)
            assert status == want, (host, body)
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [("--cors-origin", "*", "every web page"),
     ("--cors-origin", "http://app.example/path", "scheme://host[:port]"),
     ("--cors-origin", "app.example", "scheme://host[:port]"),
     ("--allowed-host", "http://app.example", "NAME or NAME:PORT")],
)  # fmt: skip
def test_bad_cors_origin_or_allowed_host_is_one_sentence(
    tmp_path: Path, flag: str, value: str, says: str
) -> None:
    res = CliRunner().invoke(
        app, ["serve", "local", "--feedback-db", str(tmp_path / "f.db"), flag, value]
    )
    assert res.exit_code == 1, res.output
    assert says in res.output and "Traceback" not in res.output


def test_help_names_the_security_flags() -> None:
    res = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert "--cors-origin" in res.output and "--allowed-host" in res.output
