"""The critique→revise loop (the supervised phase of Constitutional AI).

For each prompt: an initial response (from the input's `response` column, or the
responder model), then for each round a principle sampled from the constitution, a critique
of the current response under it, and a revision under the same principle. As in the CAI
paper, the conversation continues: few-shot turns, the prompt, the response, the critique
request, the critique, the revision request, the revision, then the next round's critique
request. Every step keeps the exact messages it sent.

    from cai_kit.stages.revise import ReviseConfig, run_revise
    run_revise(prompts, ReviseConfig(constitution=load_constitution("harmless")), ...)
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cai_kit.constitution import Constitution, FewShotExample, Principle
from cai_kit.engine import CallFailed, Engine, EngineConfig, JobSpec, JobSummary, run_job
from cai_kit.engine.cost_preview import prompt_tokens
from cai_kit.errors import ConfigError
from cai_kit.llm.base import Backend, GenParams
from cai_kit.records import (
    CritiqueStep,
    Message,
    PromptRecord,
    Provenance,
    RevisionRecord,
    stable_hash,
)

CRITIQUE_PREFIX = "Critique request: "
REVISION_PREFIX = "Revision request: "
EARLY_STOP_SUFFIX = (
    "\nAfter your critique, write one final line that is exactly `Problem: yes` if the response "
    "has a problem under this request, or `Problem: no` if it has none."
)
_VERDICT = re.compile(r"problem\s*[:=]\s*\**\s*(yes|no)\b", re.IGNORECASE)


def check_mode(mode: str) -> None:
    """A `--principles` value of revise: random, sequence or all (else one sentence)."""
    if mode not in ("random", "sequence", "all"):
        raise ConfigError(f"--principles must be random, sequence or all, not {mode!r}.")


@dataclass
class ReviseConfig:
    constitution: Constitution
    rounds: int = 1
    mode: Literal["random", "sequence", "all"] = "random"
    seed: int = 0
    response_params: GenParams = field(default_factory=lambda: GenParams(max_tokens=256))
    critique_params: GenParams = field(
        default_factory=lambda: GenParams(temperature=0.3, max_tokens=192)
    )
    revision_params: GenParams = field(
        default_factory=lambda: GenParams(temperature=0.3, max_tokens=256)
    )
    early_stop: bool = False
    few_shot: bool = True

    def __post_init__(self) -> None:
        check_mode(self.mode)

    def describe(self) -> dict[str, object]:
        return {
            "rounds": self.rounds,
            "mode": self.mode,
            "early_stop": self.early_stop,
            "few_shot": self.few_shot,
            "response": self.response_params.to_dict(),
            "critique": self.critique_params.to_dict(),
            "revision": self.revision_params.to_dict(),
        }


@dataclass(frozen=True)
class ReviseDefaults:
    """The defaults of `cai-kit revise` and `cai_kit.revise`, defined once (the CLI reads them)."""

    rounds: int = 1
    principles: str = "random"  # one sampled per round, as in the CAI paper | sequence | all
    temperature: float = 0.7  # the response's; critiques and revisions use min(this, 0.3)
    max_tokens: int = 256
    seed: int = 0


REVISE_DEFAULTS = ReviseDefaults()
PRINCIPLE_MODES = ("random", "sequence", "all")


def revise_config(
    constitution: Constitution,
    *,
    rounds: int = REVISE_DEFAULTS.rounds,
    principles: str = REVISE_DEFAULTS.principles,
    temperature: float = REVISE_DEFAULTS.temperature,
    max_tokens: int = REVISE_DEFAULTS.max_tokens,
    seed: int = REVISE_DEFAULTS.seed,
    reasoning_effort: str | None = None,
    early_stop: bool = False,
    few_shot: bool = True,
) -> ReviseConfig:
    """A checked `ReviseConfig` from the options the CLI and the Python API share. Critiques
    and revisions run at min(temperature, 0.3): a stage default that a reasoning model which
    refuses temperature is simply not sent. The effort is in the params: record ids follow it."""
    if principles not in PRINCIPLE_MODES:
        raise ConfigError(f"--principles must be random, sequence or all, not {principles!r}.")
    if rounds < 0:
        raise ConfigError(f"--rounds must be 0 or more, not {rounds}.")
    cool = min(temperature, 0.3)
    return ReviseConfig(
        constitution=constitution,
        rounds=rounds,
        mode=principles,  # type: ignore[arg-type]
        seed=seed,
        response_params=GenParams(temperature=temperature, max_tokens=max_tokens, reasoning_effort=reasoning_effort),
        critique_params=GenParams(temperature=cool, max_tokens=max_tokens, reasoning_effort=reasoning_effort),
        revision_params=GenParams(temperature=cool, max_tokens=max_tokens, reasoning_effort=reasoning_effort),
        early_stop=early_stop,
        few_shot=few_shot,
    )  # fmt: skip


def backend_identities(responder: Backend, critic: Backend) -> dict[str, object]:
    return {"responder": responder.identity(), "critic": critic.identity()}


def revision_record_id(
    prompt: PromptRecord, cfg: ReviseConfig, identities: dict[str, object]
) -> str:
    """What decides whether this prompt's revision is done (resume, merging). It hashes the
    backends' identities (`backend_identities`), not only their model strings: new weights
    never reuse old work."""
    c = cfg.constitution
    return stable_hash(
        "revision", prompt.id, prompt.response, c.name, c.content_hash, cfg.seed, identities, cfg.describe()
    )  # fmt: skip


def principles_for(prompt: PromptRecord, cfg: ReviseConfig) -> list[Principle]:
    """Seeded per prompt, so results don't depend on order, concurrency or sharding."""
    rng = random.Random(int(stable_hash("principles", cfg.seed, prompt.id), 16))
    return cfg.constitution.sample_principles(rng, cfg.mode, cfg.rounds)


