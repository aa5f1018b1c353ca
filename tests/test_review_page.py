"""The review page in a real headless Chromium (Debian's chromium + chromedriver, via Selenium):
filter to ties, label three pairs with the keyboard, reload, see the labels kept; then the
labels become a gold file that `judge-report --gold` scores the judge against.

Set CAI_KIT_SCREENSHOT=docs/img/review.png to refresh docs/review.md's screenshot from this test.
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
from tests.fixtures.review_run import make_run, start_review

pytestmark = needs_browser
BROWSER_WINDOW = (1400, 900)


def _wait(driver: Any, until: Any, timeout: float = 60) -> Any:
    return wait_for(driver, until, timeout, poll=0.05)


def _rows(driver: Any) -> list[tuple[str, str | None, bool]]:
    """(id, my label, is current) of each listed row."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#list .row')].map("
        "r => [r.dataset.id, r.dataset.label || null, r.classList.contains('cur')])"
    )


def _press(driver: Any, keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(keys).perform()


def test_label_ties_with_the_keyboard_reload_then_gold(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    run_dir = tmp_path / "run"
    pairs, _ = make_run(run_dir, n_pairs=60)
    ties = [p.id for p in pairs if p.verdict.label == "tie"]
    h = start_review(run_dir)
    try:
        browser.get(h.url + "/")
        _wait(browser, lambda d: len(_rows(d)) == 50)  # the first page of 60
        assert browser.find_element(By.ID, "range").text == "1–50 of 60"
        name = browser.find_element(By.ID, "reviewer")
        name.clear()
        name.send_keys("ana", Keys.ENTER)
        # the name re-draws the views: read the button (and click it) once the page settled
        ties_btn = '#views button[data-view="ties"]'
        _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ties_btn).text.split()[-1] == str(len(ties)))  # fmt: skip
        _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ties_btn).click() or True)
        _wait(browser, lambda d: [r[0] for r in _rows(d)] == ties)
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#labelbar"))
        _press(browser, "a")  # A for the first; the cursor moves on
        _wait(browser, lambda d: _rows(d)[0][1] == "A" and _rows(d)[1][2])
        _press(browser, "k")  # back up, and down again
        _wait(browser, lambda d: _rows(d)[0][2])
        _press(browser, "j")
        _wait(browser, lambda d: _rows(d)[1][2])
        _press(browser, "b")
        _wait(browser, lambda d: _rows(d)[1][1] == "B" and _rows(d)[2][2])
        _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#note"))
        _press(browser, "n")  # a note, saved with the next label
        _wait(browser, lambda d: d.switch_to.active_element.get_attribute("id") == "note")
        _press(browser, "close call" + Keys.ENTER)
        _press(browser, "t")
        _wait(browser, lambda d: _rows(d)[2][1] == "tie")
        browser.refresh()  # the view and the labels come back from the URL and the store
        _wait(browser, lambda d: [(r[0], r[1]) for r in _rows(d)] == list(zip(ties[:3], ["A", "B", "tie"], strict=False)) + [(x, None) for x in ties[3:]])  # fmt: skip
        human = json.loads(browser.find_element(By.ID, "labels-chart").get_attribute("data-human"))
        assert human == {"A": 1, "B": 1, "tie": 1}
        assert len(browser.find_elements(By.CSS_SELECTOR, "#margin-chart rect")) == 10
        hosts = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => new URL(e.name).host)"
        )
        assert set(hosts) <= {h.url.split("//")[1]}  # nothing loaded from anywhere else
        if shot := os.environ.get("CAI_KIT_SCREENSHOT"):
            browser.find_element(By.CSS_SELECTOR, '#views button[data-view="all"]').click()
            _wait(browser, lambda d: len(_rows(d)) == 50)
            _press(browser, "j")
            _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#resp-A"))
            browser.save_screenshot(shot)
    finally:
        h.stop()
    with sqlite3.connect(run_dir / "labels.sqlite") as con:
        got = con.execute("SELECT reviewer, row_id, label, note FROM labels ORDER BY row_id").fetchall()  # fmt: skip
    assert got == [("ana", ties[0], "A", None), ("ana", ties[1], "B", None),
                   ("ana", ties[2], "tie", "close call")]  # fmt: skip

    gold = tmp_path / "gold.jsonl"
    runner = CliRunner()
    r = runner.invoke(app, ["review", "export-gold", str(run_dir), "--out", str(gold)])
    assert r.exit_code == 0 and "Wrote 3 gold pairs" in r.output, r.output
    r = runner.invoke(app, ["judge-report", str(run_dir), "--gold", str(gold)])
    assert r.exit_code == 0, r.output
    rep = json.loads((run_dir / "judge_report.json").read_text())
    # the judge called all three ties; the person said A, B, tie
    assert rep["gold_matched"] == 0 and rep["gold_matched_with_ties"] == 3
    assert rep["gold_agreement_with_ties"] == pytest.approx(1 / 3)
    assert rep["gold_confusion"]["A"]["tie"] == rep["gold_confusion"]["B"]["tie"] == 1
    assert rep["gold_kappa"] == pytest.approx(0.0)  # p_o = 1/3 = p_e


