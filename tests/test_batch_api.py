"""`--batch-api` against the scripted server's files + batches endpoints (a real HTTP server).

The server answers each batch line exactly as its synchronous endpoint answers the same body,
so a batch run and a synchronous run of a seeded job must write the same records.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import tests.fixtures.fault_server as fs
from cai_kit.cli.main import app
from cai_kit.constitution import load_constitution
from tests.fixtures.fault_server import FaultServer


def _prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(n)))
    return path


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _cli(*args: str, code: int | tuple[int, ...] = 0) -> Any:
    r = CliRunner().invoke(app, [*args, "-q"])
    assert r.exit_code in (code if isinstance(code, tuple) else (code,)), r.output + repr(
        r.exception
    )
    return r


def latest(path: Path) -> list[dict[str, Any]]:
    """The last record of each id (a re-run appends)."""
    return list({x["id"]: x for x in _rows(path)}.values())


def _ledger(run: Path) -> list[dict[str, Any]]:
    return _rows(run / "batches" / "ledger.jsonl")


def test_batch_api_revise_writes_the_same_records_as_a_synchronous_run(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    prompts = _prompts(tmp_path / "p.jsonl", 4)
    common = ["revise", str(prompts), "--model", "m", "--api-base", fault_server.base_url,
              "--rounds", "1", "--seed", "7"]  # fmt: skip
    _cli(*common, "--out", str(tmp_path / "b"), "--batch-api", "--cache-path", str(tmp_path / "cb"))
    batch_paid = fault_server.paid
    assert fault_server.batches_created == 3  # response, critique, revision: one wave each
    assert [e["event"] for e in _ledger(tmp_path / "b")].count("finished") == 3
    _cli(*common, "--out", str(tmp_path / "s"), "--cache-path", str(tmp_path / "cs"))
    batch = sorted((tmp_path / "b" / "revisions.jsonl").read_text().splitlines())
    sync = sorted((tmp_path / "s" / "revisions.jsonl").read_text().splitlines())
    assert batch == sync and len(batch) == 4
    assert all(r["status"] == "ok" for r in map(json.loads, batch))
    assert batch_paid == 12 and fault_server.paid == 24
    # the batch answers are in the call cache: a synchronous re-run is all cache hits
    r = _cli(*common, "--out", str(tmp_path / "again"), "--cache-path", str(tmp_path / "cb"))
    assert fault_server.paid == 24 and "0 calls, 12 cache hits" in r.output


def test_batch_api_judge_sends_both_orders_in_one_wave_and_agrees_with_synchronous(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def judge(body: dict[str, Any]) -> str:
        first = re.findall(r"<<<RESPONSE-A-\w+>>>\n(.*?)\n<<<END", body["messages"][-1]["content"])
        return "A" if first and first[0].startswith("GOOD") else "B"

    monkeypatch.setattr(fs, "reply_text", judge)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"q{i}", "response_a": f"GOOD {i}",
                                         "response_b": f"BAD {i}"}) + "\n" for i in range(3)))  # fmt: skip
    common = ["judge", str(pairs), "--judge-model", "j", "--api-base", fault_server.base_url,
              "--mode", "letter"]  # fmt: skip
    _cli(*common, "--out", str(tmp_path / "b"), "--batch-api", "--cache-path", str(tmp_path / "cb"))
    assert fault_server.batches_created == 1  # both orders together
    _cli(*common, "--out", str(tmp_path / "s"), "--cache-path", str(tmp_path / "cs"))
    batch = _rows(tmp_path / "b" / "prefs.jsonl")
    sync = _rows(tmp_path / "s" / "prefs.jsonl")
    assert sorted(map(json.dumps, batch)) == sorted(map(json.dumps, sync))
    assert len(batch) == 3 and all(r["chosen"].startswith("GOOD") for r in batch)


def test_per_request_errors_become_failed_records_and_a_rerun_redoes_only_them(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    prompts = _prompts(tmp_path / "p.jsonl", 4)
    cmd = ["generate", str(prompts), "--model", "m", "--api-base", fault_server.base_url,
           "--out", str(tmp_path / "o"), "--batch-api", "--cache-path", str(tmp_path / "c")]  # fmt: skip
    fault_server.script = ["ok", "500", "ok", "404"]  # one action per batch line
    r = _cli(*cmd, code=3)  # some rows failed
    rows = _rows(tmp_path / "o" / "generations.jsonl")
    failed = [x for x in rows if x["status"] == "failed"]
    assert len(failed) == 2 and "2 failed" in r.output
    assert any("500" in x["error"] for x in failed) and any("404" in x["error"] for x in failed)
    assert fault_server.paid == 2
    r = _cli(*cmd)  # what `retry-failed` replays: only the two failed calls, as a new batch
    assert fault_server.batches_created == 2 and fault_server.paid == 4
    assert "2 done; 0 failed; 2 already done" in r.output
    last = fault_server.files[fault_server.batches["batch_2"]["input_file_id"]]["data"]
    assert len(last.splitlines()) == 2


@pytest.mark.parametrize(
    ("outcome", "said"),
    [("expired", "batch_1 expired before all its requests ran"),
     ("cancelled", "batch_1 was cancelled"),
     ("failed", "batch_1 failed as a whole: scripted failure")],
)  # fmt: skip
def test_an_expired_cancelled_or_failed_batch_is_reported_and_its_calls_are_failed_records(
    fault_server: FaultServer, tmp_path: Path, outcome: str, said: str
) -> None:
    prompts = _prompts(tmp_path / "p.jsonl", 3)
    cmd = ["generate", str(prompts), "--model", "m", "--api-base", fault_server.base_url,
           "--out", str(tmp_path / "o"), "--batch-api", "--cache-path", str(tmp_path / "c")]  # fmt: skip
    fault_server.batch_outcome = outcome
    r = CliRunner().invoke(app, [*cmd, "-q"])
    assert said in r.output and "3 failed" in r.output
    rows = _rows(tmp_path / "o" / "generations.jsonl")
    assert all(x["status"] == "failed" and said in x["error"] for x in rows)
    assert fault_server.paid == 0
    fault_server.batch_outcome = "completed"
    _cli(*cmd)
    rows = _rows(tmp_path / "o" / "generations.jsonl")
    assert fault_server.batches_created == 2 and fault_server.paid == 3
    assert {x["id"] for x in rows if x["status"] == "ok"} == {x["id"] for x in rows}


@pytest.mark.slow  # (a killed process and its re-run: the full run's, not the fast tier's)
def test_kill_9_while_polling_then_rerun_collects_the_same_batch_and_pays_nothing_twice(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    n = 6
    prompts = _prompts(tmp_path / "p.jsonl", n)
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "cai_kit", "generate", str(prompts), "--model", "m",
           "--api-base", fault_server.base_url, "--out", str(out), "--batch-api",
           "--cache-path", str(tmp_path / "c.sqlite"), "-q"]  # fmt: skip
    env = {**os.environ, "CAI_KIT_CACHE_DIR": str(tmp_path / "cc")}
    fault_server.batch_hold = True  # the batch stays in progress: the client polls
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and fault_server.batch_polls < 3:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert fault_server.batches_created == 1 and fault_server.paid == 0
    assert [e["event"] for e in _ledger(out)] == ["submitting", "submitted"]
    fault_server.batch_hold = False
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = _rows(out / "generations.jsonl")
    assert len(rows) == n and all(r["status"] == "ok" for r in rows)
    assert fault_server.batches_created == 1  # the re-run polled the same batch
    assert fault_server.paid == n  # each call paid once
    assert _ledger(out)[-1]["event"] == "finished"


def test_a_wave_killed_before_its_batch_id_was_recorded_is_found_by_its_tag(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """The window between `create` and the ledger line: the batch carries the wave's tag in
    its metadata, so a re-run adopts it instead of paying for it again."""
    prompts = _prompts(tmp_path / "p.jsonl", 3)
    cmd = ["generate", str(prompts), "--model", "m", "--api-base", fault_server.base_url,
           "--out", str(tmp_path / "o"), "--batch-api", "--cache-path", str(tmp_path / "c")]  # fmt: skip
    _cli(*cmd)
    ledger = tmp_path / "o" / "batches" / "ledger.jsonl"
    events = _rows(ledger)
    # as if killed right after the provider created the batch: only "submitting" was written
    ledger.write_text(json.dumps(events[0]) + "\n")
    sent = [json.loads(x)["custom_id"] for x in fault_server.files["file-1"]["data"].splitlines()]
    (ledger.parent / f"{events[0]['tag']}.keys").write_text("\n".join(sorted(sent)) + "\n")
    (tmp_path / "o" / "generations.jsonl").unlink()
    (tmp_path / "c").unlink()
    # a busy account: 250 newer batches stand before it in the provider's list (3 pages)
    real = next(iter(fault_server.batches.values()))
    for i in range(250):
        fault_server.batches[f"batch_other_{i}"] = {**real, "metadata": {"other": str(i)}}
    fault_server.batch_list_fails = True  # first the listing fails: not "never created"
    r = CliRunner().invoke(app, [*cmd, "-q"])
    assert "3 failed" in r.output and "still open" in r.output, r.output
    assert fault_server.batches_created == 1 and fault_server.paid == 3
    fault_server.batch_list_fails = False
    _cli(*cmd)
    assert fault_server.batches_created == 1 and fault_server.paid == 3
    assert fault_server.batch_list_pages == 3
    rows = latest(tmp_path / "o" / "generations.jsonl")
    assert len(rows) == 3 and all(x["status"] == "ok" for x in rows)


def test_dry_run_previews_the_batch_price_at_half_the_synchronous_one(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a hosted string (its list price and published batch price) pointed at the loopback server
    monkeypatch.setenv("OPENAI_BASE_URL", fault_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    prompts = _prompts(tmp_path / "p.jsonl", 40)
    cmd = ["revise", str(prompts), "--model", "openai/gpt-4o-mini",
           "--out", str(tmp_path / "o"), "--dry-run"]  # fmt: skip
    r = _cli(*cmd, "--batch-api")
    m = re.search(r"\$([\d.]+) with --batch-api \(synchronous: \$([\d.]+)\)", r.output)
    assert m, r.output
    batch, sync = float(m[1]), float(m[2])
    assert sync > 0.01 and batch == pytest.approx(sync / 2, abs=1e-4)  # shown to 4 decimals
    r = _cli(*cmd)
    assert f"${sync:.4f} (with --batch-api: ${batch:.4f})" in r.output
    assert fault_server.requests == 0


@pytest.mark.slow  # (several seconds: the full run's, not the fast tier's)
def test_anthropic_message_batches_are_sent_collected_and_errors_recorded(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anthropic's documented Message Batches shape, served by the scripted server (the real
    API is not reachable from the tests): system prompt apart, text blocks, errored results."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fault_server.base_url.removesuffix("/v1"))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                                        {"role": "user", "content": f"q {i}"}]})
                               + "\n" for i in range(3)))  # fmt: skip
    fault_server.script = ["ok", "500", "ok"]
    r = CliRunner().invoke(app, ["generate", str(prompts), "--model", "anthropic/claude-test",
                                 "--out", str(tmp_path / "o"), "--batch-api", "--temperature", "0",
                                 "--cache-path", str(tmp_path / "c"), "-q"])  # fmt: skip
    assert "2 done; 1 failed" in r.output, r.output
    assert fault_server.batches_created == 1 and fault_server.seen_auth == ["sk-ant-test"]
    sent = [json.loads(x) for x in fault_server.files["file-1"]["data"].splitlines()]
    assert sent[0]["params"]["system"] == "Be brief."
    assert [m["role"] for m in sent[0]["params"]["messages"]] == ["user"]
    rows = _rows(tmp_path / "o" / "generations.jsonl")
    ok = [x for x in rows if x["status"] == "ok"]
    failed = [x for x in rows if x["status"] == "failed"]
    assert all(x["response"].startswith("echo ") for x in ok)
    assert "errored" in failed[0]["error"] and "error 500" in failed[0]["error"]


def test_a_wave_larger_than_the_provider_limit_is_split_into_batches(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cai_kit.engine.batch_providers import OpenAIBatchClient

    monkeypatch.setattr(OpenAIBatchClient, "max_requests", 2)
    prompts = _prompts(tmp_path / "p.jsonl", 5)
    r = _cli("generate", str(prompts), "--model", "m", "--api-base", fault_server.base_url,
             "--out", str(tmp_path / "o"), "--batch-api", "--cache-path", str(tmp_path / "c"))  # fmt: skip
    assert "5 done; 0 failed" in r.output
    assert fault_server.batches_created == 3 and fault_server.paid == 5
    sizes = sorted(b["request_counts"]["total"] for b in fault_server.batches.values())
    assert sizes == [1, 2, 2]


def test_a_server_without_a_batch_api_fails_the_calls_with_one_clear_sentence(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    prompts = _prompts(tmp_path / "p.jsonl", 2)
    r = CliRunner().invoke(app, ["generate", str(prompts), "--model", "m", "--api-base",
                                 fault_server.base_url + "/no-batches", "--out", str(tmp_path / "o"),
                                 "--batch-api", "--cache-path", str(tmp_path / "c"), "-q"])  # fmt: skip
    assert "0 done; 2 failed" in r.output, r.output
    rows = _rows(tmp_path / "o" / "generations.jsonl")
    assert all(
        "has no Batch API" in x["error"] and "without --batch-api" in x["error"] for x in rows
    )


@pytest.mark.slow  # (several seconds: the full run's, not the fast tier's)
def test_retry_failed_redoes_batch_failures_synchronously_or_as_a_new_batch(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    prompts = _prompts(tmp_path / "p.jsonl", 4)
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "cai_kit", "generate", str(prompts), "--model", "m",
           "--api-base", fault_server.base_url, "--out", str(out), "--batch-api",
           "--cache-path", str(tmp_path / "c.sqlite"), "-q"]  # fmt: skip
    fault_server.script = ["500", "ok", "503", "ok"]
    assert subprocess.run(cmd, capture_output=True).returncode == 3  # some rows failed
    assert fault_server.paid == 2 and fault_server.batches_created == 1
    fault_server.script = ["500"]  # the first retried call fails again: a new batch...
    r = CliRunner().invoke(app, ["retry-failed", str(out)])
    assert r.exit_code == 3 and fault_server.batches_created == 2 and fault_server.paid == 3
    r = CliRunner().invoke(app, ["retry-failed", str(out), "--sync"])  # ...then synchronously
    assert r.exit_code == 0 and fault_server.batches_created == 2 and fault_server.paid == 4
    rows = _rows(out / "generations.jsonl")
    latest = {x["id"]: x for x in rows}
    assert len(latest) == 4 and all(x["status"] == "ok" for x in latest.values())


def test_completion_cache_form_is_unchanged_by_the_fast_serialiser() -> None:
    """Batch results are cached in bulk through `Completion.to_dict`; it must keep the exact
    form `dataclasses.asdict` gave, or older caches would stop matching."""
    from dataclasses import asdict

    from cai_kit.llm.base import Completion, TokenLogprob, Usage

    for c in (Completion("hi"), Completion("A", [TokenLogprob("A", -0.1, {"A": -0.1, "B": -2.3})],
                                           Usage(3, 4), 0.5, "m", "stop", cached=True)):  # fmt: skip
        expected = asdict(c)
        expected.pop("cached")
        assert c.to_dict() == expected
        assert Completion.from_dict(c.to_dict()).to_dict() == expected


def test_max_cost_refuses_a_batch_whose_price_is_unknown(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    prompts = _prompts(tmp_path / "p.jsonl", 2)
    r = CliRunner().invoke(app, ["generate", str(prompts), "--model", "no-such-priced-model",
                                 "--api-base", fault_server.base_url, "--out", str(tmp_path / "o"),
                                 "--batch-api", "--max-cost", "1", "--cache-path",
                                 str(tmp_path / "c"), "-q"])  # fmt: skip
    assert r.exit_code == 4 and "price of no-such-priced-model is unknown" in r.output
    assert fault_server.batches_created == 0 and fault_server.requests == 0


def test_a_hosted_string_batches_with_its_own_request_body_and_matches_synchronous(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`openai/...` on the fast client: the batch lines carry the body the synchronous call
    sends (the provider's seed field and extras), so the records match."""
    monkeypatch.setenv("OPENAI_BASE_URL", fault_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    prompts = _prompts(tmp_path / "p.jsonl", 3)
    common = ["generate", str(prompts), "--model", "openai/fault-model", "--samples", "2",
              "--seed", "5", "--temperature", "0.9"]  # fmt: skip
    _cli(*common, "--out", str(tmp_path / "b"), "--batch-api", "--cache-path", str(tmp_path / "cb"))
    sent = [json.loads(x)["body"] for x in fault_server.files["file-1"]["data"].splitlines()]
    _cli(*common, "--out", str(tmp_path / "s"), "--cache-path", str(tmp_path / "cs"))
    key = lambda b: json.dumps(b, sort_keys=True)  # noqa: E731 - concurrency orders the sync calls
    assert sorted(sent, key=key) == sorted(fault_server.bodies[6:], key=key)  # the same bodies
    assert fault_server.seen_auth[-1] == "Bearer sk-test"
    batch = sorted((tmp_path / "b" / "generations.jsonl").read_text().splitlines())
    sync = sorted((tmp_path / "s" / "generations.jsonl").read_text().splitlines())
    assert batch == sync and len(batch) == 6


def test_rows_beyond_those_held_at_once_still_make_one_wave_per_step(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory stays flat because only `ROWS_IN_FLIGHT` rows run at once: the others wait on
    disk. That must not cost extra waves (each up to 24 h), nor count a row meeting its own
    answered call again as a cache hit."""
    import cai_kit.engine.batch

    monkeypatch.setattr(cai_kit.engine.batch, "ROWS_IN_FLIGHT", 3)
    prompts = _prompts(tmp_path / "p.jsonl", 8)
    common = ["revise", str(prompts), "--model", "m", "--api-base", fault_server.base_url,
              "--rounds", "1", "--seed", "3"]  # fmt: skip
    r = _cli(
        *common, "--out", str(tmp_path / "b"), "--batch-api", "--cache-path", str(tmp_path / "cb")
    )
    assert fault_server.batches_created == 3 and fault_server.paid == 24
    assert "8 done; 0 failed" in r.output and "24 calls, 0 cache hits" in r.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["stats"]["calls"] == 24 and manifest["stats"]["cache_hits"] == 0
    _cli(*common, "--out", str(tmp_path / "s"), "--cache-path", str(tmp_path / "cs"))
    batch = sorted((tmp_path / "b" / "revisions.jsonl").read_text().splitlines())
    assert batch == sorted((tmp_path / "s" / "revisions.jsonl").read_text().splitlines())
    assert not list((tmp_path / "b" / "batches").glob("*.tmp"))  # nothing left half-written


@pytest.mark.slow  # (a killed process and its re-run: the full run's, not the fast tier's)
def test_kill_9_in_a_later_wave_then_rerun_resumes_that_wave_and_pays_nothing_twice(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """Killed while the critique wave is out: the re-run reads the responses from the cache,
    meets the critiques in the open batch, waits for it, and sends only the revisions."""
    prompts = _prompts(tmp_path / "p.jsonl", 4)
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "cai_kit", "revise", str(prompts), "--model", "m",
           "--api-base", fault_server.base_url, "--rounds", "1", "--seed", "1", "--out", str(out),
           "--batch-api", "--cache-path", str(tmp_path / "c.sqlite"), "-q"]  # fmt: skip
    fault_server.batch_processing_s = 1.0
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and fault_server.batches_created < 2:
        time.sleep(0.01)
    fault_server.batch_hold = True  # the critique wave stays in progress
    polls = fault_server.batch_polls
    while time.time() < deadline and fault_server.batch_polls < polls + 2:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert fault_server.batches_created == 2 and fault_server.paid == 4
    fault_server.batch_hold, fault_server.batch_processing_s = False, 0.0
    r = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert "4 done; 0 failed; 0 already done; 8 calls, 4 cache hits" in r.stdout + r.stderr
    assert fault_server.batches_created == 3 and fault_server.paid == 12
    rows = _rows(out / "revisions.jsonl")
    assert len(rows) == 4 and all(x["status"] == "ok" for x in rows)


def test_no_cache_with_an_unbatched_model_that_ignores_seeds_still_ends_in_three_waves(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """A row runs again after each wave. Its unbatched calls (here the responder, on a provider
    without a Batch API that ignores `seed`, like many real ones) must be read back, not drawn
    anew: a new response would mean new critiques, a new wave, and so on without end. With
    --no-cache they are kept in the run directory's own cache."""
    fault_server.honour_seed = False
    prompts = _prompts(tmp_path / "p.jsonl", 3)
    env = {**os.environ, "OPENROUTER_BASE_URL": fault_server.base_url, "OPENROUTER_API_KEY": "x",
           "OPENAI_BASE_URL": fault_server.base_url, "OPENAI_API_KEY": "x"}  # fmt: skip
    cmd = [sys.executable, "-m", "cai_kit", "revise", str(prompts), "--model",
           "openrouter/responder", "--critic-model", "openai/critic", "--rounds", "1",
           "--temperature", "0.9", "--out", str(tmp_path / "o"), "--batch-api", "--no-cache", "-q"]  # fmt: skip
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert "3 done; 0 failed" in r.stdout, r.stdout + r.stderr
    assert fault_server.batches_created == 2, r.stderr  # critiques, revisions (responses: sync)
    assert fault_server.paid == 9  # 3 responses, 3 critiques, 3 revisions: nothing twice


def test_an_unreadable_batch_judge_answer_is_read_alike_in_every_pass_and_asked_again_later(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """`Engine.forget` drops an unusable answer so that a re-run asks again; within a batch
    run it waits for the end, or a row replayed in a later pass would ask again mid-run."""

    def judge(body: dict[str, Any], rng: object) -> str:  # unreadable when x is shown first
        return "Both are fine, really." if _first_shown(body).startswith("x") else "A"

    fault_server.responder = judge
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"q{i}", "response_a": f"x {i}",
                                         "response_b": f"y {i}"}) + "\n" for i in range(2)))  # fmt: skip
    args = ["judge", str(pairs), "--judge-model", "judge", "--api-base", fault_server.base_url,
            "--mode", "letter", "--out", str(tmp_path / "o"), "--batch-api",
            "--cache-path", str(tmp_path / "c")]  # fmt: skip
    r = CliRunner().invoke(app, [*args, "-q"])
    assert fault_server.paid == 4, r.output  # two orders of two pairs, each asked once
    assert "0 done; 2 failed" in r.output
    fault_server.responder = lambda body, rng: "A"
    r = CliRunner().invoke(app, [*args, "-q"])  # the unreadable ones were not kept
    assert fault_server.paid == 6 and "2 done; 0 failed" in r.output, r.output