def _msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def few_shot_turns(examples: list[FewShotExample], principle: Principle) -> list[dict[str, str]]:
    turns: list[dict[str, str]] = []
    for ex in examples:
        turns += [
            _msg("user", ex.prompt),
            _msg("assistant", ex.response),
            _msg("user", CRITIQUE_PREFIX + principle.critique),
            _msg("assistant", ex.critique),
            _msg("user", REVISION_PREFIX + principle.revision),
            _msg("assistant", ex.revision),
        ]
    return turns


def opening(
    shots: list[dict[str, str]], prompt: list[dict[str, str]], response: str
) -> list[dict[str, str]]:
    """The start of every critique conversation: the few-shot turns (the same for every row
    sampled under the same first principle) before the row's own turns, so that providers'
    prompt caches serve the shared prefix (bench/prompt_cache.py measures what it saves)."""
    return [*shots, *prompt, _msg("assistant", response)]


def critic_found_no_problem(critique: str) -> bool | None:
    """True/False from the critic's last `Problem: yes|no` line; None when it gave none."""
    found = _VERDICT.findall(critique)
    return None if not found else found[-1].lower() == "no"


async def revise_one(
    prompt: PromptRecord,
    cfg: ReviseConfig,
    engine: Engine,
    responder: Backend,
    critic: Backend,
    models: dict[str, str],
    identities: dict[str, object] | None = None,
) -> RevisionRecord:
    identities = identities or backend_identities(responder, critic)
    record = RevisionRecord(
        id=revision_record_id(prompt, cfg, identities),
        prompt_id=prompt.id,
        messages=prompt.messages,
        provenance=Provenance(
            constitution=cfg.constitution.name,
            constitution_hash=cfg.constitution.content_hash,
            models=models,
            params=cfg.describe(),
            seed=cfg.seed,
        ),
        metadata={**prompt.metadata, **({"source": prompt.source} if prompt.source else {})},
    )
    base = [m.model_dump() for m in prompt.messages]
    principles = principles_for(prompt, cfg)
    record.provenance.principle_ids = [p.id for p in principles]
    try:
        if prompt.response is not None:
            current = prompt.response
        else:
            params = cfg.response_params.replace(seed=cfg.seed)
            current = (await engine.call(responder, base, params)).text.strip()
        record.initial_response = current
        shots = (
            few_shot_turns(cfg.constitution.few_shot, principles[0])
            if cfg.few_shot and principles
            else []
        )
        conversation = opening(shots, base, current)
        for rnd, principle in enumerate(principles, start=1):
            request = (
                CRITIQUE_PREFIX + principle.critique + (EARLY_STOP_SUFFIX if cfg.early_stop else "")
            )
            critique_messages = [*conversation, _msg("user", request)]
            critique = (
                await engine.call(
                    critic, critique_messages, cfg.critique_params.replace(seed=cfg.seed + rnd)
                )
            ).text.strip()
            step = CritiqueStep(
                round=rnd,
                principle_id=principle.id,
                critique_messages=[Message(**m) for m in critique_messages],  # type: ignore[arg-type]
                critique=critique,
            )
            conversation = [*critique_messages, _msg("assistant", critique)]
            if cfg.early_stop and critic_found_no_problem(critique):
                step.skipped_reason = f"the critic found no problem under '{principle.id}'"
                record.steps.append(step)
                continue
            revision_messages = [*conversation, _msg("user", REVISION_PREFIX + principle.revision)]
            revision = (
                await engine.call(
                    critic, revision_messages, cfg.revision_params.replace(seed=cfg.seed + rnd)
                )
            ).text.strip()
            step.revision_messages = [Message(**m) for m in revision_messages]  # type: ignore[arg-type]
            step.revision = revision
            record.steps.append(step)
            conversation = [*revision_messages, _msg("assistant", revision)]
            if revision:
                current = revision
        record.final_response = current
    except CallFailed as exc:
        record.status = "failed"
        record.error = str(exc)
    return record


