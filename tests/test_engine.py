"""The call engine against a real fault-injection HTTP server on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.engine import CallFailed
from cai_kit.llm import GenParams, get_backend
from cai_kit.stages.generate import run_generate
from tests.fixtures.engine_calls import engine_config, prompt_records, run_calls
from tests.fixtures.fault_server import FaultServer

PARAMS = GenParams(temperature=0, max_tokens=8)


def _write_prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(n)))
    return path


def _run(server: FaultServer, tmp_path: Path, n: int, **kw: object):  # type: ignore[no-untyped-def]
    backend = get_backend("fault-model", api_base=server.base_url, timeout_s=2.0)
    return run_generate(prompt_records(n), backend=backend, model="fault-model", params=PARAMS, samples=1,
                        out_dir=tmp_path / "run", engine_config=engine_config(tmp_path, **kw))  # fmt: skip


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_job_with_20_percent_faults_completes_every_row(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.fault_rate = 0.2
    summary = _run(fault_server, tmp_path, 60, max_retries=10, concurrency=8)
    rows = _lines(tmp_path / "run" / "generations.jsonl")
    assert summary.done == 60 and summary.failed == 0
    assert len({r["id"] for r in rows}) == 60 and all(r["status"] == "ok" for r in rows)
    assert fault_server.paid == 60  # every row paid exactly once despite the faults
    assert summary.stats["retries"] > 0


def test_rerun_of_a_finished_job_makes_no_calls(fault_server: FaultServer, tmp_path: Path) -> None:
    _run(fault_server, tmp_path, 10)
    paid = fault_server.paid
    again = _run(fault_server, tmp_path, 10)
    assert again.already_done == 10 and again.done == 0
    assert fault_server.paid == paid


def test_identical_calls_in_flight_are_paid_once(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.latency_s = 0.2

    backend = get_backend("m", api_base=fault_server.base_url)
    msgs = [{"role": "user", "content": "same"}]
    texts = [c.text for c in run_calls(engine_config(tmp_path), backend, [msgs] * 10, PARAMS)]
    assert len(set(texts)) == 1 and fault_server.paid == 1


def test_duplicate_prompts_in_the_input_are_called_once(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["a", "b", "a", "a"]))
    result = CliRunner().invoke(app, ["generate", str(path), "--model", "m", "--api-base", fault_server.base_url,
                                      "--out", str(tmp_path / "o"), "--cache-path", str(tmp_path / "c.sqlite"), "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 duplicates merged" in result.output
    assert fault_server.paid == 2


def test_retry_after_is_honoured_in_seconds_and_http_date(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.script = ["429-date", "429"]
    start = time.monotonic()
    summary = _run(fault_server, tmp_path, 1)
    # an HTTP-date has 1 s resolution: the wait is at least ~0.2 s (429) plus most of a second
    assert summary.done == 1 and time.monotonic() - start >= 0.2
    assert summary.stats["retries"] == 2


def test_timeouts_and_dropped_connections_are_retried(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    # the timeout is long enough that the one good answer never hits it on a loaded 2-core CI
    # machine (0.5 s did once: 5 retries), and "slow" sleeps well past it
    fault_server.slow_s = 10.0
    fault_server.script = ["slow", "drop", "garbage", "503"]
    summary = _run(fault_server, tmp_path, 1, timeout_s=2.0)
    assert summary.done == 1 and summary.stats["retries"] == 4


def test_fatal_401_fails_fast_with_a_clear_sentence(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.default = "401"
    summary = _run(fault_server, tmp_path, 1)
    (row,) = _lines(tmp_path / "run" / "generations.jsonl")
    assert summary.failed == 1 and fault_server.requests == 1
    assert row["status"] == "failed" and "OPENAI_API_KEY" in row["error"]


def test_exhausted_retries_become_a_recorded_failure_then_rerun_retries_only_it(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.script = ["500"] * 3  # the first row's 3 attempts fail (max_retries=2)
    first = _run(fault_server, tmp_path, 1, max_retries=2)
    assert first.failed == 1
    second = _run(fault_server, tmp_path, 1, max_retries=2)
    rows = _lines(tmp_path / "run" / "generations.jsonl")
    assert second.done == 1 and [r["status"] for r in rows] == ["failed", "ok"]


def test_rpm_limit_spaces_calls(fault_server: FaultServer, tmp_path: Path) -> None:
    start = time.monotonic()
    _run(fault_server, tmp_path, 12, rpm=600)  # 10/s with a 10-call burst: 12 calls need >= 0.2 s
    assert time.monotonic() - start >= 0.18 and fault_server.paid == 12


def test_max_cost_stops_cleanly_and_keeps_finished_work(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault_server.report_cost = 0.01  # the server reports $0.01 per call in `usage`
    summary = _run(fault_server, tmp_path, 20, max_cost=0.05, concurrency=2)
    rows = _lines(tmp_path / "run" / "generations.jsonl")
    assert summary.stopped and "max-cost" in summary.stopped
    assert 1 <= len(rows) <= 5 and summary.stats["cost"] <= 0.05 + 1e-9
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "stopped"


def test_dry_run_calls_nothing(fault_server: FaultServer, tmp_path: Path) -> None:
    summary = _run(fault_server, tmp_path, 5, dry_run=True)
    assert summary.estimated_calls == 5 and fault_server.requests == 0
    assert not (tmp_path / "run" / "generations.jsonl").exists()


def test_shards_split_the_input_and_merge_to_the_whole(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    backend = get_backend("m", api_base=fault_server.base_url)
    ids = set()
    for i in (1, 2, 3):
        s = run_generate(prompt_records(30), backend=get_backend("m", api_base=fault_server.base_url), model="m", params=PARAMS,
                         samples=1, out_dir=tmp_path / f"s{i}", engine_config=engine_config(tmp_path), shard=(i, 3))  # fmt: skip
        assert 0 < s.total < 30
        ids |= {r["id"] for r in _lines(tmp_path / f"s{i}" / "generations.jsonl")}
    assert len(ids) == 30
    asyncio.run(backend.aclose())


def test_api_key_never_reaches_outputs_cache_or_logs(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-test-SECRET-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    fault_server.script = ["500", "401"]  # errors end up in records and on screen
    prompts = _write_prompts(tmp_path / "p.jsonl", 4)
    result = CliRunner().invoke(app, ["generate", str(prompts), "--model", "m", "--api-base", fault_server.base_url,
                                      "--out", str(tmp_path / "o"), "--cache-path", str(tmp_path / "c.sqlite")])  # fmt: skip
    assert f"Bearer {secret}" in fault_server.seen_auth  # the key was really used...
    assert secret not in result.output
    for f in [*tmp_path.rglob("*")]:
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f"key leaked into {f}"


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_gives_exact_output_and_no_extra_paid_calls(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.latency_s = 0.15
    n = 40
    prompts = _write_prompts(tmp_path / "p.jsonl", n)
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "cai_kit", "generate", str(prompts), "--model", "m", "--api-base", fault_server.base_url,
           "--out", str(out), "--cache-path", str(tmp_path / "c.sqlite"), "--concurrency", "4", "-q"]  # fmt: skip
    env = {**os.environ, "CAI_KIT_CACHE_DIR": str(tmp_path / "cc")}
    fault_server.hold_after = 10  # after 10 answers the server holds the rest: none is in transit
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and fault_server.paid < 10:
        time.sleep(0.02)
    time.sleep(1.0)  # the client has stored every answer it received; 4 requests are held
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    fault_server.hold_after = None
    assert fault_server.paid == 10, "the job finished before it could be killed"
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = _lines(out / "generations.jsonl")
    assert sorted(r["id"] for r in rows) == sorted({r["id"] for r in rows}) and len(rows) == n
    assert fault_server.paid == n  # a clean run pays n calls; the killed one paid no call twice


def test_engine_call_raises_call_failed_after_retries(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.default = "503"

    backend = get_backend("m", api_base=fault_server.base_url)
    with pytest.raises(CallFailed, match="after 2 attempts"):
        run_calls(
            engine_config(tmp_path, max_retries=1),
            backend,
            [[{"role": "user", "content": "x"}]],
            PARAMS,
        )
