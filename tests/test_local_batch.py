"""The embedded model in jobs: concurrent calls on `local` are decoded together by llama.cpp
(`cai_kit.llm.llama_batch`), each draw seeded by its own request, and a job uses that path."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cai_kit.llm import GenParams
from cai_kit.llm.embedded import gguf_path
from cai_kit.llm.local import LlamaCppBackend

pytestmark = pytest.mark.slow

TOPICS = ["tea", "rain", "maps", "bees"]


def _msgs(topic: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write one sentence about {topic}."}]


async def _together(backend: LlamaCppBackend, jobs: list[tuple[str, GenParams]]) -> list[str]:
    try:
        outs = await asyncio.gather(*(backend.chat(_msgs(t), p) for t, p in jobs))
        return [o.text for o in outs]
    finally:
        await backend.aclose()


def test_concurrent_calls_are_decoded_in_one_batch_with_per_request_seeds() -> None:
    sampled = [GenParams(temperature=0.9, max_tokens=10, seed=s) for s in (1, 2, 1)]
    jobs = [("tea", p) for p in sampled] + [
        (t, GenParams(temperature=0, max_tokens=10)) for t in TOPICS
    ]
    backend = LlamaCppBackend(gguf_path(), parallel=8)
    texts = asyncio.run(_together(backend, jobs))
    assert backend.default_concurrency == 8  # a job keeps every slot busy
    assert all(t.strip() for t in texts)
    assert texts[0] == texts[2], "the same seed must give the same text"
    assert texts[0] != texts[1], "another seed must give another draw"
    again = asyncio.run(_together(LlamaCppBackend(gguf_path(), parallel=8), jobs))
    assert again == texts  # a re-run (a resumed job) gets the same answers


def test_the_batched_engine_really_runs_conversations_side_by_side() -> None:
    backend = LlamaCppBackend(gguf_path(), parallel=4)

    async def go() -> int:
        await asyncio.gather(*(backend.chat(_msgs(t), GenParams(max_tokens=6)) for t in TOPICS))
        peak = backend._batched.max_active
        await backend.aclose()
        return peak

    assert asyncio.run(go()) > 1  # on the one-at-a-time path nothing ever ran beside another


def test_a_request_longer_than_a_batched_slot_takes_the_big_context() -> None:
    backend = LlamaCppBackend(gguf_path(), parallel=4, n_ctx_seq=32)  # a 32-token slot
    long = GenParams(temperature=0, max_tokens=40)
    texts = asyncio.run(_together(backend, [("tea", long), ("rain", GenParams(max_tokens=4))]))
    assert texts[0].strip() and texts[1].strip()


def test_top_logprobs_on_the_batched_path() -> None:
    backend = LlamaCppBackend(gguf_path(), parallel=4)

    async def go():  # type: ignore[no-untyped-def]
        try:
            return await asyncio.gather(
                *(
                    backend.chat(_msgs(t), GenParams(temperature=0, max_tokens=3, top_logprobs=5))
                    for t in TOPICS[:2]
                )
            )
        finally:
            await backend.aclose()

    for c in asyncio.run(go()):
        assert c.logprobs and len(c.logprobs) == c.usage.completion_tokens
        first = c.logprobs[0]
        assert len(first.top) == 5 and first.logprob <= 0
        assert first.logprob == pytest.approx(
            max(first.top.values()), abs=1e-4
        )  # greedy: the top one


def test_a_revise_job_on_local_uses_the_batched_path(tmp_path: Path) -> None:
    from cai_kit.constitution import load_constitution
    from cai_kit.engine import EngineConfig
    from cai_kit.llm import get_backend
    from cai_kit.records import Message, PromptRecord
    from cai_kit.stages.revise import ReviseConfig, run_revise

    backend = get_backend("local")
    assert isinstance(backend, LlamaCppBackend) and backend.parallel > 1
    assert backend.identity()["decode"] == "batched-q8_0"  # its own call-cache entries
    prompts = []
    for t in TOPICS:
        msgs = [Message(role="user", content=f"Tell me about {t}.")]
        prompts.append(PromptRecord(id=PromptRecord.make_id(msgs), messages=msgs))
    short = GenParams(max_tokens=6)
    cfg = ReviseConfig(constitution=load_constitution("harmless"), response_params=short,
                       critique_params=short, revision_params=short)  # fmt: skip
    s = run_revise(prompts, cfg, responder=backend, critic=backend, models={"policy": "local"},
                   out_dir=tmp_path / "run", engine_config=EngineConfig(quiet=True, cache_path=tmp_path / "c.sqlite"))  # fmt: skip
    assert s.done == len(TOPICS) and s.failed == 0
    assert backend._batched is None  # closed by the job


def test_a_local_call_is_not_timed_out_while_it_waits_for_the_model(tmp_path: Path) -> None:
    """--timeout is for servers that may never answer. A call to the model on this machine
    waits for loading, for its turn and for its batch mates: timing it out would only fail
    it (and retry it behind the still-running original), never make it faster."""
    from cai_kit.engine import EngineConfig, JobSpec, run_job
    from cai_kit.llm import get_backend
    from cai_kit.records import GenerationRecord

    backend = get_backend("local")
    params = GenParams(max_tokens=24, temperature=0.7, seed=1)

    async def process(topic: str, engine: object) -> GenerationRecord:
        c = await engine.call(backend, _msgs(topic), params)  # type: ignore[attr-defined]
        return GenerationRecord(id=topic, prompt_id=topic, messages=_msgs(topic), response=c.text)

    spec = JobSpec(name="gen", items=TOPICS, item_id=lambda t: t, process=process,
                   output=tmp_path / "out.jsonl", record_type=GenerationRecord,
                   run_dir=tmp_path, backends=[backend])  # fmt: skip
    config = EngineConfig(quiet=True, timeout_s=0.05, max_retries=0, use_cache=False)
    summary = run_job(spec, config)
    assert summary.done == len(TOPICS) and summary.failed == 0, summary.line()
    assert summary.stats["retries"] == 0


def test_one_conversation_decoder_gives_the_same_sample_for_a_seed_whatever_came_before() -> None:
    """`parallel=1` (and `serve`'s stream) decode on one llama.cpp context, whose KV cache
    would keep the prompt of the call before: llama.cpp then evaluates only what is new, and
    those logits can differ in the last bits from a whole-prompt evaluation (other kernels for
    other batch sizes), so the same seed gave another sample after the same question."""
    backend = LlamaCppBackend(gguf_path(), parallel=1)
    params = GenParams(max_tokens=24, temperature=0.7, seed=1)
    msgs = [{"role": "user", "content": "Name three colours."}]

    async def twice() -> tuple[str, str]:
        first = await backend.chat(msgs, params)
        again = await backend.chat(msgs, params)
        await backend.aclose()
        return first.text, again.text

    first, again = asyncio.run(twice())
    assert first.strip() and first == again


def test_llama_cpp_threads_sleep_while_they_wait_unless_the_user_chose() -> None:
    """llama.cpp's OpenMP threads busy-wait by default; beside anything else on few cores they
    fight for them (`python bench/llama_threads.py`: 12.7x slower with one busy process on 2
    cores). Loading the embedded model sets OMP_WAIT_POLICY=PASSIVE first, unless it is set."""
    import os
    import subprocess
    import sys

    code = (
        "import os\n"
        "from cai_kit.llm.embedded import gguf_path\n"
        "from cai_kit.llm.local import LlamaCppBackend\n"
        "LlamaCppBackend(gguf_path(), parallel=1)._llm(False)\n"
        "print(os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.stdout.strip().splitlines()[-1] == "PASSIVE", run.stderr[-2000:]
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.stdout.strip().splitlines()[-1] == "ACTIVE", run.stderr[-2000:]
