"""The chat page in a real headless Chromium (Debian's chromium + chromedriver, via Selenium).

Set CAI_KIT_SCREENSHOT=docs/img/serve.png to refresh the README's screenshot from this test.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from tests.fixtures.browser import needs_browser, wait_for
from tests.fixtures.fault_server import FaultServer
from tests.fixtures.serve_server import ServeHandle, start_serve

pytestmark = needs_browser


def _wait(driver: Any, until: Any, timeout: float = 300) -> Any:
    return wait_for(driver, until, timeout, poll=0.1)


def _replies(driver: Any) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, ".reply[data-id]")


def _send(driver: Any, text: str, n_before: int) -> Any:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "prompt").send_keys(text)
    driver.find_element(By.ID, "send").click()
    return _wait(driver, lambda d: len(_replies(d)) > n_before and _replies(d)[-1])


def _click(reply: Any, css: str) -> None:
    from selenium.webdriver.common.by import By

    reply.find_element(By.CSS_SELECTOR, css).click()


def _text(driver: Any, reply: Any) -> str:
    return driver.execute_script("return arguments[0].querySelector('.text').textContent", reply)


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(sql).fetchall()


def _assert_rating_buttons_have_words(reply: Any) -> None:
    """Words and a drawn icon, so the buttons read without an emoji font."""
    from selenium.webdriver.common.by import By

    for css, word in [(".up", "Good"), (".down", "Bad")]:
        button = reply.find_element(By.CSS_SELECTOR, css)
        icon = button.find_element(By.CSS_SELECTOR, "svg")
        assert button.text == word and button.is_displayed()
        assert icon.is_displayed() and icon.size["width"] > 0 and icon.size["height"] > 0


@pytest.mark.slow
def test_page_chat_rate_regenerate_then_export(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    from cai_kit.serve.protocol import Limits

    # Short replies keep the embedded model quick on a busy 2-core CI machine.
    h = start_serve("local", db=tmp_path / "feedback.db", limits=Limits(default_max_tokens=48))
    try:
        browser.get(h.url + "/")
        _wait(browser, lambda d: "local" in d.find_element(By.ID, "model-name").text)
        first = _send(browser, "Give me one tip for learning to cook.", 0)
        text1 = _text(browser, first)
        _click(first, ".down")
        _wait(browser, lambda d: first.get_attribute("data-rating") == "-1")
        _click(first, ".regen")
        second = _wait(browser, lambda d: len(_replies(d)) == 2 and _replies(d)[-1])
        text2 = _text(browser, second)
        _click(second, ".up")
        _wait(browser, lambda d: second.get_attribute("data-rating") == "1")
        second.find_element(By.CSS_SELECTOR, ".comment input").send_keys("practical")
        _click(second, ".save-comment")
        _wait(browser, lambda d: second.find_element(By.CSS_SELECTOR, ".saved").text == "saved")
        assert "older" in first.get_attribute("class")  # the first reply is shown as replaced
        _assert_rating_buttons_have_words(second)
        if shot := os.environ.get("CAI_KIT_SCREENSHOT"):
            _send(browser, "Thanks! And one for baking?", 2)
            browser.save_screenshot(shot)
    finally:
        h.stop()
    id1, id2 = first.get_attribute("data-id"), second.get_attribute("data-id")
    rows = _rows(
        h.db, "SELECT id, text, turn, source, regenerate_of FROM completions ORDER BY created"
    )
    assert [(r[0], r[1]) for r in rows[:2]] == [(id1, text1), (id2, text2)] and text1 != text2
    assert rows[0][2] == rows[1][2] and {r[3] for r in rows} == {"page"} and rows[1][4] == id1
    assert _rows(h.db, "SELECT completion_id, rating, comment FROM ratings ORDER BY rating") == [
        (id1, -1, None), (id2, 1, "practical"),
    ]  # fmt: skip

    runner = CliRunner()
    res = runner.invoke(app, ["export", "kto", str(h.db), "--out", str(tmp_path / "kto")])
    assert res.exit_code == 0 and "1 desirable, 1 undesirable" in res.output, res.output
    kto = [json.loads(x) for x in (tmp_path / "kto" / "train.jsonl").read_text().splitlines()]
    prompt = [{"role": "user", "content": "Give me one tip for learning to cook."}]
    assert sorted((r["completion"][0]["content"], r["label"]) for r in kto) == sorted(
        [(text1, False), (text2, True)]
    )
    assert all(r["prompt"] == prompt for r in kto)
    res = runner.invoke(app, ["export", "prefs", str(h.db), "--out", str(tmp_path / "pairs")])
    assert res.exit_code == 0, res.output
    [pair] = [json.loads(x) for x in (tmp_path / "pairs" / "train.jsonl").read_text().splitlines()]
    assert pair == {"prompt": prompt, "chosen": [{"role": "assistant", "content": text2}],
                    "rejected": [{"role": "assistant", "content": text1}]}  # fmt: skip


def test_page_shows_model_text_as_text_never_as_html(
    browser: Any, fault_server: FaultServer, serve_upstream: ServeHandle
) -> None:
    from selenium.webdriver.common.by import By

    evil = "<img src=x onerror=\"document.title='pwned'\"><b>bold</b> & <script>x()</script>"
    fault_server.responder = lambda body, rng: evil
    browser.get(serve_upstream.url + "/")
    reply = _send(browser, "<i>hi</i>", 0)
    assert _text(browser, reply) == evil
    assert browser.find_element(By.CSS_SELECTOR, ".user").text == "<i>hi</i>"
    log = browser.find_element(By.ID, "log")
    assert log.find_elements(By.CSS_SELECTOR, "img, b, i, script") == []
    assert browser.title != "pwned" and "openai/upstream" in browser.title
    _assert_rating_buttons_have_words(reply)
    _click(reply, ".up")  # the page's own POSTs (same origin) still get through
    _wait(browser, lambda d: reply.get_attribute("data-rating") == "1")


# From another origin (the scripted provider's page, http://127.0.0.1:ITS_PORT), the way an
# attacker's page would: fetch() with whatever the page may send without asking the server.
_FROM_ANOTHER_PAGE = """
const [url, cid, mode, done] = arguments;
const sends = [["/v1/chat/completions", {messages: [{role: "user", content: "from another page"}]}],
               ["/v1/feedback", {completion_id: cid, rating: -1}]];
