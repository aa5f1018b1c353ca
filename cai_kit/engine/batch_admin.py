"""A run directory's open Batch API jobs: list them and cancel them (`cai-kit batches`).

`open_batches(run_dir)` reads `RUN/batches/ledger.jsonl` (no network): every batch an earlier
run sent (or was sending) that no run has closed, with its id, provider, requests and the worst
case it holds against `--max-cost`. `with_status(batches)` asks each provider how far each one
is. `cancel_batches(run_dir, batch_id)` cancels them at the provider through the run's own
collector (`BatchCollector.cancel_open`): it waits for the provider to confirm, keeps what the
batch answered before it stopped (into the run's call cache, so no re-run pays for it again),
and closes the batch in the ledger, so no later run reserves it: what the provider bills is
what it answered. The client of a batch is rebuilt from the provider the ledger names (a base
URL, or Anthropic's Message Batches) with the key from the environment, as the run found it.

    for b in run_sync(with_status(open_batches(run))):  # (engine.loop.run_sync)
        print(b.batch_id, b.status)
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from cai_kit.engine.batch import BatchCollector, _read_ledger
from cai_kit.engine.batch_providers import AnthropicBatchClient, BatchClient, OpenAIBatchClient
from cai_kit.engine.core import Engine, EngineConfig
from cai_kit.errors import BackendError, DataError

ANTHROPIC = AnthropicBatchClient.name


@dataclass
class OpenBatch:
    """One open batch as the ledger records it (and, after `with_status`, as the provider says)."""

    tag: str  # the wave's tag (the batch's metadata at the provider)
    batch_id: str | None  # None: killed before the provider's id was recorded
    provider: str  # a base URL, or "Anthropic Message Batches"
    requests: int
    reserved: float | None  # USD held against --max-cost; None: the ledger recorded none
    status: str = "not asked"


def open_batches(run_dir: Path) -> list[OpenBatch]:
    """The batches of `run_dir` that no run has closed, oldest first (from the ledger)."""
    folder = Path(run_dir) / "batches"
    if not Path(run_dir).is_dir():
        raise DataError(f"No run directory at {run_dir}.")
    out = []
    for tag, entry in _read_ledger(folder / "ledger.jsonl").items():
        keys = folder / f"{tag}.keys"
        if "finished" in entry or not keys.is_file():
            continue
        sending = entry.get("submitting", {})
        recorded = entry.get("reserved") or sending
        reserved = recorded.get("reserved")
        out.append(OpenBatch(
            tag, entry.get("submitted", {}).get("batch_id"), sending.get("provider", ""),
            int(sending.get("requests") or len(keys.read_text(encoding="utf-8").split())),
            None if reserved is None else float(reserved),
        ))  # fmt: skip
    return out


def client_for(provider: str) -> BatchClient:
    """The Batch API client for a provider named in the ledger (key from the environment)."""
    if provider == ANTHROPIC:
        return AnthropicBatchClient("anthropic/batches")
    from cai_kit.llm import providers
    from cai_kit.llm.openai_compat import GENERIC_KEY_VARS

    url = provider.rstrip("/")
    known = next((p for p in providers.PROVIDERS.values() if p.resolved_base_url() == url), None)
    if known is not None:
        key = known.key()[1]
    else:  # a server given by --api-base: the key it was sent, where keys may go
        key = next((os.environ[v] for v in GENERIC_KEY_VARS if os.environ.get(v)), None)
        key = key if key and providers.key_allowed(url) else None
    return OpenAIBatchClient("", url, key)


async def with_status(batches: list[OpenBatch]) -> list[OpenBatch]:
    """Each batch's status at its provider (`unknown: why` when it can't be asked)."""

    async def one(b: OpenBatch) -> None:
        if b.batch_id is None:
            b.status = "id not recorded (a re-run finds it by its tag)"
            return
        client = client_for(b.provider)
        try:
            state = await client.poll(b.batch_id)
            b.status = state.status
        except BackendError as exc:
            b.status = f"unknown: {exc}"
        finally:
            await client.aclose()

    await asyncio.gather(*(one(b) for b in batches))
    return batches


async def cancel_batches(
    run_dir: Path, batch_id: str | None = None, config: EngineConfig | None = None
) -> list[OpenBatch]:
    """Cancel the run's open batches (or the one named), keep what they answered and close them
    in the ledger; returns them as they were before, with their status at the end."""
    before = {b.tag: b for b in open_batches(run_dir)}
    if batch_id is not None and batch_id not in {b.batch_id for b in before.values()}:
        raise DataError(
            f"{run_dir} has no open batch {batch_id}: `cai-kit batches list {run_dir}` shows them."
        )
    engine = Engine(config or EngineConfig(quiet=True))
    collector = BatchCollector(engine, run_dir)
    try:
        waves = await collector.cancel_open(
            client_for, "by `cai-kit batches cancel`; what it answered before is kept.", batch_id
        )
    finally:
        await collector.aclose()
        await engine.aclose()
    ledger = _read_ledger(Path(run_dir) / "batches" / "ledger.jsonl")
    for w in waves:
        end = ledger.get(w.tag, {}).get("finished")
        before[w.tag].status = (
            "still open (see the message above)" if end is None
            else f"closed: {end.get('ok', 0)} answered (kept), {end.get('failed', 0)} not"
        )  # fmt: skip
    return [before[w.tag] for w in waves]


def run_engine_config(run_dir: Path) -> EngineConfig:
    """The call cache the run used (its --cache-path, --no-cache) from its manifest's command
    line, so that what a cancelled batch answered is where a re-run of that command reads it."""
    import json

    manifest = Path(run_dir) / "manifest.json"
    argv: list[str] = []
    if manifest.is_file():
        argv = json.loads(manifest.read_text(encoding="utf-8")).get("argv") or []
    cache_path = None
    for i, arg in enumerate(argv):
        if arg == "--cache-path" and i + 1 < len(argv):
            cache_path = Path(argv[i + 1])
        elif arg.startswith("--cache-path="):
            cache_path = Path(arg.split("=", 1)[1])
        if cache_path is not None and not cache_path.is_absolute():
            cwd = json.loads(manifest.read_text(encoding="utf-8")).get("cwd")
            cache_path = Path(cwd or ".") / cache_path
    return EngineConfig(quiet=True, use_cache="--no-cache" not in argv, cache_path=cache_path)