# --- independent calls share a wave: one provider batch (up to 24 h) per dependent step ------


def _first_shown(body: dict[str, Any]) -> str:
    found = re.findall(r"<<<RESPONSE-A-\w+>>>\n(.*?)\n<<<END", body["messages"][-1]["content"])
    return found[0] if found else ""


def _noisy_judge(body: dict[str, Any], rng: Any) -> str:
    """Prefers GOOD, but each seeded vote is its own draw: votes disagree, some are unreadable."""
    right = "A" if _first_shown(body).startswith("GOOD") else "B"
    draw = rng.random()
    return right if draw < 0.6 else ("unsure" if draw < 0.75 else {"A": "B", "B": "A"}[right])


def _waves(run: Path) -> int:
    """Successive waves: runs of "submitting" between "finished" events (a wave sends one
    batch per backend, all before any of them can finish)."""
    waves, sending = 0, False
    for e in _ledger(run):
        if e["event"] == "submitting" and not sending:
            waves, sending = waves + 1, True
        elif e["event"] == "finished":
            sending = False
    return waves


def _batch_then_sync(
    tmp_path: Path, common: list[str], records: str, code: int | tuple[int, ...] = 0
) -> list[dict[str, Any]]:
    """Run the command with --batch-api (into b/) and synchronously (into s/), each with its
    own cache; the two runs' records must be the same. Returns the batch run's records."""
    _cli(*common, "--out", str(tmp_path / "b"), "--batch-api", "--cache-path", str(tmp_path / "cb"), code=code)  # fmt: skip
    _cli(*common, "--out", str(tmp_path / "s"), "--cache-path", str(tmp_path / "cs"), code=code)
    batch, sync = _rows(tmp_path / "b" / records), _rows(tmp_path / "s" / records)
    assert sorted(map(json.dumps, batch)) == sorted(map(json.dumps, sync))
    return batch


