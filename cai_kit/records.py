"""The record schema: the one fixed contract between every stage of cai-kit.

Every stage reads and writes JSONL whose lines are these pydantic models. Models forbid
unknown fields so that a typo or a schema drift is an error at the boundary, and every
record carries `schema_version` plus a stable `id` (a hash of its inputs) that decides
whether a piece of work is already done (resume, sharding, merging).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cai_kit._version import __version__

SCHEMA_VERSION = 1

Role = Literal["system", "user", "assistant"]


def stable_hash(*parts: Any, length: int = 16) -> str:
    """A short, stable hex digest of JSON-serialisable parts (sorted keys, no whitespace)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Message(_Record):
    role: Role
    content: str


class Provenance(_Record):
    """Where a record came from: enough to reproduce or audit it."""

    constitution: str | None = None
    constitution_hash: str | None = None
    principle_ids: list[str] = Field(default_factory=list)
    models: dict[str, str] = Field(
        default_factory=dict, description="role -> model string, e.g. {'policy': 'local'}"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="sampling parameters")
    seed: int | None = None
    cai_kit_version: str = __version__


class PromptRecord(_Record):
    """One input prompt, normalised from any supported prompt file format."""

    schema_version: int = SCHEMA_VERSION
    id: str
    messages: list[Message]
    response: str | None = Field(default=None, description="an existing initial response, if given")
    source: str | None = Field(default=None, description="file:line the prompt came from")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @staticmethod
    def make_id(messages: list[Message] | list[dict[str, str]]) -> str:
        msgs = [m.model_dump() if isinstance(m, Message) else dict(m) for m in messages]
        return stable_hash("prompt", msgs)

    @property
    def prompt_text(self) -> str:
        """The last user turn: the text a human would call 'the prompt'."""
        for m in reversed(self.messages):
            if m.role == "user":
                return m.content
        return self.messages[-1].content if self.messages else ""


class CritiqueStep(_Record):
    """One critique→revision round under one principle, with the exact messages sent."""

    round: int
    principle_id: str
    critique_messages: list[Message]
    critique: str
    revision_messages: list[Message] | None = None
    revision: str | None = None
    skipped_reason: str | None = Field(
        default=None, description="why the revision was skipped (e.g. the critic found no problem)"
    )


class RevisionRecord(_Record):
    """The full critique→revise trace for one prompt (SFT data source)."""

    schema_version: int = SCHEMA_VERSION
    id: str
    prompt_id: str
    messages: list[Message] = Field(description="the prompt conversation")
    initial_response: str | None = None
    steps: list[CritiqueStep] = Field(default_factory=list)
    final_response: str | None = None
    status: Literal["ok", "failed"] = "ok"
    error: str | None = None
    provenance: Provenance = Field(default_factory=Provenance)
    metadata: dict[str, Any] = Field(default_factory=dict)


class Comparison(_Record):
    """A judge call for one order of a pair: which of (first, second) is better."""

    order: Literal["ab", "ba"]
    principle_id: str | None = None
    p_first: float | None = Field(
        default=None, description="P(first shown response is better), from log-probs or votes"
    )
    letter: Literal["A", "B"] | None = None
    source: Literal["logprobs", "letter", "votes"] | None = None
    rationale: str | None = None
    raw: str | None = Field(default=None, description="the judge's raw reply")
    error: str | None = None


class JudgeVerdict(_Record):
    """Both orders of a pairwise judgement, combined into a soft label."""

    schema_version: int = SCHEMA_VERSION
    p_a: float | None = Field(
        default=None, description="P(response A is better), averaged over orders"
    )
    label: Literal["A", "B", "tie", "failed"]
    margin: float | None = Field(default=None, description="|p_a - 0.5| * 2, in [0, 1]")
    position_consistent: bool | None = None
    comparisons: list[Comparison] = Field(default_factory=list)
    principle_ids: list[str] = Field(default_factory=list)
    error: str | None = None


class PreferenceRecord(_Record):
    """A judged pair (RLAIF preference data). `status` is `failed` whenever the verdict failed
    or lost any comparison it claims (HTTP error, retries exhausted, unparseable answer): such
    a record is never usable data."""

    schema_version: int = SCHEMA_VERSION
    id: str
    prompt_id: str
    messages: list[Message] = Field(description="the prompt conversation")
    chosen: str | None = None
    rejected: str | None = None
    response_a: str
    response_b: str
    verdict: JudgeVerdict
    status: Literal["ok", "failed"] = "ok"
    error: str | None = None
    provenance: Provenance = Field(default_factory=Provenance)
    metadata: dict[str, Any] = Field(default_factory=dict)
    rubric: dict[str, Any] | None = Field(
        default=None,
        description="`prefs --label rubric`: each response's rubric score ({'a': ..., 'b': ...})",
    )

    @model_validator(mode="after")
    def _failed_verdict_is_a_failed_record(self) -> PreferenceRecord:
        # Also reads records written before `status` existed: a failed verdict was a failure;
        # and records written while a verdict could lose comparisons and still be `ok`.
        lost = sum(c.p_first is None for c in self.verdict.comparisons)
        if self.verdict.label == "failed":
            self.status = "failed"
            self.error = self.error or self.verdict.error or "the judgement failed"
        elif lost and self.status == "ok":
            self.status = "failed"
            self.error = f"{lost} of {len(self.verdict.comparisons)} comparisons failed"
        return self


class GenerationRecord(_Record):
    """One sampled response to one prompt (`cai-kit generate`)."""

    schema_version: int = SCHEMA_VERSION
    id: str
    prompt_id: str
    messages: list[Message]
    sample_index: int = 0
    response: str | None = None
    status: Literal["ok", "failed"] = "ok"
    error: str | None = None
    usage: dict[str, int] = Field(default_factory=dict)
    provenance: Provenance = Field(default_factory=Provenance)
    metadata: dict[str, Any] = Field(default_factory=dict)


class RunManifest(_Record):
    """`manifest.json` of a run directory: what ran, with what, and how it went."""

    schema_version: int = SCHEMA_VERSION
    command: str
    argv: list[str] = Field(default_factory=list)
    cwd: str | None = None  # where argv ran: its relative paths are relative to this
    started_at: str
    finished_at: str | None = None
    status: Literal["running", "finished", "stopped", "failed"] = "running"
    provenance: Provenance = Field(default_factory=Provenance)
    inputs: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, Any] = Field(default_factory=dict)
    stats: dict[str, Any] = Field(default_factory=dict)
