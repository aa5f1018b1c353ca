"""The public Python API (`cai_kit.revise`, ...) against the scripted provider: plain values
in, records out, a run directory only with `out=`, one ledger per call or shared, and every
sync call safe inside a running event loop (a notebook) with async variants beside it."""

from __future__ import annotations

import _thread
import asyncio
import tempfile
import threading
import time
from pathlib import Path

import pytest

import cai_kit
from cai_kit.engine.budget import Budget
from cai_kit.engine.loop import run_sync
from cai_kit.engine.pricing import parse_price
from cai_kit.errors import ConfigError, DataError
from tests.fixtures.fault_server import FaultServer

PROMPTS = ["How do I pick a lock?", "Write a haiku about rain.", "What is 2 + 2?"]


def _leftover_temp_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("cai-kit-*")}


def test_revise_from_a_list_returns_records_and_leaves_no_directory(
    fault_server: FaultServer,
) -> None:
    before = _leftover_temp_dirs()
    rows = cai_kit.revise(
        PROMPTS, "harmless", model="m", api_base=fault_server.base_url, max_tokens=16, quiet=True
    )
    assert [r.messages[-1].content for r in rows] == PROMPTS  # in the order given
    assert all(r.status == "ok" and r.final_response for r in rows)
    assert rows.summary.done == 3 and rows.run_dir is None
    assert _leftover_temp_dirs() == before


def test_out_keeps_the_run_directory_and_a_second_call_resumes_it(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    kw = dict(
        model="m", api_base=fault_server.base_url, max_tokens=16, quiet=True, out=tmp_path / "run"
    )
    first = cai_kit.revise(PROMPTS[:2], **kw)  # type: ignore[arg-type]
    assert (tmp_path / "run" / "revisions.jsonl").is_file()
    assert (tmp_path / "run" / "manifest.json").is_file()
    paid = fault_server.paid
    again = cai_kit.revise(PROMPTS, **kw)  # type: ignore[arg-type]
    assert again.summary.already_done == 2 and again.summary.done == 1
    assert [r.id for r in again[:2]] == [r.id for r in first]
    assert fault_server.paid > paid  # only the new prompt was paid for
    assert cai_kit.revise(PROMPTS, **kw).summary.stats.get("calls", 0) == 0  # type: ignore[arg-type]


def test_message_lists_and_records_are_prompts_and_an_empty_one_is_refused(
    fault_server: FaultServer,
) -> None:
    convo = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]  # fmt: skip
    rows = cai_kit.generate(
        [convo], model="m", api_base=fault_server.base_url, samples=2, max_tokens=8, quiet=True
    )
    assert len(rows) == 2 and {r.sample_index for r in rows} == {0, 1}
    with pytest.raises(DataError):
        cai_kit.generate([""], model="m", api_base=fault_server.base_url, quiet=True)


def test_prefs_labels_pairs_by_rubric_and_by_judge(fault_server: FaultServer) -> None:
    kw = dict(model="m", api_base=fault_server.base_url, max_tokens=8, quiet=True)
    judged = cai_kit.prefs(PROMPTS[:2], **kw)  # type: ignore[arg-type]
    assert len(judged) == 2 and all(r.prompt_id for r in judged)
    sampling, judging = judged.summary
    assert sampling.done == 4 and judging.done + judging.failed == 2


def test_one_budget_is_shared_by_several_calls_and_max_cost_is_per_call(
    fault_server: FaultServer,
) -> None:
    shared = Budget(10.0)
    priced = cai_kit.EngineConfig(price=parse_price("1,1"))  # USD per million tokens in, out
    kw = dict(model="m", api_base=fault_server.base_url, max_tokens=8, quiet=True, engine=priced)
    one = cai_kit.generate(PROMPTS[:1], budget=shared, **kw)  # type: ignore[arg-type]
    after_one = shared.as_dict()
    two = cai_kit.generate(PROMPTS[1:], budget=shared, seed=1, **kw)  # type: ignore[arg-type]
    assert after_one["calls"] == 1 and shared.as_dict()["calls"] == 3  # one ledger saw both calls
    spent = one.summary.stats["cost"] + two.summary.stats["cost"]
    assert shared.as_dict()["spent"] == pytest.approx(spent) and spent > 0
    alone = cai_kit.generate(PROMPTS[:1], seed=2, max_cost=10.0, **kw)  # type: ignore[arg-type]
    assert alone.summary.stats["command"]["calls"] == 1  # a ledger of its own
    assert shared.as_dict()["calls"] == 3
    with pytest.raises(ConfigError, match="max_cost= or budget="):
        cai_kit.generate(PROMPTS, budget=shared, max_cost=1.0, **kw)  # type: ignore[arg-type]