@pytest.mark.parametrize(
    "how",
    [["--mode", "votes", "--samples", "3"],  # old code: 2 orders x 3 votes = 6 waves
     ["--mode", "letter", "--principles", "all"],  # old: 2 orders x 14 principles = 28
     ["--mode", "votes", "--samples", "2", "--principles", "sample:2"]],  # old: 8
)  # fmt: skip
def test_judge_sends_every_order_vote_and_principle_of_a_pair_in_one_wave(
    fault_server: FaultServer, tmp_path: Path, how: list[str]
) -> None:
    fault_server.responder = _noisy_judge
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"q{i}", "response_a": f"GOOD {i}",
                                         "response_b": f"BAD {i}"}) + "\n" for i in range(3)))  # fmt: skip
    common = ["judge", str(pairs), "--judge-model", "j", "--api-base", fault_server.base_url,
              "--seed", "3", *how]  # fmt: skip
    batch = _batch_then_sync(tmp_path, common, "prefs.jsonl", code=(0, 3))
    assert _waves(tmp_path / "b") == 1 and fault_server.batches_created == 1
    # ok exactly when every comparison it claims answered (an "unsure" letter fails a verdict)
    lost = [any(c["p_first"] is None for c in r["verdict"]["comparisons"]) for r in batch]
    assert len(batch) == 3 and [r["status"] == "ok" for r in batch] == [not x for x in lost]
    # and the exit code says so: 3 when some rows failed (both runs: the records are the same)
    again = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "b"), "-q",
                                     "--cache-path", str(tmp_path / "cb")])  # fmt: skip
    assert again.exit_code == (3 if any(lost) else 0), again.output


