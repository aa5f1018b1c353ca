"""What every public call shares: plain Python in (prompts, a constitution, a model, a cap),
and a run directory that exists only when the caller asked for one (`out=`).

    with call_context(out, engine=None, max_cost=1.0, budget=None) as (run_dir, config):
        summary = run_revise(..., out_dir=run_dir, engine_config=config)
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Generic, TypeVar

from cai_kit.constitution import Constitution, load_constitution
from cai_kit.engine.budget import Budget, with_budget
from cai_kit.engine.core import EngineConfig
from cai_kit.engine.jobs import JobProgress
from cai_kit.errors import ConfigError
from cai_kit.llm.base import Backend
from cai_kit.llm.registry import get_backend
from cai_kit.prompts import load_prompts, prompts_from
from cai_kit.records import Message, PromptRecord

# A prompt file (or hf:NAME), or prompts as Python: strings, message lists, rows, PromptRecords
Prompts = str | Path | Iterable[str | list[dict[str, str]] | list[Message] | dict[str, Any] | PromptRecord]  # fmt: skip
# A shipped constitution's name, a YAML file, or a loaded `Constitution`
ConstitutionLike = str | Path | Constitution
# A model string ("local", "openai/gpt-4o-mini", "hf:DIR", ...) or a built `Backend`
Model = str | Backend

# called after every finished row with where the job stands (instead of the progress lines)
ProgressFn = Callable[[JobProgress], None]

R = TypeVar("R")


class Records(list[R], Generic[R]):
    """The records a call produced (a list), with its `summary` (`JobSummary`: done, failed,
    cost, why it stopped) and `run_dir` (None when no `out=` was given)."""

    summary: Any = None
    run_dir: Path | None = None


def as_prompts(prompts: Prompts, *, limit: int | None = None) -> list[PromptRecord]:
    """PromptRecords from a path or from Python values (the checks of `load_prompts`)."""
    if isinstance(prompts, (str, Path)):
        return load_prompts(str(prompts), limit=limit).records
    return prompts_from(prompts, limit=limit).records


def as_constitution(constitution: ConstitutionLike) -> Constitution:
    if isinstance(constitution, Constitution):
        return constitution
    return load_constitution(str(constitution))


def as_backend(model: Model, api_base: str | None = None) -> Backend:
    return model if isinstance(model, Backend) else get_backend(model, api_base=api_base)


def model_name(model: Model) -> str:
    return model if isinstance(model, str) else model.model


def engine_config(
    engine: EngineConfig | None,
    max_cost: float | None,
    budget: Budget | None,
    quiet: bool,
    progress: ProgressFn | None = None,
) -> EngineConfig:
    """The call's EngineConfig with its ledger: `budget` (one shared by several calls) or a new
    one for `max_cost` (one per call), as a CLI command has one per command."""
    if budget is not None and max_cost is not None:
        raise ConfigError(
            "Pass max_cost= or budget=, not both: a shared Budget carries its own cap."
        )
    config = engine or EngineConfig()
    if max_cost is not None:
        config = replace(config, max_cost=max_cost, budget=None)
    if budget is not None:
        config = replace(config, budget=budget, max_cost=budget.cap)
    if quiet:
        config = replace(config, quiet=True)
    if progress is not None:
        config = replace(config, progress=progress)
    return with_budget(config)


@contextmanager
def run_dir(out: str | Path | None) -> Iterator[Path]:
    """`out` itself (kept: a re-run resumes it), or a temporary directory removed afterwards."""
    if out is not None:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="cai-kit-") as tmp:
        yield Path(tmp)