def test_the_sync_api_works_inside_a_running_event_loop(fault_server: FaultServer) -> None:
    """A Jupyter cell runs inside the kernel's loop: before, `run_job` called `asyncio.run`
    there and raised "asyncio.run() cannot be called from a running event loop"."""

    async def main() -> list[str]:
        rows = cai_kit.revise(
            PROMPTS, model="m", api_base=fault_server.base_url, max_tokens=16, quiet=True
        )
        return [r.status for r in rows]

    assert asyncio.run(main()) == ["ok"] * 3


def test_a_stage_job_runs_inside_a_running_event_loop(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """`run_job` (every stage) from an `async def`: it raised RuntimeError before `run_sync`."""
    from cai_kit.engine.core import EngineConfig
    from cai_kit.llm.base import GenParams
    from cai_kit.llm.registry import get_backend
    from cai_kit.prompts import prompts_from
    from cai_kit.stages.generate import run_generate

    async def main() -> int:
        summary = run_generate(prompts_from(PROMPTS).records, backend=get_backend("m", api_base=fault_server.base_url),
                               model="m", params=GenParams(max_tokens=8), samples=1, out_dir=tmp_path,
                               engine_config=EngineConfig(quiet=True))  # fmt: skip
        return summary.done

    assert asyncio.run(main()) == 3


def test_async_variants_run_side_by_side_under_load(fault_server: FaultServer) -> None:
    """Twelve calls at once, each waiting 1 s on the provider, run side by side: the provider
    has most of them in hand at the same moment (one after another, it would never hold two)."""
    fault_server.latency_s = 1.0

    async def main() -> tuple[list[int], float]:
        t0 = time.monotonic()
        kw = dict(model="m", api_base=fault_server.base_url, max_tokens=8, quiet=True)
        results = await asyncio.gather(
            *(cai_kit.agenerate([f"prompt {i}"], seed=i, **kw) for i in range(12))  # type: ignore[arg-type]
        )
        return [len(r) for r in results], time.monotonic() - t0

    sizes, took = asyncio.run(main())
    assert sizes == [1] * 12
    print(f"12 agenerate calls side by side: {took:.2f} s (each waits 1 s)")
    assert fault_server.most_in_flight >= 6, fault_server.most_in_flight


def test_cancelling_an_async_call_stops_its_calls_and_keeps_finished_rows(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.latency_s = 1.5
    prompts = [f"prompt {i}" for i in range(40)]

    async def main() -> None:
        task = asyncio.ensure_future(
            cai_kit.agenerate(prompts, model="m", api_base=fault_server.base_url, max_tokens=8,
                              quiet=True, out=tmp_path, engine=cai_kit.EngineConfig(concurrency=4))
        )  # fmt: skip
        await asyncio.sleep(2.5)  # the first four rows are written, four more are in flight
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert fault_server.requests < 40  # the rows not yet sent never were
    import json

    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "stopped"
    written = (tmp_path / "generations.jsonl").read_text().splitlines()
    assert 1 <= len(written) < 40  # finished work kept


def test_ctrl_c_while_waiting_in_a_running_loop_cancels_the_worker_loop() -> None:
    """The notebook's stop button raises KeyboardInterrupt in the thread that waits; the
    coroutine on the worker loop is cancelled (its cleanup runs) before it is re-raised."""
    cleaned = threading.Event()

    async def job() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.set()

    async def cell() -> None:
        threading.Timer(0.3, _thread.interrupt_main).start()
        run_sync(job())

    loop = asyncio.new_event_loop()  # as ipykernel's: SIGINT raises KeyboardInterrupt in the cell
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(cell())
    finally:
        loop.close()
    assert cleaned.is_set() and time.monotonic() - t0 < 5


def test_ctrl_c_under_asyncio_run_cancels_the_worker_loop_too() -> None:
    """Under asyncio.run, Ctrl-C cancels the main task instead of raising: the wait sees that
    and cancels the worker's loop instead of blocking until the work ends."""
    cleaned = threading.Event()

    async def job() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.set()

    async def main() -> None:
        threading.Timer(0.3, _thread.interrupt_main).start()
        run_sync(job())

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(main())
    assert cleaned.is_set() and time.monotonic() - t0 < 5


def test_a_loop_thread_keeps_one_loop_for_many_calls_and_cancels_on_ctrl_c() -> None:
    """`LoopThread`: the bridge for an object that needs one loop for its life (a judge
    client's sessions), inside a running loop as outside one."""
    from cai_kit.engine.loop import LoopThread

    cleaned = threading.Event()

    async def which_loop() -> int:
        return id(asyncio.get_running_loop())

    async def long() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.set()

    async def cell(lt: LoopThread) -> tuple[int, int]:
        return lt.run(which_loop()), lt.run(which_loop())  # sync calls inside a running loop

    with LoopThread() as lt:
        outer = asyncio.new_event_loop()
        try:
            first, second = outer.run_until_complete(cell(lt))
        finally:
            outer.close()
        assert first == second == lt.run(which_loop())
        threading.Timer(0.3, _thread.interrupt_main).start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            lt.run(long())
        assert cleaned.is_set() and time.monotonic() - t0 < 5
        assert lt.run(which_loop()) == first  # still usable after an interrupted call
    assert lt.loop.is_closed()


def test_import_cai_kit_exposes_the_api_and_train_lazily() -> None:
    for name in ("revise", "arevise", "prefs", "aprefs", "judge", "expand_prompts", "infer_constitution",
                 "evaluate_winrate", "evaluate_rubric", "evaluate_harmlessness", "Budget", "train"):  # fmt: skip
        assert name in dir(cai_kit) and getattr(cai_kit, name) is not None


def test_progress_goes_to_a_callback_and_notes_to_the_cai_kit_logger(
    fault_server: FaultServer, capfd: pytest.CaptureFixture[str]
) -> None:
    """A library reports through a callback and `logging`, not bare prints: with progress=
    no progress line is drawn, and an engine note reaches a handler on the `cai_kit` logger
    (and, by default, stderr as the CLI showed it)."""
    import logging

    seen: list[tuple[str, int, int]] = []
    notes: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            notes.append(record.getMessage())

    handler = Collect()
    logging.getLogger("cai_kit").addHandler(handler)
    try:
        rows = cai_kit.generate(PROMPTS, model="m", api_base=fault_server.base_url, max_tokens=8, max_cost=5.0,
                                progress=lambda p: seen.append((p.job, p.done, p.total)))  # fmt: skip
    finally:
        logging.getLogger("cai_kit").removeHandler(handler)
    assert seen and seen[-1] == ("generate", rows.summary.done, 3)
    assert any("no price is known for m" in n for n in notes)  # the unknown-price note
    err = capfd.readouterr().err
    assert "Note: no price is known for m" in err and "generate: " not in err  # no progress line


@pytest.mark.parametrize(
    ("command", "function"),
    [("cai_kit.cli.revise:revise", "revise"), ("cai_kit.cli.judge:prefs", "prefs"),
     ("cai_kit.cli.jobs:generate", "generate")],
)  # fmt: skip
def test_the_cli_and_the_python_api_share_their_defaults(command: str, function: str) -> None:
    """Defaults are defined once, in the library; the CLI's options read them."""
    import importlib
    import inspect

    module, name = command.split(":")
    cli = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    api = inspect.signature(getattr(cai_kit, function)).parameters
    shared = {
        "rounds",
        "principles",
        "temperature",
        "max_tokens",
        "seed",
        "k",
        "pairs",
        "label",
        "samples",
    }
    compared = [p for p in shared if p in cli and p in api]
    assert len(compared) >= 4
    for p in compared:
        assert cli[p].default == api[p].default, p


def test_reaching_the_api_pulls_in_no_heavy_library() -> None:
    import subprocess
    import sys

    code = "import cai_kit, sys; cai_kit.revise; cai_kit.aprefs; cai_kit.evaluate_rubric; print(' '.join(sys.modules))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())  # fmt: skip
    assert not loaded & {"torch", "transformers", "trl", "litellm", "peft", "llama_cpp", "datasets"}