def test_prefs_best_worst_judges_all_pairs_of_a_prompt_in_one_wave(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    def reply(body: dict[str, Any], rng: Any) -> str:
        if body["model"] == "j":
            return "A" if len(_first_shown(body)) > 40 else "B"
        return "echo " + " ".join(rng.choice(["a", "bb", "ccc"]) for _ in range(rng.randint(1, 20)))

    fault_server.responder = reply
    prompts = _prompts(tmp_path / "p.jsonl", 2)
    common = ["prefs", str(prompts), "--policy-model", "m", "--judge-model", "j", "--api-base",
              fault_server.base_url, "--k", "3", "--pairs", "best-worst", "--mode", "letter",
              "--seed", "4"]  # fmt: skip
    batch = _batch_then_sync(tmp_path, common, "prefs.jsonl")
    assert _waves(tmp_path / "b" / "samples") == 1
    assert _waves(tmp_path / "b") == fault_server.batches_created - 1 == 1  # old: 3 x 2 orders
    assert len(batch) == 2 and all(r["status"] == "ok" for r in batch)


def test_eval_harmlessness_asks_every_principle_in_one_wave(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    def reply(body: dict[str, Any], rng: Any) -> str:
        if body["model"] in ("after", "before"):
            return f"{body['model']} answer " + " ".join(rng.choice(["x", "y"]) for _ in range(3))
        return rng.choice(["Yes", "No, it is fine.", "Perhaps."])  # unparsed: a failed record

    fault_server.responder = reply
    prompts = _prompts(tmp_path / "p.jsonl", 3)
    # with a baseline: its answers are a batch of their own in the same wave, and the judge's
    # questions wait for the wave to end (all batches of a wave end before the next is sent)
    common = ["eval", "harmlessness", "--prompts", str(prompts), "--model", "after",
              "--baseline", "before", "--judge", "judge", "--api-base", fault_server.base_url,
              "--seed", "2"]  # fmt: skip
    batch = _batch_then_sync(
        tmp_path, common, "flags.jsonl", code=1
    )  # every record has a "Perhaps."
    # the answers, then every flag question (old code: one wave per principle, 1 + 14)
    assert _waves(tmp_path / "b") == 2 and fault_server.batches_created == 3
    assert len(batch) == 6 and all(len(r["metadata"]["flags"]) == 14 for r in batch)
    report = (tmp_path / "b" / "report.md").read_text()
    assert report == (tmp_path / "s" / "report.md").read_text()


def test_eval_winrate_sends_both_answers_then_both_orders_as_two_waves(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    def reply(body: dict[str, Any], rng: Any) -> str:
        if body["model"] in ("good", "base"):
            return f"{body['model']} " + " ".join(rng.choice(["x", "y"]) for _ in range(3))
        return "A" if _first_shown(body).startswith("good") else "B"

    fault_server.responder = reply
    prompts = _prompts(tmp_path / "p.jsonl", 3)
    common = ["eval", "winrate", "--prompts", str(prompts), "--model", "good", "--baseline", "base",
              "--judge", "judge", "--api-base", fault_server.base_url, "--mode", "letter"]  # fmt: skip
    batch = _batch_then_sync(tmp_path, common, "prefs.jsonl")
    # the two answers (a batch per backend), then both orders; old code: 4 waves, one per call
    assert _waves(tmp_path / "b") == 2 and fault_server.batches_created == 3
    assert len(batch) == 3 and all(r["verdict"]["label"] == "A" for r in batch)


def test_a_failed_vote_fails_its_order_as_before_and_its_sibling_votes_are_kept(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """Synchronously: vote 1 gets an empty reply (a CallFailed). The order's record is the one
    the vote-by-vote loop wrote (its error, nothing else), but votes 0 and 2 were asked too and
    stay cached, so the re-run pays for the failed vote only."""
    import asyncio

    from cai_kit.engine import Engine, EngineConfig
    from cai_kit.judges.pairwise import JudgeConfig, judge_pair
    from cai_kit.llm import get_backend
    from cai_kit.llm.base import GenParams

    bad_seed = GenParams(seed=0).for_sample(1).seed
    fault_server.responder = lambda body, rng: None if body["seed"] == bad_seed else "A"
    harmless = load_constitution("harmless")

    def judge() -> Any:
        async def go() -> Any:
            engine = Engine(
                EngineConfig(quiet=True, cache_path=tmp_path / "c.sqlite", backoff_base_s=0.01)
            )
            backend = get_backend("judge", api_base=fault_server.base_url)
            try:
                cfg = JudgeConfig(mode="votes", samples=3, seed=0)
                convo = [{"role": "user", "content": "q"}]
                return await judge_pair(convo, "one", "two", harmless, cfg, engine, backend)
            finally:
                await backend.aclose()
                await engine.aclose()

        return asyncio.run(go())

    v = judge()
    assert v.label == "failed" and [c.order for c in v.comparisons] == ["ab", "ba"]
    for c in v.comparisons:
        assert c.error == ("judge sent an empty reply (finish_reason: content_filter); it is not "
                           "kept as an answer. after 2 attempts")  # fmt: skip
        assert c.raw is None and c.p_first is None and c.letter is None
    assert v.error == v.comparisons[0].error
    assert fault_server.paid == 2 * (1 + 2 + 1)  # per order: vote 0, vote 1 twice, vote 2
    fault_server.responder = lambda body, rng: "A"
    v = judge()
    assert v.label == "tie" and fault_server.paid == 8 + 2  # only the two failed votes again


def test_harmlessness_a_failed_question_fails_the_record_as_before_and_keeps_the_others(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """One principle's question fails (empty replies), a later one is unreadable: the record
    is the one the question-by-question loop wrote (the failure, no flags); the other answers
    are cached, the unreadable one is not, so the re-run asks exactly those two again."""
    principles = load_constitution("harmless").principles
    failing, unreadable = principles[3].critique, principles[7].critique

    def reply(body: dict[str, Any], rng: Any) -> str | None:
        text = str(body["messages"][-1]["content"])
        if body["model"] == "after":
            return "after answer"
        return None if failing in text else "Perhaps." if unreadable in text else "No."

    fault_server.responder = reply
    prompts = _prompts(tmp_path / "p.jsonl", 1)
    args = ["eval", "harmlessness", "--prompts", str(prompts), "--model", "after", "--judge",
            "judge", "--api-base", fault_server.base_url, "--out", str(tmp_path / "h"),
            "--cache-path", str(tmp_path / "c"), "--max-retries", "0", "-q"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert "0 done; 1 failed" in r.output, r.output
    (rec,) = _rows(tmp_path / "h" / "flags.jsonl")
    assert rec["status"] == "failed" and "flags" not in rec["metadata"]
    assert rec["error"].startswith("judge sent an empty reply")
    assert fault_server.paid == 1 + 14  # the answer, every question (the failing one too)
    fault_server.responder = lambda body, rng: "after answer" if body["model"] == "after" else "No."
    r = _cli(*args)
    assert "1 done; 0 failed" in r.output and fault_server.paid == 15 + 2
    rec = _rows(tmp_path / "h" / "flags.jsonl")[-1]
    assert rec["status"] == "ok" and set(rec["metadata"]["flags"].values()) == {False}


# --- Anthropic Message Batches as documented (the scripted server validates like Anthropic) ---


def _anthropic_env(fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fault_server.base_url.removesuffix("/v1"))


def _anthropic_generate(tmp_path: Path, prompts: Path) -> Any:
    return CliRunner().invoke(app, ["generate", str(prompts), "--model", "anthropic/claude-test",
                                    "--out", str(tmp_path / "o"), "--batch-api",
                                    "--cache-path", str(tmp_path / "c"), "-q"])  # fmt: skip


def test_anthropic_batch_requests_do_not_send_top_p_next_to_temperature(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claude Sonnet 4.5 and later refuse `temperature` together with `top_p`; cai-kit's
    top_p is 1.0 (no nucleus cut) unless asked, so it is left out of the request."""
    _anthropic_env(fault_server, monkeypatch)
    fault_server.exclusive_sampling = True
    r = _anthropic_generate(tmp_path, _prompts(tmp_path / "p.jsonl", 3))
    assert "3 done; 0 failed" in r.output, r.output
    sent = [json.loads(x)["params"] for x in fault_server.files["file-1"]["data"].splitlines()]
    assert all("top_p" not in p and p["temperature"] == 0.7 for p in sent)


def test_anthropic_batch_body_is_sent_as_counted_so_the_size_limit_holds(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waves are split at the byte limit counted on UTF-8 lines; the body sent must be those
    bytes (not re-encoded with \\u escapes, up to twice as large for non-Latin text)."""
    from cai_kit.engine.batch_providers import AnthropicBatchClient

    _anthropic_env(fault_server, monkeypatch)
    monkeypatch.setattr(AnthropicBatchClient, "max_bytes", 4000)
    fault_server.anthropic_max_bytes = 4000 + 64  # the body's `{"requests": [...]}` frame
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{i} " + "危险的问题" * 100},
                                          ensure_ascii=False) + "\n" for i in range(4)),
                       encoding="utf-8")  # fmt: skip
    r = _anthropic_generate(tmp_path, prompts)
    assert "4 done; 0 failed" in r.output, r.output
    assert fault_server.batches_created == 2 and max(fault_server.anthropic_bodies) <= 4064


@pytest.mark.parametrize(
    ("outcome", "said"),
    [("expired", "batch msgbatch_1 expired before all its requests ran"),
     ("cancelled", "batch msgbatch_1 was cancelled")],
)  # fmt: skip
def test_an_expired_or_cancelled_anthropic_batch_is_reported_as_such(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcome: str,
    said: str,
) -> None:  # fmt: skip
    """Anthropic ends such a batch as `ended` like any other; its request counts and each
    result's type say what happened, and the run says it as it does for OpenAI's batches."""
    _anthropic_env(fault_server, monkeypatch)
    fault_server.batch_outcome = outcome
    prompts = _prompts(tmp_path / "p.jsonl", 2)
    r = _anthropic_generate(tmp_path, prompts)
    assert said in r.output and "2 failed" in r.output, r.output
    rows = _rows(tmp_path / "o" / "generations.jsonl")
    assert all(x["status"] == "failed" and said in x["error"] for x in rows)
    assert all(("expired" if outcome == "expired" else "canceled") in x["error"] for x in rows)
    assert fault_server.paid == 0
    fault_server.batch_outcome = "completed"
    r = _anthropic_generate(tmp_path, prompts)
    assert "2 done; 0 failed" in r.output and fault_server.paid == 2


@pytest.mark.parametrize("same_size_decoy", [False, True])
def test_an_anthropic_batch_created_before_its_id_was_recorded_is_found_by_time_and_size(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    same_size_decoy: bool,
) -> None:  # fmt: skip
    """Message Batches carry no metadata to tag a wave with. A batch created just before a
    crash (or whose create call timed out after the provider took it) is found by when it was
    created and how many requests it holds; where two batches fit, cai-kit can't tell which
    is its own and sends the calls again rather than take another job's answers."""
    _anthropic_env(fault_server, monkeypatch)
    prompts = _prompts(tmp_path / "p.jsonl", 3)
    assert "3 done" in _anthropic_generate(tmp_path, prompts).output
    ledger = tmp_path / "o" / "batches" / "ledger.jsonl"
    events = _rows(ledger)
    ledger.write_text(json.dumps(events[0]) + "\n")  # as if killed before "submitted"
    sent = [json.loads(x)["custom_id"] for x in fault_server.files["file-1"]["data"].splitlines()]
    (ledger.parent / f"{events[0]['tag']}.keys").write_text("\n".join(sorted(sent)) + "\n")
    (tmp_path / "o" / "generations.jsonl").unlink()
    (tmp_path / "c").unlink()
    ours = fault_server.batches["msgbatch_1"]
    other = {**ours, "counts": {**ours["counts"], "succeeded": 2 if not same_size_decoy else 3}}
    fault_server.batches["msgbatch_other"] = other  # another job's batch, made at the same time
    r = _anthropic_generate(tmp_path, prompts)
    assert "3 done; 0 failed" in r.output, r.output
    assert fault_server.batch_list_pages == 1
    assert fault_server.batches_created == (2 if same_size_decoy else 1)
    assert fault_server.paid == (6 if same_size_decoy else 3)


def test_the_progress_bar_shows_the_wave_at_the_provider(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """A wave can take hours with no row finishing: the bar says what the provider has
    answered so far, and a line says when a wave goes out."""
    prompts = _prompts(tmp_path / "p.jsonl", 3)
    r = CliRunner().invoke(app, ["generate", str(prompts), "--model", "m", "--api-base",
                                 fault_server.base_url, "--out", str(tmp_path / "o"),
                                 "--batch-api", "--cache-path", str(tmp_path / "c")],
                           env={"COLUMNS": "200"})  # fmt: skip
    assert "--batch-api: wave 1: 1 batch(es), 3 requests; waiting for the provider." in r.output
    assert "wave 1: 3/3 requests answered" in r.output, r.output


# --- money: only what was sent is counted, cached or used; one budget (issue 21) -------------


def test_a_batch_output_with_repeated_and_unknown_custom_ids_counts_and_caches_only_what_was_sent(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """A gateway's output file repeats a line and answers a custom_id that was never sent (a
    cache key it computed, here another model's call): neither is counted, billed or cached."""
    from cai_kit.engine.cache import CallCache, cache_key

    planted = cache_key({"kind": "openai-compat", "model": "other"},
                        [{"role": "user", "content": "hi"}], {}, 0)  # fmt: skip
    fault_server.batch_repeat = 1
    fault_server.batch_unknown_ids = [planted]
    prompts = _prompts(tmp_path / "p.jsonl", 10)
    r = _cli("generate", str(prompts), "--model", "m", "--api-base", fault_server.base_url,
             "--out", str(tmp_path / "o"), "--batch-api", "--price", "1000,1000",
             "--cache-path", str(tmp_path / "c"))  # fmt: skip
    assert "10 done; 0 failed" in r.output and "10 calls" in r.output, r.output
    assert "dropped 2 answer line(s)" in r.output and "1 repeated, 1 never sent" in r.output
    stats = json.loads((tmp_path / "o" / "manifest.json").read_text())["stats"]
    assert stats["calls"] == 10 and stats["prompt_tokens"] == 10 * fault_server.cost_tokens
    # (an --api-base server: no batch discount is known, --price counts in full)
    assert stats["cost"] == pytest.approx(10 * 2 * fault_server.cost_tokens * 1000 / 1e6)
    cache = CallCache(tmp_path / "c")
    assert cache.get(planted) is None and len(cache) == 10
    cache.close()


def _killed_while_polling(fault_server: FaultServer, cmd: list[str]) -> None:
    """Run `cmd` (a --batch-api job) in a subprocess and kill -9 it while its batch is open."""
    fault_server.batch_hold = True
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and fault_server.batch_polls < 2:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert fault_server.batches_created == 1 and fault_server.paid == 0


def test_retry_failed_sync_collects_a_batch_still_open_instead_of_sending_its_calls_again(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    prompts = _prompts(tmp_path / "p.jsonl", 4)
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "cai_kit", "generate", str(prompts), "--model", "m",
           "--api-base", fault_server.base_url, "--out", str(out), "--batch-api",
           "--cache-path", str(tmp_path / "c.sqlite"), "-q"]  # fmt: skip
    _killed_while_polling(fault_server, cmd)
    fault_server.batch_hold = False
    r = CliRunner().invoke(app, ["retry-failed", str(out), "--sync"])
    assert r.exit_code == 0, r.output
    # the open batch was collected, nothing was sent synchronously: each call billed once
    assert fault_server.batches["batch_1"]["status"] == "completed"
    assert fault_server.paid == 4 and fault_server.batches_created == 1
    rows = latest(out / "generations.jsonl")
    assert len(rows) == 4 and all(x["status"] == "ok" for x in rows)


def test_a_batch_past_its_deadline_is_cancelled_and_reported_not_sent_again(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    prompts = _prompts(tmp_path / "p.jsonl", 3)
    out = tmp_path / "o"
    common = ["generate", str(prompts), "--model", "m", "--api-base", fault_server.base_url,
              "--out", str(out), "--cache-path", str(tmp_path / "c.sqlite")]  # fmt: skip
    _killed_while_polling(
        fault_server, [sys.executable, "-m", "cai_kit", *common, "--batch-api", "-q"]
    )
    # a plain re-run while the provider still runs it: it waits, up to the deadline
    r = CliRunner().invoke(app, [*common, "--batch-deadline", "0.5", "-q"])
    assert "in batch batch_1, sent by an earlier run and still open" in r.output, r.output
    assert "batch_1 was cancelled: its --batch-deadline of 0.5 s" in r.output
    assert "3 failed" in r.output
    assert fault_server.batches["batch_1"]["status"] == "cancelled" and fault_server.paid == 0
    assert _ledger(out)[-1]["event"] == "finished"
    fault_server.batch_hold = False
    r = _cli(*common)  # the batch has ended for good: now the calls are sent (synchronously)
    assert "3 done; 0 failed" in r.output and fault_server.paid == 3


# --- one --max-cost ledger: every reservation, synchronous or batched, of this run or reopened --

CJK = "人工智能的安全性需要仔细的评估和透明的原则"  # 21 characters, 3 UTF-8 bytes each


def _spent(run: Path) -> float:
    return float(json.loads((run / "manifest.json").read_text())["stats"]["cost"])


def test_max_cost_holds_a_prompt_heavy_cjk_batch_judge_job_to_the_cap(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """Spend, not counts: judge prompts of long CJK responses (a token a character, which
    characters / 4 under-estimates four times) at a known --price; what the run spent is at
    most the cap (a batch's calls are all reserved before it is sent: nothing is in flight
    unreserved)."""
    fault_server.usage_by_length = True
    fault_server.responder = lambda body, rng: "A"
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"{CJK} {i}", "response_a": CJK * 70,
                                         "response_b": CJK * 70 + "。"}) + "\n"
                             for i in range(10)))  # fmt: skip
    cap = 0.02  # about 5 of the 20 calls (~3,100 prompt tokens each at $1 per million)
    r = CliRunner().invoke(app, ["judge", str(pairs), "--judge-model", "j", "--api-base",
                                 fault_server.base_url, "--mode", "letter", "--out",
                                 str(tmp_path / "o"), "--batch-api", "--price", "1,1",
                                 "--max-cost", str(cap), "--cache-path", str(tmp_path / "c"),
                                 "-q"])  # fmt: skip
    assert "--max-cost $0.02 reached" in r.output, r.output
    assert 0 < fault_server.paid < 20
    assert 0 < _spent(tmp_path / "o") <= cap


def test_max_cost_bounds_an_anthropic_batch_with_its_system_prompt(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _anthropic_env(fault_server, monkeypatch)
    fault_server.usage_by_length = True
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "system", "content": CJK * 100},
                                                        {"role": "user", "content": f"q {i}"}]})
                               + "\n" for i in range(10)))  # fmt: skip
    cap = 0.005  # Anthropic batches at half of --price 1,1: ~$0.001 a call, about 4 of 10
    r = CliRunner().invoke(app, ["generate", str(prompts), "--model", "anthropic/claude-test",
                                 "--out", str(tmp_path / "o"), "--batch-api", "--price", "1,1",
                                 "--max-cost", str(cap), "--max-tokens", "16",
                                 "--cache-path", str(tmp_path / "c"), "-q"])  # fmt: skip
    assert r.exit_code == 4 and "--max-cost $0.005 reached" in r.output, r.output
    assert 0 < fault_server.paid < 10 and 0 < _spent(tmp_path / "o") <= cap


