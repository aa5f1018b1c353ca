"""Spending and rate limits hold, and nothing a retry could fix crashes a job.

Against the scripted provider server on loopback (`provider_server`): --max-cost at
concurrency 64 with a server-reported cost, --price where no cost is reported, a tpm window on
a fake clock, empty/null replies, and a timeout in the middle of a batched hf generate.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.engine import CallFailed, EngineConfig
from cai_kit.engine.core import TokenBucket
from cai_kit.engine.pricing import parse_price
from cai_kit.llm import GenParams, get_backend
from cai_kit.llm.base import Completion, Usage
from cai_kit.llm.local import TransformersBackend, _Pending
from cai_kit.stages.generate import run_generate
from tests.fixtures.engine_calls import engine_config, prompt_records, run_calls
from tests.fixtures.fault_server import FaultServer

PARAMS = GenParams(temperature=0, max_tokens=8)


def _cfg(tmp_path: Path, **kw: object) -> EngineConfig:
    return engine_config(tmp_path, **{"timeout_s": 5.0, **kw})


def _run(server: FaultServer, tmp_path: Path, n: int, params: GenParams = PARAMS, **kw: object):  # type: ignore[no-untyped-def]
    backend = get_backend("fault-model", api_base=server.base_url, timeout_s=5.0)
    return run_generate(prompt_records(n), backend=backend, model="fault-model", params=params, samples=1,
                        out_dir=tmp_path / "run", engine_config=_cfg(tmp_path, **kw))  # fmt: skip


def _rows(tmp_path: Path) -> list[dict]:
    path = tmp_path / "run" / "generations.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# --- --max-cost --------------------------------------------------------------------------


def test_max_cost_at_concurrency_64_holds_in_the_first_wave_and_states_the_real_spend(
    provider_server: FaultServer, tmp_path: Path
) -> None:
    provider_server.report_cost = 0.01  # $0.01 per call in usage.cost; no list price is known
    provider_server.latency_s = 0.05
    summary = _run(provider_server, tmp_path, 100, max_cost=0.05, concurrency=64)
    spent = summary.stats["cost"]
    assert spent == pytest.approx(provider_server.paid * 0.01)  # every paid call is counted
    in_flight_at_cap = summary.stats.get("in_flight_at_cap") or 0
    assert spent <= 0.05 + 0.01 * in_flight_at_cap + 1e-9
    assert provider_server.paid <= 8, (
        "the first wave opened all 64 slots before any price was known"
    )
    assert summary.stopped and f"spent ${spent:.4f}" in summary.stopped  # the true spend
    rows = _rows(tmp_path)
    assert len(rows) == summary.done + summary.failed and summary.done == provider_server.paid
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "stopped" and manifest["stats"]["stopped"] == summary.stopped


def test_max_cost_without_a_reported_cost_or_price_says_so_and_stops(
    provider_server: FaultServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    summary = _run(provider_server, tmp_path, 20, max_cost=1.0, concurrency=8)
    err = capfd.readouterr().err
    assert "no price is known for fault-model" in err and "--price" in err  # said at start
    assert provider_server.paid == 1  # one probe call, then a clean stop instead of no limit
    assert summary.stopped and "cannot be enforced" in summary.stopped


def test_price_makes_max_cost_work_on_a_server_that_reports_no_cost(
    provider_server: FaultServer, tmp_path: Path
) -> None:
    # 10 + 10 tokens per call at $1000 per million each way: $0.02 per call
    params = GenParams(temperature=0, max_tokens=32)
    summary = _run(provider_server, tmp_path, 30, params=params, max_cost=0.1, concurrency=16,
                   price=parse_price("1000,1000"))  # fmt: skip
    spent = summary.stats["cost"]
    assert spent == pytest.approx(provider_server.paid * 0.02)
    assert 0 < spent <= 0.1 + 1e-9 and summary.stopped
    assert all(r["status"] == "ok" for r in _rows(tmp_path))


def test_cli_price_flag_reaches_the_budget(provider_server: FaultServer, tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(10)))
    args = ["generate", str(prompts), "--model", "m", "--api-base", provider_server.base_url,
            "--out", str(tmp_path / "o"), "--cache-path", str(tmp_path / "c.sqlite"), "-q",
            "--max-cost", "0.055", "--price", "1000,1000", "--max-tokens", "16"]  # fmt: skip
    # each call bills $0.02 and reserves $0.026 (2 prompt bytes + 8 + 16 tokens): two fit at once
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 4, result.output  # stopped by the budget
    assert "max-cost $0.055 reached: spent $0.0400" in result.output.replace("\n", " ")
    assert provider_server.paid == 2
    bad = CliRunner().invoke(app, [*args[:-6], "--price", "cheap"])
    assert bad.exit_code != 0 and "--price takes two numbers" in bad.output


# --- rate limits on a fake clock --------------------------------------------------------------


def _admissions(rate_per_min: float, amount: float, seconds: float) -> list[float]:
    now = [0.0]

    async def sleep(s: float) -> None:
        now[0] += s

    bucket = TokenBucket(rate_per_min, clock=lambda: now[0], sleep=sleep)
    times: list[float] = []

    async def go() -> None:
        while now[0] < seconds:
            await bucket.take(amount)
            times.append(now[0])

    asyncio.run(go())
    return times


def test_tpm_holds_over_a_minute_for_requests_larger_than_a_second_of_budget() -> None:
    times = _admissions(60_000, 5_000, 300)  # 1,000 tokens/s; each request is 5 s of budget
    worst = max(sum(1 for t in times if s <= t < s + 60) for s in range(0, 240))
    assert worst * 5_000 <= 60_000 + 5_000  # a minute's budget plus at most one request
    assert len(times) * 5_000 >= 0.9 * 60_000 * 5  # and the limit is used, not starved


def test_rpm_window_on_a_fake_clock() -> None:
    times = _admissions(120, 1, 180)
    assert max(sum(1 for t in times if s <= t < s + 60) for s in range(0, 120)) <= 120 + 2


# --- empty replies ----------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["null", "empty"])
def test_an_empty_or_null_reply_is_a_retried_failure_never_a_cached_answer(
    provider_server: FaultServer, tmp_path: Path, action: str
) -> None:
    provider_server.default = action
    first = _run(provider_server, tmp_path, 2, max_retries=5)
    rows = _rows(tmp_path)
    assert first.failed == 2 and first.done == 0
    assert all(r["status"] == "failed" and "empty reply" in r["error"] for r in rows)
    assert provider_server.paid == 4  # retried once each (a filter answers alike), then failed
    assert first.stats["calls"] == 4  # the empty answers were paid and are counted
    provider_server.default = "ok"
    second = _run(provider_server, tmp_path, 2, max_retries=5)  # same cache: nothing was kept
    assert second.done == 2 and provider_server.paid == 6


def test_one_empty_reply_then_an_answer_succeeds(
    provider_server: FaultServer, tmp_path: Path
) -> None:
    provider_server.script = ["null"]
    summary = _run(provider_server, tmp_path, 1)
    assert summary.done == 1 and summary.stats["retries"] == 1 and _rows(tmp_path)[0]["response"]


def test_empty_reply_through_litellm_is_a_failure_too(
    provider_server: FaultServer, tmp_path: Path
) -> None:
    provider_server.default = "null"

    backend = get_backend("litellm:openai/m", api_base=provider_server.base_url)
    with pytest.raises(CallFailed, match="empty reply"):
        run_calls(
            _cfg(tmp_path, max_retries=3), backend, [[{"role": "user", "content": "x"}]], PARAMS
        )


# --- a timeout in the middle of a batched hf generate ----------------------------------------


class _SlowTransformers(TransformersBackend):
    """The real batching loop over a generate that takes `delay` seconds (no model needed)."""

    def __init__(self, delay: float) -> None:
        super().__init__(Path("."), name="hf:slow", window_s=0.05)
        self.delay, self.batches = delay, []  # type: ignore[var-annotated]

    def _generate(self, group: list[_Pending]) -> list[Completion]:
        self.batches.append(len(group))
        time.sleep(self.delay)
        self.delay = 0.0  # only the first batch is slow
        return [
            Completion(text=f"answer to {p.messages[-1]['content']}", usage=Usage(3, 2))
            for p in group
        ]


def test_hf_timeout_mid_batch_leaves_the_other_callers_their_answers() -> None:
    backend = _SlowTransformers(delay=0.5)

    async def go() -> list[object]:
        async def ask(i: int, timeout: float) -> str:
            c = await asyncio.wait_for(
                backend.chat([{"role": "user", "content": f"q{i}"}], PARAMS), timeout
            )
            return c.text

        try:
            return await asyncio.gather(
                ask(0, 0.1), ask(1, 10.0), ask(2, 10.0), return_exceptions=True
            )
        finally:
            await backend.aclose()

    out = asyncio.run(go())
    assert backend.batches[0] == 3  # all three were in the same generate
    assert isinstance(out[0], TimeoutError)
    assert out[1:] == ["answer to q1", "answer to q2"]


def test_hf_timeouts_through_the_engine_are_retried_and_the_job_finishes(tmp_path: Path) -> None:
    backend = _SlowTransformers(delay=0.6)

    asks = [[{"role": "user", "content": f"q{i}"}] for i in range(4)]
    done = run_calls(_cfg(tmp_path, timeout_s=0.2, use_cache=False), backend, asks, PARAMS)
    assert [c.text for c in done] == [f"answer to q{i}" for i in range(4)]


def test_empty_reply_from_the_batched_local_backend_is_a_failure(tmp_path: Path) -> None:
    class _Silent(_SlowTransformers):  # a model that used all its tokens on nothing visible
        def _generate(self, group: list[_Pending]) -> list[Completion]:
            return [Completion(text="  ", usage=Usage(3, 8), finish_reason="length") for _ in group]

    backend = _Silent(delay=0.0)

    with pytest.raises(CallFailed, match=r"empty reply \(finish_reason: length\)"):
        run_calls(_cfg(tmp_path), backend, [[{"role": "user", "content": "q"}]], PARAMS)
