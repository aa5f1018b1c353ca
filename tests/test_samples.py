"""Sample i is its own draw, shards split by prompt, ids follow the backend's identity.

Against real parts: the scripted provider server (honours `seed` like vLLM/OpenAI), the
embedded model through llama.cpp and through transformers.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.constitution import load_constitution
from cai_kit.engine import Engine, EngineConfig
from cai_kit.judges.pairwise import JudgeConfig, judge_pair
from cai_kit.llm import GenParams, get_backend
from cai_kit.records import Message, PromptRecord
from cai_kit.stages.generate import run_generate
from tests.fixtures.fault_server import FaultServer, default_reply

_RESPONSE = re.compile(r"<<<RESPONSE-([AB])-\w+>>>\n(.*?)\n<<<END-RESPONSE-\1-\w+>>>", re.DOTALL)


def _write_prompts(path: Path, n: int) -> Path:
    rows = [json.loads(x) for x in Path("examples/red_team_prompts.jsonl").read_text().splitlines()]
    path.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows[:n]))
    return path


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _by_prompt(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in sorted(_rows(path), key=lambda r: r["sample_index"]):
        out.setdefault(r["prompt_id"], []).append(r["response"])
    return out


def _invoke(*args: str, quiet: bool = True, code: int = 0) -> str:
    result = CliRunner().invoke(app, [*args, *(["--quiet"] if quiet else [])])
    assert result.exit_code == code, result.output
    return result.output


def _oracle_score(text: str) -> tuple[int, str]:
    """More words from the first half of the alphabet is better; the text breaks ties, so two
    different responses never tie, and identical ones always do."""
    return sum(w[0] <= "m" for w in text.split()[2:]), text


def oracle(body: dict[str, Any], rng: random.Random) -> str:
    """Judge prompts get the letter of the better response (whatever the order); anything
    else is a policy call and gets the server's usual seeded draw."""
    found = dict(_RESPONSE.findall(str(body["messages"][-1]["content"])))
    if not found:
        return default_reply(body, rng)
    return "A" if _oracle_score(found["A"]) >= _oracle_score(found["B"]) else "B"


# --- distinct samples -------------------------------------------------------------------


def test_k_samples_are_distinct_draws_on_a_seed_honouring_server(
    provider_server: FaultServer, tmp_path: Path
) -> None:
    prompts = _write_prompts(tmp_path / "p.jsonl", 3)
    server = ["--model", "m", "--api-base", provider_server.base_url]
    _invoke("generate", str(prompts), "--out", str(tmp_path / "a"), "--samples", "4", *server)
    samples = _by_prompt(tmp_path / "a" / "generations.jsonl")
    assert len(samples) == 3
    assert [len(set(texts)) for texts in samples.values()] == [4, 4, 4]
    seeds = {b["seed"] for b in provider_server.bodies}
    assert len(seeds) == 4  # the sample index reached the request, not only the cache key
    # the same --seed gives the same samples (no cache), another --seed other samples
    again = ["--samples", "4", "--no-cache", *server]
    _invoke("generate", str(prompts), "--out", str(tmp_path / "b"), *again)
    assert _by_prompt(tmp_path / "b" / "generations.jsonl") == samples
    _invoke("generate", str(prompts), "--out", str(tmp_path / "c"), "--seed", "7", *again)
    other = _by_prompt(tmp_path / "c" / "generations.jsonl")
    assert all(set(other[p]).isdisjoint(samples[p]) for p in samples)


def test_a_provider_that_ignores_seeds_gets_k_draws_and_the_cache_keeps_them(
    provider_server: FaultServer, tmp_path: Path
) -> None:
    provider_server.honour_seed = False
    prompts = _write_prompts(tmp_path / "p.jsonl", 2)
    flags = ["--samples", "4", "--model", "m", "--api-base", provider_server.base_url]
    _invoke("generate", str(prompts), "--out", str(tmp_path / "a"), *flags)
    samples = _by_prompt(tmp_path / "a" / "generations.jsonl")
    assert [len(set(texts)) for texts in samples.values()] == [4, 4]
    paid = provider_server.paid
    _invoke("generate", str(prompts), "--out", str(tmp_path / "b"), *flags)  # a new run dir
    assert _by_prompt(tmp_path / "b" / "generations.jsonl") == samples  # from the call cache
    assert provider_server.paid == paid


def test_k_samples_are_distinct_draws_through_litellm(
    provider_server: FaultServer, tmp_path: Path
) -> None:
    prompts = _write_prompts(tmp_path / "p.jsonl", 2)
    model = ["--model", "litellm:openai/m", "--api-base", provider_server.base_url]
    _invoke("generate", str(prompts), "--out", str(tmp_path / "a"), "--samples", "4", *model)
    samples = _by_prompt(tmp_path / "a" / "generations.jsonl")
    assert [len(set(texts)) for texts in samples.values()] == [4, 4]


