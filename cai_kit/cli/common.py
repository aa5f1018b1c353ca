"""Options shared by every command that calls a model, and CLI helpers.

API keys are read from the environment only (OPENAI_API_KEY, ...), never from flags, so
they never land in shell history or in a run's manifest.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Model string: 'local' (embedded SmolLM2), 'hf:PATH', 'PROVIDER/MODEL' via litellm, "
        "or a name served at --api-base. `cai-kit models` lists them.",
    ),
]
ApiBaseOpt = Annotated[
    str | None,
    typer.Option(
        "--api-base",
        help="Base URL of an OpenAI-compatible server (vLLM, llama.cpp, Ollama), e.g. http://localhost:8000/v1.",
        envvar="CAI_KIT_API_BASE",
    ),
]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory (created if missing).")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Only the first N prompts.")]
FullOpt = Annotated[bool, typer.Option("--full/--lora", help="Full fine-tuning instead of LoRA.")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", help="Sampling temperature.")]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", help="Maximum tokens per generation.")]
SeedOpt = Annotated[
    int, typer.Option("--seed", help="Random seed (sampling of principles, generation).")
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar; print only the summary.")
]


# The --help epilog of every job command (and the README's "Exit codes"): cai_kit.engine.jobs.
EXIT_CODES_HELP = (
    "Exit codes: 0 every row done; 1 an error, or no row done (every row failed); 2 a usage "
    "error; 3 some rows failed (`cai-kit retry-failed RUN` redoes them); 4 stopped by "
    "--max-cost before the end (finished work is kept)."
)


def fail(message: str, code: int = 1) -> None:
    """Print one red line and exit: for user errors caught in a command."""
    from cai_kit.errors import redact

    typer.secho(f"Error: {redact(message)}", fg="red", err=True)
    raise typer.Exit(code)


# --- engine options (every command that runs a job) -----------------------------------
ConcurrencyOpt = Annotated[
    int | None, typer.Option("--concurrency", help="Model calls in flight (default: per backend).")
]
RpmOpt = Annotated[float | None, typer.Option("--rpm", help="Limit: requests per minute.")]
TpmOpt = Annotated[
    float | None, typer.Option("--tpm", help="Limit: tokens per minute (estimated).")
]
MaxRetriesOpt = Annotated[
    int, typer.Option("--max-retries", help="Retries per call on 429/5xx/timeouts.")
]
TimeoutOpt = Annotated[
    float,
    typer.Option(
        "--timeout",
        help="Seconds before a call to a server times out (a model on this machine is waited for).",
    ),
]
MaxCostOpt = Annotated[
    float | None,
    typer.Option(
        "--max-cost",
        help="Stop cleanly before spending more than this (USD): one cap for this invocation, "
        "every job and round it runs together (a re-run gets the cap anew). A call whose "
        "answer never came (timeout) stays counted: the provider may bill it.",
    ),
]
PriceOpt = Annotated[
    str | None,
    typer.Option(
        "--price",
        help="IN,OUT: USD per million input and output tokens (e.g. 0.15,0.60), for --max-cost "
        "and cost figures where the provider's price is not known (vLLM, Ollama, gateways).",
    ),
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Bypass the call cache.")]
CachePathOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-path", help="SQLite call cache (default: ~/.cache/cai-kit/calls.sqlite)."
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Print the number of calls to make, call nothing.")
]
BatchApiOpt = Annotated[
    bool,
    typer.Option(
        "--batch-api",
        help="Send the calls as provider Batch API jobs (OpenAI-compatible, Anthropic): about "
        "half the price, answers within 24 h; resumable (re-run to collect). Local models run "
        "as usual.",
    ),
]
BatchDeadlineOpt = Annotated[
    float | None,
    typer.Option(
        "--batch-deadline",
        min=0,
        help="Seconds to wait for a provider batch (this run's, or one still open from an "
        "earlier run) from when it was sent; then it is cancelled, what it answered is kept and "
        "its other calls fail (default: 24 h, the providers' completion window).",
    ),
]
ShardOpt = Annotated[
    str | None,
    typer.Option("--shard", help="Process shard I of N (e.g. 2/8); results merge by record id."),
]


# Every job flag once: name -> (option type, default). `job_flags` puts them on a command.
JOB_FLAGS: dict[str, tuple[Any, Any]] = {
    "concurrency": (ConcurrencyOpt, None),
    "rpm": (RpmOpt, None),
    "tpm": (TpmOpt, None),
    "max_retries": (MaxRetriesOpt, 5),
    "timeout": (TimeoutOpt, 120.0),
    "max_cost": (MaxCostOpt, None),
    "price": (PriceOpt, None),
    "no_cache": (NoCacheOpt, False),
    "cache_path": (CachePathOpt, None),
    "dry_run": (DryRunOpt, False),
    "batch_api": (BatchApiOpt, False),
    "batch_deadline": (BatchDeadlineOpt, None),
    "quiet": (QuietOpt, False),
}
TRAINER_WITHOUT = (
    "dry_run",
    "quiet",
    "batch_api",
    "batch_deadline",
)  # trainers call a judge, but run no data job

F = TypeVar("F", bound=Callable[..., Any])


def job_flags(*, without: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Give a command the job flags (`JOB_FLAGS`, minus `without`), declared only here.

    The command takes them as `**flags` and builds its engine with `engine_config_from(flags)`:

        @job_flags()
        def generate(prompts: ..., **flags: Any) -> None: ...
    """

    def add(func: F) -> F:
        sig = inspect.signature(func, eval_str=True)  # typer reads objects, not strings
        own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        kw = inspect.Parameter.KEYWORD_ONLY
        extra = [
            inspect.Parameter(name, kw, default=default, annotation=option)
            for name, (option, default) in JOB_FLAGS.items()
            if name not in without
        ]

        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            return func(*args, **kwargs)

        command.__signature__ = sig.replace(parameters=own + extra)  # type: ignore[attr-defined]
        return command  # type: ignore[return-value]

    return add


def parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        fail(f"--shard takes I/N such as 1/4, not {value!r}.")
    if not 1 <= i <= n:
        fail(f"--shard {value}: I must be between 1 and N.")
    return i, n


def engine_config(
    *,
    concurrency: int | None = None,
    rpm: float | None = None,
    tpm: float | None = None,
    max_retries: int = 5,
    timeout: float = 120.0,
    max_cost: float | None = None,
    price: str | None = None,
    no_cache: bool = False,
    cache_path: Path | None = None,
    quiet: bool = False,
    dry_run: bool = False,
    batch_api: bool = False,
    batch_deadline: float | None = None,
):  # type: ignore[no-untyped-def]
    """Build an EngineConfig from the shared CLI options."""
    from cai_kit.engine import EngineConfig
    from cai_kit.engine.pricing import parse_price
    from cai_kit.errors import ConfigError

    try:
        parsed_price = parse_price(price) if price is not None else None
    except ConfigError as exc:
        fail(str(exc))
    from cai_kit.engine.budget import Budget

    return EngineConfig(
        budget=Budget.for_command(max_cost),  # one ledger for every job of this invocation
        concurrency=concurrency,
        rpm=rpm,
        tpm=tpm,
        max_retries=max_retries,
        timeout_s=timeout,
        max_cost=max_cost,
        price=parsed_price,
        use_cache=not no_cache,
        cache_path=cache_path,
        quiet=quiet,
        dry_run=dry_run,
        batch_api=batch_api,
        batch_deadline_s=batch_deadline,
    )


ENGINE_KEYS = (
    "concurrency",
    "rpm",
    "tpm",
    "max_retries",
    "timeout",
    "max_cost",
    "price",
    "no_cache",
    "cache_path",
    "quiet",
    "dry_run",
    "batch_api",
    "batch_deadline",
)


def engine_config_from(values: dict):  # type: ignore[no-untyped-def,type-arg]
    """EngineConfig from a command's locals(): every job command names its options the same way."""
    return engine_config(**{k: values[k] for k in ENGINE_KEYS if k in values})


def replay_argv(command: str) -> list[str]:
    """This invocation's command line, for the manifest and `retry-failed` (flags only: keys
    come from the environment). Empty when not run from a shell (e.g. a test runner)."""
    import sys

    args = sys.argv[1:]
    return ["cai-kit", *args] if args[:1] == [command] else []


def job_backend(model: str, api_base: str | None, flags: dict[str, Any]):  # type: ignore[no-untyped-def]
    """`get_backend` for a job command; a --dry-run builds it without a key (it calls nothing)
    and `keys_needed` says which key the real run will need."""
    from cai_kit.llm.registry import get_backend

    dry = {"require_key": False} if flags.get("dry_run") else {}
    return get_backend(model, api_base=api_base, timeout_s=flags["timeout"], **dry)


def keys_needed(*models: tuple[str, str | None]) -> str:
    """One sentence for a dry run: the key variables the real run reads, set or not, for
    (model string, api base) pairs. A server named by --api-base may want none."""
    from cai_kit.llm.providers import lookup

    needed: dict[str, bool] = {}
    for model, api_base in models:
        provider = lookup(model)
        if provider is not None and api_base is None:
            var, key = provider.key()
            needed[var] = key is not None
    if not needed:
        return "The real run needs no API key."
    return (
        "The real run needs "
        + ", ".join(f"{var} ({'set' if ok else 'not set'})" for var, ok in needed.items())
        + "."
    )


def exit_for(*summaries: Any) -> None:
    """Exit with the code the job summaries call for (EXIT_CODES_HELP); return on 0."""
    from cai_kit.engine.jobs import worst_exit

    code = worst_exit(*summaries)
    if code:
        raise typer.Exit(code)