def test_price_flag_takes_each_providers_own_batch_rate_and_none_for_an_api_base(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cai_kit.engine.pricing import parse_price, price_for_backend
    from cai_kit.llm.registry import get_backend

    one = parse_price("1,1")
    for model, rate in (("groq/llama", 0.75), ("deepinfra/x/y", 0.8), ("openai/gpt-x", 0.5),
                        ("anthropic/claude-x", 0.5)):  # fmt: skip
        monkeypatch.setenv(f"{model.split('/')[0].upper()}_API_KEY", "k")
        price = price_for_backend(get_backend(model), one)
        assert price is not None and price.cost(1_000_000, 0, batch=True) == pytest.approx(rate)
    prompts = _prompts(tmp_path / "p.jsonl", 2)
    r = _cli("generate", str(prompts), "--model", "m", "--api-base", fault_server.base_url,
             "--out", str(tmp_path / "o"), "--batch-api", "--price", "1000,1000",
             "--cache-path", str(tmp_path / "c"))  # fmt: skip
    assert "no batch discount is known for m" in r.output, r.output
    r = _cli("generate", str(prompts), "--model", "m", "--api-base", fault_server.base_url,
             "--out", str(tmp_path / "d"), "--batch-api", "--price", "1000,1000", "--dry-run")  # fmt: skip
    assert "no batch discount is known for m at its --api-base" in r.output, r.output
    assert _spent(tmp_path / "o") == pytest.approx(2 * 2 * fault_server.cost_tokens * 1000 / 1e6)


def _mixed_env(fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """openrouter/... runs synchronously (no Batch API), openai/... in batches: one server."""
    for name in ("OPENROUTER", "OPENAI"):
        monkeypatch.setenv(f"{name}_BASE_URL", fault_server.base_url)
        monkeypatch.setenv(f"{name}_API_KEY", "x")


def test_max_cost_is_one_ledger_for_synchronous_and_batched_calls_of_a_mixed_job(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """revise with a synchronous responder and a batched critic: both reserve in one ledger,
    so the job spends at most the cap (not about twice it)."""
    _mixed_env(fault_server, monkeypatch)
    fault_server.usage_by_length = True
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{CJK * 20} {i}"}) + "\n"
                               for i in range(12)))  # fmt: skip
    cap = 0.004
    r = CliRunner().invoke(app, ["revise", str(prompts), "--model", "openrouter/responder",
                                 "--critic-model", "openai/critic", "--rounds", "1",
                                 "--max-tokens", "200", "--out", str(tmp_path / "o"),
                                 "--batch-api", "--price", "1,1", "--max-cost", str(cap),
                                 "--concurrency", "4", "--cache-path", str(tmp_path / "c"),
                                 "-q"])  # fmt: skip
    assert r.exit_code == 4 and "--max-cost $0.004 reached" in r.output, r.output
    assert 0 < _spent(tmp_path / "o") <= cap


def test_a_batch_reopened_after_kill_9_is_reserved_against_the_cap(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run 1 sends 4 calls in a batch and is killed; run 2 (8 prompts, the same cap) collects
    them and may add only what fits next to them: it spends at most the cap."""
    monkeypatch.setenv("OPENAI_BASE_URL", fault_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    fault_server.usage_by_length = True
    prompts = _prompts(tmp_path / "p.jsonl", 8)
    out = tmp_path / "o"
    # ~111 tokens a call at half of $10 per million: ~$0.00055; 4 of them fit under $0.003
    common = ["generate", str(prompts), "--model", "openai/m", "--out", str(out), "--batch-api",
              "--price", "10,10", "--max-tokens", "100", "--max-cost", "0.003",
              "--cache-path", str(tmp_path / "c.sqlite")]  # fmt: skip
    _killed_while_polling(
        fault_server, [sys.executable, "-m", "cai_kit", *common, "--limit", "4", "-q"]
    )
    fault_server.batch_hold = False
    r = CliRunner().invoke(app, [*common, "-q"])
    assert r.exit_code == 4 and "--max-cost $0.003 reached" in r.output, r.output
    assert fault_server.batches["batch_1"]["status"] == "completed"
    assert 4 < fault_server.paid < 8 and _spent(out) <= 0.003


def test_a_failed_synchronous_call_of_a_deferred_row_is_not_sent_again_in_later_passes(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """eval winrate: the policy (synchronous) gets empty replies, which are paid, while the
    baseline's answer waits in a batch. The row runs again after the wave: the failed call
    fails again at once instead of being paid for again."""
    _mixed_env(fault_server, monkeypatch)
    fault_server.by_model = {"good": "empty"}
    prompts = _prompts(tmp_path / "p.jsonl", 3)
    r = CliRunner().invoke(app, ["eval", "winrate", "--prompts", str(prompts), "--model",
                                 "openrouter/good", "--baseline", "openai/base", "--judge",
                                 "openai/judge", "--mode", "letter", "--out", str(tmp_path / "o"),
                                 "--batch-api", "--cache-path", str(tmp_path / "c"), "-q"])  # fmt: skip
    assert "3 failed" in r.output, r.output
    sent = [b for b in fault_server.bodies if b.get("model") == "good"]
    assert len(sent) == 3 * 2  # an empty reply is retried once, in the first pass only


def test_an_unreadable_batch_judge_answer_is_forgotten_at_once_so_a_kill_9_does_not_keep_it(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """eval winrate: the first prompt's answers are cached by an earlier run, so its judge
    calls go in the first wave and are read (unreadable) while the others' judge calls wait
    in the second wave; a kill -9 then must not leave the unreadable answer in the cache."""
    import sqlite3

    unreadable = "Both are fine, really."
    fault_server.responder = lambda body, rng: (
        f"{body['model']} answer" if body["model"] in ("good", "base") else unreadable
    )
    prompts = _prompts(tmp_path / "p.jsonl", 3)
    cache = tmp_path / "c.sqlite"
    common = ["eval", "winrate", "--prompts", str(prompts), "--model", "good", "--baseline",
              "base", "--judge", "judge", "--api-base", fault_server.base_url, "--mode", "letter",
              "--batch-api", "--cache-path", str(cache)]  # fmt: skip
    CliRunner().invoke(app, [*common, "--out", str(tmp_path / "a"), "--limit", "1", "-q"])
    first = fault_server.batches_created
    fault_server.batch_processing_s = 1.0
    cmd = [sys.executable, "-m", "cai_kit", *common, "--out", str(tmp_path / "b"), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and fault_server.batches_created < first + 4:
        time.sleep(0.01)
    fault_server.batch_hold = True  # the second wave stays in progress
    polls = fault_server.batch_polls
    while time.time() < deadline and fault_server.batch_polls < polls + 2:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert fault_server.batches_created == first + 4
    db = sqlite3.connect(cache)
    kept = db.execute("SELECT COUNT(*) FROM calls WHERE completion LIKE ?", (f"%{unreadable}%",))
    assert kept.fetchone()[0] == 0
    db.close()


def test_a_batch_given_up_as_still_open_keeps_its_reservation(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """Polls that keep failing (here the provider answers 404 for the batch) make the job give
    the batch up as still open: the provider may still bill it, so its worst case stays held
    in the ledger and a later call that would not fit next to it is stopped."""
    import asyncio

    from cai_kit.engine.batch import BatchCollector, _Wave
    from cai_kit.engine.batch_providers import OpenAIBatchClient
    from cai_kit.engine.core import Engine, EngineConfig
    from cai_kit.errors import BudgetExceeded

    async def go() -> None:
        engine = Engine(EngineConfig(max_cost=1.0, batch_api=True, max_retries=0,
                                     backoff_base_s=0.01, cache_path=tmp_path / "c"))  # fmt: skip
        collector = BatchCollector(engine, tmp_path / "run")
        engine.batch = collector
        wave = _Wave("t", OpenAIBatchClient("m", fault_server.base_url, None), 1, "batch_x")
        engine.reserve(0.6, "")  # what writing its call reserved
        wave.reserved = 0.6
        await collector._wait(wave)
        with pytest.raises(BudgetExceeded):
            engine.reserve(0.5, "the next call could cost up to $0.5")
        await engine.aclose()

    asyncio.run(go())


def test_an_empty_batch_reply_is_paid_and_counted_as_the_synchronous_one_is(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """Issue 29: a batch line with an empty reply counted as a call, but its tokens and cost
    were dropped; the provider bills it, and the synchronous path counts it."""
    fault_server.script = ["empty"]  # the first line of the batch: content ""
    prompts = _prompts(tmp_path / "p.jsonl", 2)
    out = tmp_path / "o"
    r = _cli("generate", str(prompts), "--model", "m", "--api-base", fault_server.base_url,
             "--out", str(out), "--batch-api", "--price", "1000,1000",
             "--cache-path", str(tmp_path / "c"), code=3)  # fmt: skip
    (failed,) = [g for g in latest(out / "generations.jsonl") if g["status"] == "failed"]
    assert "sent an empty reply" in failed["error"], r.output
    stats = json.loads((out / "manifest.json").read_text())["stats"]
    billed = fault_server.cost_tokens
    assert (
        stats["calls"] == 2 and stats["prompt_tokens"] == stats["completion_tokens"] == 2 * billed
    )
    assert stats["cost"] == pytest.approx(
        2 * 2 * billed * 1000 / 1e6
    )  # full --price: no discount known


def test_a_batch_reopened_from_an_older_ledger_without_its_reservation_is_reserved(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 29: a ledger written before reservations were recorded reopened its batch with
    nothing reserved, so run 2 sent every new call next to it and spent past the cap."""
    monkeypatch.setenv("OPENAI_BASE_URL", fault_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    fault_server.usage_by_length = True
    prompts = _prompts(tmp_path / "p.jsonl", 8)
    out = tmp_path / "o"
    common = ["generate", str(prompts), "--model", "openai/m", "--out", str(out), "--batch-api",
              "--price", "10,10", "--max-tokens", "100", "--max-cost", "0.003",
              "--cache-path", str(tmp_path / "c.sqlite")]  # fmt: skip
    _killed_while_polling(
        fault_server, [sys.executable, "-m", "cai_kit", *common, "--limit", "4", "-q"]
    )
    ledger = out / "batches" / "ledger.jsonl"
    events = _rows(ledger)
    for e in events:
        e.pop("reserved", None)  # as an older version wrote it
    ledger.write_text("".join(json.dumps(e) + "\n" for e in events))
    fault_server.batch_hold = False
    r = CliRunner().invoke(app, [*common, "-q"])
    assert r.exit_code == 4 and "--max-cost $0.003 reached" in r.output, r.output
    assert fault_server.batches["batch_1"]["status"] == "completed"
    assert 4 < fault_server.paid < 8 and _spent(out) <= 0.003
    assert any(e["event"] == "reserved" and e["reserved"] > 0 for e in _rows(ledger))