(async () => {
  const out = [];
  for (const [path, body] of sends) {
    const type = mode === "no-cors" ? "text/plain" : "application/json";
    try {
      const r = await fetch(url + path, {method: "POST", mode, headers: {"Content-Type": type},
                                         body: JSON.stringify(body)});
      out.push([r.type, r.status, r.type === "opaque" ? null : await r.json()]);
    } catch (e) { out.push(["error", 0, String(e)]); }
  }
  done(out);
})();
"""


def _served_id(url: str) -> str:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}]).id


def test_another_web_page_cannot_generate_or_rate(
    browser: Any, fault_server: FaultServer, serve_upstream: ServeHandle
) -> None:
    cid = _served_id(serve_upstream.url)
    before = fault_server.requests
    browser.get(fault_server.base_url + "/models")  # a page on another origin
    for mode in ["no-cors", "cors"]:  # text/plain needs no preflight; JSON does
        browser.execute_async_script(_FROM_ANOTHER_PAGE, serve_upstream.url, cid, mode)
    assert fault_server.requests == before  # nothing generated for that page
    assert _rows(serve_upstream.db, "SELECT COUNT(*) FROM completions") == [(1,)]
    assert _rows(serve_upstream.db, "SELECT COUNT(*) FROM ratings") == [(0,)]


def test_a_cors_origin_page_can_chat_and_rate(
    browser: Any, fault_server: FaultServer, tmp_path: Path
) -> None:
    other = fault_server.base_url.removesuffix("/v1")  # http://127.0.0.1:PORT, that page's origin
    h = start_serve("openai/m", api_base=fault_server.base_url, db=tmp_path / "f.db",
                    cors_origins=(other,))  # fmt: skip
    try:
        cid = _served_id(h.url)
        browser.get(fault_server.base_url + "/models")
        got = browser.execute_async_script(_FROM_ANOTHER_PAGE, h.url, cid, "cors")
    finally:
        h.stop()
    [(kind1, status1, reply), (kind2, status2, rated)] = got
    assert (kind1, status1, kind2, status2) == ("cors", 200, "cors", 200), got
    assert reply["choices"][0]["message"]["content"].startswith("echo ")
    assert rated == {"ok": True, "completion_id": cid, "rating": -1}
    assert _rows(h.db, "SELECT completion_id, rating FROM ratings") == [(cid, -1)]