def estimate_calls(
    prompt: PromptRecord, cfg: ReviseConfig, responder: Backend, critic: Backend
) -> list[tuple[Backend, int, int]]:
    """(backend, prompt tokens, completion tokens) of each call, every answer at max_tokens:
    the worst case, for the --dry-run cost preview."""
    base = [m.model_dump() for m in prompt.messages]
    calls: list[tuple[Backend, int, int]] = []
    if prompt.response is None:
        calls.append((responder, prompt_tokens(base), cfg.response_params.max_tokens))
        answer = cfg.response_params.max_tokens
    else:
        answer = len(prompt.response) // 4
    principles = principles_for(prompt, cfg)
    shots = (
        few_shot_turns(cfg.constitution.few_shot, principles[0])
        if cfg.few_shot and principles
        else []
    )
    context = prompt_tokens(shots + base) + answer
    for p in principles:
        context += len(CRITIQUE_PREFIX + p.critique) // 4 + 4
        calls.append((critic, context, cfg.critique_params.max_tokens))
        context += cfg.critique_params.max_tokens + len(REVISION_PREFIX + p.revision) // 4 + 4
        calls.append((critic, context, cfg.revision_params.max_tokens))
        context += cfg.revision_params.max_tokens
    return calls


def run_revise(
    prompts: list[PromptRecord],
    cfg: ReviseConfig,
    *,
    responder: Backend,
    critic: Backend,
    models: dict[str, str],
    out_dir: Path,
    engine_config: EngineConfig,
    shard: tuple[int, int] | None = None,
    argv: list[str] | None = None,
    inputs: dict[str, object] | None = None,
) -> JobSummary:
    """Run the loop over every prompt not done yet; writes OUT/revisions.jsonl + manifest."""
    identities = backend_identities(responder, critic)

    async def process(prompt: PromptRecord, engine: Engine) -> RevisionRecord:
        return await revise_one(prompt, cfg, engine, responder, critic, models, identities)

    spec = JobSpec(
        name="revise",
        items=prompts,
        item_id=lambda p: revision_record_id(p, cfg, identities),
        process=process,
        output=out_dir / "revisions.jsonl",
        record_type=RevisionRecord,
        run_dir=out_dir,
        manifest={
            "command": "revise",
            "argv": argv or [],
            "provenance": {
                "constitution": cfg.constitution.name,
                "constitution_hash": cfg.constitution.content_hash,
                "models": models,
                "params": cfg.describe(),
                "seed": cfg.seed,
            },
            "inputs": inputs or {},
        },
        estimate_tokens=lambda p: estimate_calls(p, cfg, responder, critic),
        shard=shard,
        shard_key=lambda p: p.id,  # the same prompts in shard I of revise, generate and prefs
        backends=[responder] if responder is critic else [responder, critic],
    )
    return run_job(spec, engine_config)
