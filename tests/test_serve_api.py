"""`cai-kit serve` through real clients (openai SDK, litellm, `cai-kit chat --api-base`),
streaming included, and its answers to bad input. The served model is the scripted provider
(`fault_server`, through --api-base) except where the embedded model is named."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import aiohttp
import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.serve.protocol import Limits
from tests.fixtures.fault_server import FaultServer
from tests.fixtures.serve_server import ServeHandle, start_serve


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(sql).fetchall()


def test_openai_sdk_non_streaming_reply_is_stored_and_rateable(serve_upstream: ServeHandle) -> None:
    import openai

    client = openai.OpenAI(base_url=serve_upstream.url + "/v1", api_key="unused")
    r = client.chat.completions.create(
        model="anything", messages=[{"role": "user", "content": "Hello there"}], seed=7
    )
    text = r.choices[0].message.content
    assert text.startswith("echo ") and r.model == "openai/upstream"
    assert [m.id for m in client.models.list().data] == ["openai/upstream"]
    stored = _rows(serve_upstream.db, "SELECT id, text, messages, params FROM completions")
    assert [(cid, t) for cid, t, _, _ in stored] == [(r.id, text)]
    assert json.loads(stored[0][2]) == [{"role": "user", "content": "Hello there"}]
    assert json.loads(stored[0][3])["seed"] == 7
    ok = client.post("/feedback", body={"completion_id": r.id, "rating": 1}, cast_to=object)
    assert ok == {"ok": True, "completion_id": r.id, "rating": 1}
    assert _rows(serve_upstream.db, "SELECT completion_id, rating FROM ratings") == [(r.id, 1)]


def test_openai_sdk_streaming_matches_stored_completion(serve_upstream: ServeHandle) -> None:
    import openai

    client = openai.OpenAI(base_url=serve_upstream.url + "/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Stream please"}], stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len({c.id for c in chunks}) == 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert _rows(serve_upstream.db, "SELECT id, text FROM completions") == [(chunks[0].id, text)]


def test_no_seed_means_a_fresh_drawn_seed_so_regenerate_differs(
    serve_upstream: ServeHandle, fault_server: FaultServer
) -> None:
    """A backend with a fixed default seed (llama.cpp: 0) would repeat itself on regenerate."""
    import openai

    client = openai.OpenAI(base_url=serve_upstream.url + "/v1", api_key="unused")
    msgs = [{"role": "user", "content": "Same question"}]
    texts = {client.chat.completions.create(model="m", messages=msgs).choices[0].message.content
             for _ in range(3)}  # fmt: skip
    seeds = [b.get("seed") for b in fault_server.bodies]
    assert len(texts) == 3 and len(set(seeds)) == 3 and all(isinstance(x, int) for x in seeds)
    stored = [
        json.loads(p)["seed"] for (p,) in _rows(serve_upstream.db, "SELECT params FROM completions")
    ]
    assert sorted(stored) == sorted(seeds)  # the seed that made each reply is kept with it


async def test_litellm_reaches_serve_streaming_and_not(serve_upstream: ServeHandle) -> None:
    import litellm

    from cai_kit.llm.base import GenParams
    from cai_kit.llm.registry import get_backend

    backend = get_backend("litellm:openai/served", api_base=serve_upstream.url + "/v1")
    c = await backend.chat([{"role": "user", "content": "via litellm"}], GenParams(seed=3))
    await backend.aclose()
    assert c.text.startswith("echo ")
    stream = await litellm.acompletion(
        model="openai/served", api_base=serve_upstream.url + "/v1", api_key="unused",
        messages=[{"role": "user", "content": "via litellm, streamed"}], stream=True,
    )  # fmt: skip
    streamed = "".join([ch.choices[0].delta.content or "" async for ch in stream])
    texts = [
        t for (t,) in _rows(serve_upstream.db, "SELECT text FROM completions ORDER BY created")
    ]
    assert texts == [c.text, streamed]


def test_cai_kit_chat_api_base_prints_the_served_reply(serve_upstream: ServeHandle) -> None:
    res = CliRunner().invoke(
        app,
        [
            "chat",
            "Hi from the CLI",
            "--model",
            "openai/x",
            "--api-base",
            serve_upstream.url + "/v1",
        ],
    )
    assert res.exit_code == 0, res.output
    [(text,)] = _rows(serve_upstream.db, "SELECT text FROM completions")
    assert res.output.strip() == text


@pytest.mark.parametrize("listed", ["fault-model", "local", "hf:runs/x", "openai/upstream"])
def test_chat_api_base_without_model_asks_the_servers_own_model(
    fault_server: FaultServer, listed: str
) -> None:
    """`cai-kit chat "hi" --api-base URL` (as README shows) once answered from the embedded
    model, since --model defaulted to local; now it asks the server for its first listed model,
    even one named like a model string of this machine (`cai-kit serve local` lists 'local')."""
    fault_server.models = [listed, "second-model"]
    res = CliRunner().invoke(
        app, ["chat", "hi", "--api-base", fault_server.base_url, "--seed", "3"]
    )
    assert res.exit_code == 0, res.output
    assert fault_server.paid == 1 and fault_server.bodies[0]["model"] == listed
    assert res.output.strip().startswith("echo ")


def test_chat_api_base_to_serve_without_model_is_stored_there(serve_upstream: ServeHandle) -> None:
    res = CliRunner().invoke(
        app, ["chat", "Hi from the CLI", "--api-base", serve_upstream.url + "/v1"]
    )
    assert res.exit_code == 0, res.output
    [(text, model)] = _rows(serve_upstream.db, "SELECT text, model FROM completions")
    assert res.output.strip() == text and model == "openai/upstream"


@pytest.mark.parametrize("model", ["local", "hf:runs/model"])
def test_chat_embedded_model_with_api_base_is_one_sentence(
    fault_server: FaultServer, model: str
) -> None:
    res = CliRunner().invoke(
        app, ["chat", "hi", "--model", model, "--api-base", fault_server.base_url]
    )
    assert res.exit_code == 1, res.output
    assert "ignores --api-base" in res.output and "Traceback" not in res.output
    assert fault_server.requests == 0


def test_chat_api_base_with_nothing_listening_is_one_sentence() -> None:
    import socket

    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = CliRunner().invoke(app, ["chat", "hi", "--api-base", f"http://127.0.0.1:{port}/v1"])
    assert res.exit_code == 1, res.output
    assert f"127.0.0.1:{port}/v1/models" in res.output and "--model" in res.output
    assert "Traceback" not in res.output


def test_rating_again_replaces_it_and_a_retry_does_not_duplicate(
    serve_upstream: ServeHandle,
) -> None:
    import openai

    client = openai.OpenAI(base_url=serve_upstream.url + "/v1", api_key="unused")
    cid = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}]).id
    for rating, comment in [(1, None), (1, None), (-1, "actually wrong")]:
        client.post("/feedback", body={"completion_id": cid, "rating": rating, "comment": comment},
                    cast_to=object)  # fmt: skip
    assert _rows(serve_upstream.db, "SELECT completion_id, rating, comment FROM ratings") == [
        (cid, -1, "actually wrong")
    ]


async def _call(
    url: str, path: str, data: bytes | str, headers: dict | None = None
) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **(headers or {})}
    async with aiohttp.ClientSession() as s, s.post(url + path, data=data, headers=headers) as r:
        return r.status, await r.json()


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/v1/chat/completions", "{not json", 400, "not valid JSON"),
        ("/v1/chat/completions", "[1, 2]", 400, "JSON object"),
        ("/v1/chat/completions", '{"messages": []}', 400, "non-empty list"),
        ("/v1/chat/completions", '{"messages": [{"role": "tool", "content": "x"}]}', 400, "role"),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "x"}], "max_tokens": 5000}',
         400, "max_tokens must be from 1 to 64"),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
         400, "temperature"),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "x"}], "n": 3}', 400, "n must be 1"),
        ("/v1/feedback", '{"completion_id": "chatcmpl-nope", "rating": 1}', 404, "No completion with id"),
        ("/v1/feedback", '{"completion_id": "chatcmpl-nope", "rating": 5}', 400, "rating must be 1"),
        ("/v1/feedback", '{"completion_id": "chatcmpl-nope", "rating": true}', 400, "rating must be 1"),
        ("/v1/feedback", '{"rating": 1}', 400, "completion_id"),
        ("/v1/feedback", "nope", 400, "not valid JSON"),
        ("/v1/nothing-here", "{}", 404, "Not Found"),
    ],
)  # fmt: skip
async def test_bad_input_gets_a_clear_4xx(
    fault_server: FaultServer, tmp_path: Path, path: str, body: str, status: int, says: str
) -> None:
    limits = Limits(max_tokens=64)
    h = start_serve("openai/m", api_base=fault_server.base_url, db=tmp_path / "f.db", limits=limits)
    try:
        got, payload = await _call(h.url, path, body)
    finally:
        h.stop()
    assert got == status
    assert says in payload["error"]["message"] and "Traceback" not in json.dumps(payload)
    assert fault_server.requests == 0  # nothing reached the model


async def test_oversized_body_is_413_and_never_reaches_the_model(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    h = start_serve("openai/m", api_base=fault_server.base_url, db=tmp_path / "f.db",
                    max_body_bytes=10_000)  # fmt: skip
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 20_000}]})
    try:
        status, payload = await _call(h.url, "/v1/chat/completions", big)
    finally:
        h.stop()
    assert status == 413 and "10000 bytes" in payload["error"]["message"]
    assert fault_server.requests == 0


async def test_api_key_is_required_on_every_api_endpoint(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    h = start_serve("openai/m", api_base=fault_server.base_url, db=tmp_path / "f.db",
                    api_key="test-key")  # fmt: skip
    chat = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    try:
        async with aiohttp.ClientSession() as s:
            for method, path, data in [("GET", "/v1/models", None),
                                       ("POST", "/v1/chat/completions", chat),
                                       ("POST", "/v1/feedback", "{}"),
                                       ("GET", "/v1/no-such-route", None)]:  # fmt: skip
                for headers in [{}, {"Authorization": "Bearer wrong"}]:
                    async with s.request(method, h.url + path, data=data, headers=headers) as r:
                        assert r.status == 401, (path, headers)
                        assert "API key" in (await r.json())["error"]["message"]
            good = {"Authorization": "Bearer test-key", "Content-Type": "application/json"}
            async with s.post(h.url + "/v1/chat/completions", data=chat, headers=good) as r:
                assert r.status == 200
            async with s.get(h.url + "/") as r:  # the page itself is static; it asks for the key
                assert r.status == 200 and "cai-kit chat" in await r.text()
    finally:
        h.stop()
    assert fault_server.paid == 1


async def test_upstream_failure_is_a_503_with_a_sentence(
    fault_server: FaultServer, serve_upstream: ServeHandle
) -> None:
    fault_server.script = ["500"]
    status, payload = await _call(
        serve_upstream.url, "/v1/chat/completions",
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
    )  # fmt: skip
    assert status == 503 and "unavailable" in payload["error"]["message"]
    assert _rows(serve_upstream.db, "SELECT COUNT(*) FROM completions") == [(0,)]


def test_serving_beyond_loopback_without_a_key_is_refused(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app, ["serve", "local", "--host", "0.0.0.0", "--feedback-db", str(tmp_path / "f.db")],
        env={"CAI_KIT_SERVE_API_KEY": ""},
    )  # fmt: skip
    assert res.exit_code == 1
    assert "CAI_KIT_SERVE_API_KEY" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_embedded_model_streams_real_tokens(tmp_path: Path) -> None:
    import httpx
    import openai

    h = start_serve("local", db=tmp_path / "f.db")
    try:
        with httpx.stream("POST", h.url + "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "Name three colours."}], "stream": True,
            "max_tokens": 24, "seed": 1}, timeout=120) as r:  # fmt: skip
            assert r.headers["X-Cai-Kit-Stream"] == "tokens"
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        client = openai.OpenAI(base_url=h.url + "/v1", api_key="unused")
        again = client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": "Name three colours."}],
            max_tokens=24, seed=1,
        )  # fmt: skip
    finally:
        h.stop()
    deltas = [json.loads(e[6:]) for e in events[:-1]]
    text = "".join(d["choices"][0]["delta"].get("content", "") for d in deltas)
    assert events[-1] == "data: [DONE]" and len(deltas) > 5 and text.strip()
    assert again.choices[0].message.content == text  # same seed: streaming changes nothing
    stored = [t for (t,) in _rows(h.db, "SELECT text FROM completions ORDER BY created")]
    assert stored == [text, text]
