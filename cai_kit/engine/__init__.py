"""How a model call is made and paid for.

- `core.py`            `Engine`: cache, in-flight joins, rpm/tpm buckets, retries, --max-cost
- `budget.py`          `Budget`: the one --max-cost ledger of a command, shared by all its jobs
                       (threads, event loops, and processes through a ledger file)
- `jobs.py`            `run_job`: one record per input item, resume, shards, progress, manifest
- `base.py`            what the engine, the job runner and the collector share: `CallFailed`,
                       `Deferred`, `BatchRoute`
- `batch.py`           --batch-api: calls collected into provider Batch API waves
- `batch_providers.py` each provider's batch files and endpoints (OpenAI-shaped, Anthropic)
- `batch_admin.py`     a run directory's open batches: list them, cancel them (`cai-kit batches`)
- `cache.py`           the content-addressed call cache (SQLite)
- `pricing.py`         prices: --price, litellm's cost map, the provider table
- `spend.py`           what a run spent, said truthfully: "$X" or "cost unknown", never a silent $0
- `cost_preview.py`    --dry-run: the calls a job would make and what they would cost
- `gather.py`          asyncio helpers for calls that run side by side
- `loop.py`            `run_sync`: sync code runs a coroutine, in or out of a running event
                       loop (a notebook); `in_worker`: the async side (the a* API variants)

May import `cai_kit.llm` and the ground (`records`, `io`, `errors`, `paths`, ...), never a
stage, trainer, evaluator, the pipeline or the CLI; never torch, transformers, trl or peft.
Everything above it (stages, eval, train, serve, pipeline, cli) may import it.
"""

from cai_kit.engine.base import CallFailed
from cai_kit.engine.budget import Budget, with_budget
from cai_kit.engine.core import Engine, EngineConfig
from cai_kit.engine.jobs import JobSpec, JobSummary, run_job

__all__ = [
    "Budget",
    "CallFailed",
    "Engine",
    "EngineConfig",
    "JobSpec",
    "JobSummary",
    "run_job",
    "with_budget",
]