def test_litellm_sends_a_seed_only_to_providers_that_take_one() -> None:
    from cai_kit.llm.litellm_backend import _import_litellm, _takes_seed

    litellm = _import_litellm()
    assert _takes_seed(litellm, "openai/gpt-4o-mini")
    assert not _takes_seed(litellm, "anthropic/claude-3-5-haiku-latest")  # litellm would refuse


@pytest.mark.slow
def test_k_samples_are_distinct_draws_on_the_embedded_model(tmp_path: Path) -> None:
    prompts = _write_prompts(tmp_path / "p.jsonl", 3)
    flags = ["--samples", "4", "--max-tokens", "24", "--no-cache"]
    _invoke("generate", str(prompts), "--out", str(tmp_path / "a"), *flags)
    samples = _by_prompt(tmp_path / "a" / "generations.jsonl")
    assert [len(set(texts)) for texts in samples.values()] == [4, 4, 4]
    _invoke("generate", str(prompts), "--out", str(tmp_path / "b"), *flags)
    assert _by_prompt(tmp_path / "b" / "generations.jsonl") == samples  # reproducible


@pytest.mark.slow
def test_k_samples_are_distinct_draws_on_a_real_llama_cpp_server(
    llama_server,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    prompts = _write_prompts(tmp_path / "p.jsonl", 2)
    flags = ["--samples", "4", "--max-tokens", "16", "--no-cache", "--model", llama_server.model,
             "--api-base", llama_server.base_url]  # fmt: skip
    _invoke("generate", str(prompts), "--out", str(tmp_path / "a"), *flags)
    samples = _by_prompt(tmp_path / "a" / "generations.jsonl")
    assert [len(set(texts)) for texts in samples.values()] == [4, 4]
    _invoke("generate", str(prompts), "--out", str(tmp_path / "b"), *flags)
    assert _by_prompt(tmp_path / "b" / "generations.jsonl") == samples  # the server honours seed


@pytest.mark.slow
def test_transformers_samples_differ_by_seed_and_do_not_depend_on_the_batch(
    tmp_path: Path,
) -> None:
    """Each row of a micro-batch draws from its own seed: the batched run gives the same
    k samples as one call at a time, and the k samples differ."""
    messages = [{"role": "user", "content": "Name an animal and say why you like it."}]
    params = GenParams(temperature=1.0, max_tokens=8, seed=3)

    async def go() -> tuple[list[str], list[str]]:
        backend = get_backend("local:transformers")
        engine = Engine(EngineConfig(use_cache=False, quiet=True))
        try:
            batched = await asyncio.gather(
                *(engine.call(backend, messages, params, sample_index=i) for i in range(3))
            )
            one_by_one = [
                await engine.call(backend, messages, params, sample_index=i) for i in range(3)
            ]
            return [c.text for c in batched], [c.text for c in one_by_one]
        finally:
            await backend.aclose()

    batched, sequential = asyncio.run(go())
    assert len(set(batched)) == 3
    assert batched == sequential


def test_votes_are_distinct_draws(provider_server: FaultServer, tmp_path: Path) -> None:
    provider_server.responder = lambda body, rng: rng.choice("AB")  # an undecided judge
    cfg = JudgeConfig(mode="votes", samples=7, seed=0)

    async def go():  # type: ignore[no-untyped-def]
        backend = get_backend("m", api_base=provider_server.base_url)
        engine = Engine(EngineConfig(cache_path=tmp_path / "c.sqlite", quiet=True))
        try:
            convo = [{"role": "user", "content": "Say something."}]
            return await judge_pair(
                convo, "one", "two", load_constitution("harmless"), cfg, engine, backend
            )
        finally:
            await backend.aclose()
            await engine.aclose()

    verdict = asyncio.run(go())
    assert len(verdict.comparisons) == 2
    for comp in verdict.comparisons:  # 7 draws of a coin: both letters show up
        assert comp.p_first is not None and 0 < comp.p_first < 1, comp.raw
    assert len({b["seed"] for b in provider_server.bodies}) == 7


def test_prefs_with_an_oracle_judge_gives_exportable_pairs(
    provider_server: FaultServer, tmp_path: Path
) -> None:
    provider_server.responder = oracle
    prompts = _write_prompts(tmp_path / "p.jsonl", 17)
    out = _invoke(
        "prefs", str(prompts), "--out", str(tmp_path / "pf"), "--k", "4", "--pairs", "all",
        "--mode", "letter", "--policy-model", "m", "--judge-model", "m",
        "--api-base", provider_server.base_url,
    )  # fmt: skip
    assert "judging:  102 done; 0 failed" in out
    records = _rows(tmp_path / "pf" / "prefs.jsonl")
    assert len(records) == 102
    assert all(r["response_a"] != r["response_b"] for r in records)
    assert all(r["chosen"] and r["chosen"] != r["rejected"] for r in records)
    assert all(r["verdict"]["position_consistent"] for r in records)
    for r in records:  # the oracle's preference, whatever the order it was shown in
        assert _oracle_score(r["chosen"]) > _oracle_score(r["rejected"])
    exported = _invoke(
        "export", "dpo", str(tmp_path / "pf"), "--out", str(tmp_path / "dpo"), quiet=False
    )
    assert "Wrote 102 train / 0 test rows" in exported
    assert len(_rows(tmp_path / "dpo" / "train.jsonl")) == 102


# --- shards -----------------------------------------------------------------------------


def _ids(path: Path) -> set[str]:
    return {r["id"] for r in _rows(path)} if path.exists() else set()


def _prompt_ids(path: Path) -> set[str]:
    return {r["prompt_id"] for r in _rows(path)} if path.exists() else set()


def test_generate_and_prefs_shards_split_by_prompt_and_union_to_the_unsharded_run(
    provider_server: FaultServer, tmp_path: Path
) -> None:
    provider_server.responder = oracle
    prompts = _write_prompts(tmp_path / "p.jsonl", 12)
    common = ["--model", "m", "--api-base", provider_server.base_url]
    prefs = ["--k", "3", "--pairs", "all", "--mode", "letter", "--policy-model", "m",
             "--judge-model", "m", "--api-base", provider_server.base_url]  # fmt: skip
    for name, shard in (("all", None), ("s1", "1/2"), ("s2", "2/2")):
        extra = ["--shard", shard] if shard else []
        _invoke("generate", str(prompts), "--out", str(tmp_path / f"g-{name}"), "--samples", "3",
                *common, *extra)  # fmt: skip
        _invoke("prefs", str(prompts), "--out", str(tmp_path / f"p-{name}"), *prefs, *extra)
    for files in ("g-{}/generations.jsonl", "p-{}/samples/generations.jsonl", "p-{}/prefs.jsonl"):
        whole, s1, s2 = (tmp_path / files.format(n) for n in ("all", "s1", "s2"))
        assert _ids(s1) and _ids(s2)
        assert _ids(s1) | _ids(s2) == _ids(whole) and not _ids(s1) & _ids(s2)
        assert not _prompt_ids(s1) & _prompt_ids(s2)  # every row of a prompt in one shard
    assert len(_ids(tmp_path / "p-all" / "prefs.jsonl")) == 12 * 3


def test_revise_and_judge_shards_union_to_the_unsharded_run(
    provider_server: FaultServer, tmp_path: Path
) -> None:
    prompts = _write_prompts(tmp_path / "p.jsonl", 8)
    common = ["--model", "m", "--api-base", provider_server.base_url]
    for name, shard in (("all", None), ("s1", "1/2"), ("s2", "2/2")):
        extra = ["--shard", shard] if shard else []
        _invoke("revise", str(prompts), "--out", str(tmp_path / f"r-{name}"), *common, *extra)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps(
                {"prompt": f"question {i % 6}", "response_a": f"a{i}", "response_b": f"b{i}"}
            )
            + "\n"
            for i in range(12)
        )
    )
    for name, shard in (("all", None), ("s1", "1/2"), ("s2", "2/2")):
        extra = ["--shard", shard] if shard else []
        # the server's replies are not A or B: every verdict fails (exit 1)
        _invoke("judge", str(pairs), "--out", str(tmp_path / f"j-{name}"), "--mode", "letter",
                "--judge-model", "m", "--api-base", provider_server.base_url, *extra, code=1)  # fmt: skip
    for files in ("r-{}/revisions.jsonl", "j-{}/prefs.jsonl"):
        whole, s1, s2 = (tmp_path / files.format(n) for n in ("all", "s1", "s2"))
        assert _ids(s1) and _ids(s2)
        assert _ids(s1) | _ids(s2) == _ids(whole) and not _ids(s1) & _ids(s2)
        assert not _prompt_ids(s1) & _prompt_ids(s2)


# --- ids follow the backend -------------------------------------------------------------


def test_generation_ids_follow_the_backend_identity_not_the_model_string(
    provider_server: FaultServer, tmp_path: Path
) -> None:
    msgs = [Message(role="user", content="question")]
    prompts = [PromptRecord(id=PromptRecord.make_id(msgs), messages=msgs)]
    port = provider_server.base_url.split(":")[2].split("/")[0]
    cfg = EngineConfig(quiet=True, cache_path=tmp_path / "c.sqlite")
    for base in (provider_server.base_url, f"http://localhost:{port}/v1"):
        summary = run_generate(
            prompts, backend=get_backend("m", api_base=base), model="m",
            params=GenParams(max_tokens=8), samples=1, out_dir=tmp_path / "g", engine_config=cfg,
        )  # fmt: skip
        assert summary.done == 1 and summary.already_done == 0  # another backend: not done yet