def test_a_link_from_judge_report_opens_that_row(browser: Any, tmp_path: Path) -> None:
    """Issue 23: judge-report's `#kind=pair&id=ID` links open the row, on whatever page it is."""
    from selenium.webdriver.common.by import By

    run_dir = tmp_path / "run"
    make_run(run_dir, n_pairs=60)
    h = start_review(run_dir)
    try:
        browser.get(h.url + "/#kind=pair&id=pair0057")  # on the second page of 50
        _wait(browser, lambda d: [r[0] for r in _rows(d) if r[2]] == ["pair0057"])
        assert browser.find_element(By.ID, "range").text == "51–60 of 60"
        _wait(browser, lambda d: "Answer A57:" in d.find_element(By.ID, "resp-A").text)
        assert "id=" not in browser.current_url  # the state moves on to the usual #view=...
        browser.get(h.url + "/#kind=pair&id=nope")
        _wait(browser, lambda d: "No pair with id 'nope'" in d.find_element(By.ID, "status").text)
    finally:
        h.stop()


def test_a_second_key_before_the_next_row_loads_keeps_the_note_on_its_row(
    browser: Any, tmp_path: Path
) -> None:
    """Issue 29: a note goes with the row it was typed for. The next row's detail is held back
    (the page's fetch of /api/row waits 3 s), and B is pressed while row 0's note box is still
    on screen: row 1 must not get row 0's note."""
    from selenium.webdriver.common.by import By

    run_dir = tmp_path / "run"
    pairs, _ = make_run(run_dir, n_pairs=6)
    h = start_review(run_dir)
    try:
        browser.get(h.url + "/")
        browser.execute_script("localStorage.setItem('cai-kit-reviewer', 'ana')")
        browser.refresh()
        _wait(browser, lambda d: len(_rows(d)) == 6 and d.find_elements(By.CSS_SELECTOR, "#note"))
        _press(browser, "n")
        _wait(browser, lambda d: d.switch_to.active_element.get_attribute("id") == "note")
        _press(browser, "row zero note")
        browser.execute_script("document.activeElement.blur()")
        browser.execute_script(  # hold back each row's detail (only the page's own fetch)
            "const f = window.fetch; window.fetch = (u, o) => String(u).startsWith('/api/row?')"
            " ? new Promise(r => setTimeout(r, 3000)).then(() => f(u, o)) : f(u, o);"
        )
        _press(browser, "a")  # row 0: A with its note; the cursor moves to row 1 at once
        _wait(browser, lambda d: _rows(d)[0][1] == "A" and _rows(d)[1][2])
        assert browser.find_element(By.ID, "note").get_attribute("value") == "row zero note"
        _press(browser, "b")  # before row 1's detail (and its empty note box) has arrived
        _wait(browser, lambda d: _rows(d)[1][1] == "B")
        _wait(browser, lambda d: "Answer A2:" in d.find_element(By.ID, "resp-A").text)
    finally:
        h.stop()
    with sqlite3.connect(run_dir / "labels.sqlite") as con:
        got = con.execute("SELECT row_id, label, note FROM labels ORDER BY row_id").fetchall()
    assert got == [(pairs[0].id, "A", "row zero note"), (pairs[1].id, "B", None)]


def test_neither_local_page_can_be_framed_by_another_site(
    browser: Any, fault_server: Any, tmp_path: Path
) -> None:
    """Issue 29: a page of another origin (here the scripted provider's) that frames the review
    page or serve's chat page gets the browser's refusal, not the page (frame-ancestors 'none',
    X-Frame-Options: DENY), so it cannot lure clicks or keys into it."""
    from selenium.webdriver.common.by import By

    from tests.fixtures.serve_server import start_serve

    run_dir = tmp_path / "run"
    make_run(run_dir, n_pairs=3)
    review = start_review(run_dir)
    chat = start_serve("openai/m", api_base=fault_server.base_url, db=tmp_path / "f.db")
    try:
        for url, element in ((review.url, "reviewer"), (chat.url, "prompt")):
            browser.get(fault_server.base_url + "/models")  # another origin
            browser.execute_script(
                "const f = document.createElement('iframe'); f.id = 'framed';"
                "f.onload = () => { f.dataset.loaded = '1'; }; f.src = arguments[0];"
                "document.body.append(f);",
                url + "/",
            )
            frame = _wait(
                browser, lambda d: d.find_element(By.CSS_SELECTOR, "#framed[data-loaded]")
            )
            browser.switch_to.frame(frame)
            try:
                assert browser.find_elements(By.ID, element) == [], url
                assert browser.execute_script("return location.href") != url + "/"
            finally:
                browser.switch_to.default_content()
            # the page itself, opened as a page, is there
            browser.get(url + "/")
            _wait(browser, lambda d, e=element: d.find_elements(By.ID, e))
    finally:
        chat.stop()
        review.stop()
