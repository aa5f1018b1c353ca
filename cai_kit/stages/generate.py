"""Sample k responses per prompt: one model call per output row (`cai-kit generate`).

Sample i of a prompt is its own draw: the engine gives it a seed derived from `params.seed`
and i (`GenParams.for_sample`), so a re-run with the same seed gives the same k samples.
`--shard I/N` splits by prompt: all k samples of a prompt are in one shard.

    run_generate(prompts, backend=get_backend("local"), model="local", params=GenParams(seed=0),
                 samples=4, out_dir=Path("runs/gen"), engine_config=EngineConfig())
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai_kit.engine import CallFailed, Engine, EngineConfig, JobSpec, JobSummary, run_job
from cai_kit.engine.cost_preview import prompt_tokens
from cai_kit.llm.base import Backend, GenParams
from cai_kit.records import GenerationRecord, PromptRecord, Provenance, stable_hash

Item = tuple[PromptRecord, int]  # (prompt, sample index)


@dataclass(frozen=True)
class GenerateDefaults:
    """The defaults of `cai-kit generate` and `cai_kit.generate`, defined once (the CLI reads them)."""

    samples: int = 1
    temperature: float = 0.7
    max_tokens: int = 256
    seed: int = 0


GENERATE_DEFAULTS = GenerateDefaults()


def generation_id(item: Item, identity: dict[str, Any], params: GenParams) -> str:
    """Hashes the backend's identity (not only the model string): new weights, new ids."""
    prompt, k = item
    return stable_hash("generation", prompt.id, k, identity, params.to_dict())


def run_generate(
    prompts: list[PromptRecord],
    *,
    backend: Backend,
    model: str,
    params: GenParams,
    samples: int,
    out_dir: Path,
    engine_config: EngineConfig,
    shard: tuple[int, int] | None = None,
    argv: list[str] | None = None,
) -> JobSummary:
    """Write OUT/generations.jsonl: `samples` responses per prompt, each its own draw."""
    items: list[Item] = [(p, k) for p in prompts for k in range(samples)]
    identity = backend.identity()

    async def process(item: Item, engine: Engine) -> GenerationRecord:
        prompt, k = item
        rec = GenerationRecord(
            id=generation_id(item, identity, params),
            prompt_id=prompt.id,
            messages=prompt.messages,
            sample_index=k,
            provenance=Provenance(
                models={"policy": model}, params=params.to_dict(), seed=params.for_sample(k).seed
            ),
            metadata=prompt.metadata,
        )
        try:
            c = await engine.call(
                backend, [m.model_dump() for m in prompt.messages], params, sample_index=k
            )
            rec.response = c.text
            rec.usage = {
                "prompt_tokens": c.usage.prompt_tokens,
                "completion_tokens": c.usage.completion_tokens,
            }
        except CallFailed as exc:
            rec.status, rec.error = "failed", str(exc)
        return rec

    spec = JobSpec(
        name="generate",
        items=items,
        item_id=lambda it: generation_id(it, identity, params),
        process=process,
        output=out_dir / "generations.jsonl",
        record_type=GenerationRecord,
        run_dir=out_dir,
        manifest={
            "command": "generate",
            "argv": argv or [],
            "provenance": {"models": {"policy": model}, "params": params.to_dict()},
        },
        estimate_tokens=lambda it: [
            (backend, prompt_tokens([m.model_dump() for m in it[0].messages]), params.max_tokens)
        ],
        shard=shard,
        shard_key=lambda it: it[0].id,
        backends=[backend],
    )
    return run_job(spec, engine_config)
