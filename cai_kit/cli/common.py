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
        help="IN,OUT[,CACHED]: USD per million input, output and (optional) cached input "
        "tokens (e.g. 0.25,2.00,0.025), for --max-cost and cost figures where the provider's "
        "price is not known (vLLM, Ollama, gateways); without CACHED, cached input costs IN.",
    ),
]
ServiceTierOpt = Annotated[
    str | None,
    typer.Option(
        "--service-tier",
        help="A cheaper, slower provider tier, sent as `service_tier` and priced at its rates: "
        "`flex` (OpenAI gpt-5.x, o3, o4-mini: about half the price, answers can be slow or "
        "refused when busy; raise --timeout). Not with --batch-api.",
    ),
]
NoPromptCacheOpt = Annotated[
    bool,
    typer.Option(
        "--no-prompt-cache",
        help="Don't mark the stable start of prompts for Anthropic's prompt cache (marked by "
        "default where it is long enough to pay: reads cost 0.1x, writes 1.25x).",
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
ReasoningEffortOpt = Annotated[
    str | None,
    typer.Option(
        "--reasoning-effort",
        help="How hard a reasoning model thinks (none, minimal, low, medium, high, xhigh; "
        "Claude 4.6+ also max; which ones a model takes: docs/backends.md). Default: the model's own (OpenAI gpt-5, "
        "o-series: medium; gpt-5.1: none). Commands without --judge-reasoning-effort use it for "
        "their judge calls too. Ignored by models that do not reason; refused at start where "
        "a reasoning model does not take the value.",
    ),
]
JudgeReasoningEffortOpt = Annotated[
    str | None,
    typer.Option(
        "--judge-reasoning-effort",
        help="Effort of the judge-like calls (verdicts, --keep-if, rubric scores), which answer "
        "a letter or a number. Default: the least the model takes (gpt-5-mini: minimal; "
        "o4-mini: low; gpt-5.1: none).",
    ),
]
ReasoningTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--reasoning-tokens",
        min=0,
        help="Room to think added to each answer's output cap for a reasoning model (hidden "
        "reasoning counts against the cap). Default by effort: minimal 1024, low 4096, medium "
        "8192, high 16384, xhigh 32768 (docs/backends.md). The cap is what --max-cost reserves.",
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
    "service_tier": (ServiceTierOpt, None),
    "no_prompt_cache": (NoPromptCacheOpt, False),
    "quiet": (QuietOpt, False),
    "reasoning_effort": (ReasoningEffortOpt, None),
    "judge_reasoning_effort": (JudgeReasoningEffortOpt, None),
    "reasoning_tokens": (ReasoningTokensOpt, None),
}
TRAINER_WITHOUT = (
    "dry_run",
    "quiet",
    "batch_api",
    "batch_deadline",
    "service_tier",
    "no_prompt_cache",
    "judge_reasoning_effort",  # the judge is the only hosted model: --reasoning-effort is its
)  # trainers call a judge, but run no data job
# Commands whose only calls are a stage's own, or only a judge's: --reasoning-effort is all
NO_SEPARATE_JUDGE = ("judge_reasoning_effort",)

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
    reasoning_effort: str | None = None,
    judge_reasoning_effort: str | None = None,
    reasoning_tokens: int | None = None,
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
        timeout_given=given("timeout"),
        reasoning_effort=reasoning_effort,
        judge_reasoning_effort=judge_reasoning_effort,
        reasoning_tokens=reasoning_tokens,
    )


def given(name: str) -> bool:
    """Whether the user set option `name` (on the command line or by its environment
    variable), as opposed to its default: a stage default a model refuses is simply not sent,
    a value the user set is refused at start."""
    try:  # typer >= 0.17 carries its own click
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - an older typer on click
        from click import get_current_context

    ctx = get_current_context(silent=True)
    source = ctx.get_parameter_source(name) if ctx is not None else None
    return getattr(source, "name", None) in ("COMMANDLINE", "ENVIRONMENT")


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
    "reasoning_effort",
    "judge_reasoning_effort",
    "reasoning_tokens",
)


def engine_config_from(values: dict):  # type: ignore[no-untyped-def,type-arg]
    """EngineConfig from a command's locals(): every job command names its options the same way.
    A command without --judge-reasoning-effort (one model's calls only: `judge`, the trainers'
    judge) gives its judge-like calls --reasoning-effort."""
    picked = {k: values[k] for k in ENGINE_KEYS if k in values}
    if "judge_reasoning_effort" not in values:
        picked["judge_reasoning_effort"] = values.get("reasoning_effort")
    return engine_config(**picked)


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
    backend = get_backend(model, api_base=api_base, timeout_s=flags["timeout"], **dry)
    backend.prompt_cache = not flags.get("no_prompt_cache", False)
    tier = flags.get("service_tier")
    if tier is not None:
        _check_service_tier(model, api_base, tier, batch_api=bool(flags.get("batch_api")))
        backend.service_tier = tier
    if hasattr(backend, "timeout_given"):  # a reasoning call's timeout grows unless given
        backend.timeout_given = given("timeout")
    return backend


def _check_service_tier(model: str, api_base: str | None, tier: str, *, batch_api: bool) -> None:
    """One sentence at start for a tier the run can't use (never N failed rows)."""
    from cai_kit.engine.pricing import SERVICE_TIERS, tier_priced

    if tier not in SERVICE_TIERS:
        fail(f"--service-tier takes {' or '.join(SERVICE_TIERS)}, not {tier!r}.")
    if batch_api:
        fail(f"--service-tier {tier} and --batch-api: batch jobs have a price of their own; "
             "choose one.")  # fmt: skip
    if api_base is not None or not tier_priced(model, tier):
        fail(f"--service-tier {tier}: no {tier} price is known for {model}"
             + (" at an --api-base" if api_base is not None else "")
             + " (OpenAI's flex tier: gpt-5.x, o3, o4-mini); leave the flag out.")  # fmt: skip


def check_reasoning(
    backend: Any, flags: dict[str, Any], *, judge: bool = False, **values: Any
) -> None:
    """Refuse at start, in one sentence, what a reasoning model would refuse on every row: an
    effort it does not take, or a value the user set for a field it refuses at that effort
    (`values`: e.g. temperature=0.3; only those the user gave are checked, a stage default is
    simply not sent). `judge`: the backend's judge-like calls (--judge-reasoning-effort)."""
    from cai_kit.llm.reasoning import EFFORTS, LOWEST
    from cai_kit.llm.thinking import capabilities

    rules = getattr(backend, "reasoning", None)
    flag = "--reasoning-effort"
    effort = flags.get("reasoning_effort")
    if judge and "judge_reasoning_effort" in flags:
        flag, effort = "--judge-reasoning-effort", flags.get("judge_reasoning_effort")
    if rules is None:  # the litellm route's own map (Anthropic, Gemini), else sent as given
        if effort is None:
            return
        litellm = getattr(backend, "kind", None) == "litellm"
        if litellm and (why := litellm_effort_error(backend.model, effort)):
            fail(why, 2)
        if not (litellm and capabilities(backend.model)) and effort not in EFFORTS:
            fail(f"{flag} takes one of {', '.join(EFFORTS)}; not {effort!r}.", 2)
        return  # (Claude's own `max` is one of its values)
    if effort is not None and (why := rules.effort_error(effort, flag)) is not None:
        fail(why, 2)
    at = effort or (rules.lowest_effort if judge else rules.default_effort)
    for name, value in values.items():
        if not given(name) or name not in rules.refuses(at if at != LOWEST else None):
            continue
        if name == "temperature" and float(value) == 1.0:
            continue  # OpenAI takes its default, 1: it is simply not sent
        other = [e for e in rules.efforts if name not in rules.refuses(e)]
        hint = f", or pass {flag} {other[0]}" if other else ""
        fail(
            f"{backend.model} does not take --{name.replace('_', '-')} at reasoning effort "
            f"{at} ({rules.source}): drop --{name.replace('_', '-')}{hint}.",
            2,
        )


def litellm_effort_error(model: str, effort: str) -> str | None:
    """The sentence `llm.thinking` refuses this effort with on the litellm route (Anthropic's
    and Gemini's own efforts, OpenRouter's), or None: the first call would raise it per row."""
    from cai_kit.errors import ConfigError
    from cai_kit.llm.thinking import check_reasoning_effort

    try:
        check_reasoning_effort(model, effort)
    except ConfigError as err:
        return str(err)
    return None


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


def check_judge_mode(backend: Any, mode: str, flags: dict[str, Any]) -> None:
    """A judge that cannot give log-probs (a reasoning model, a provider without them): the
    default mode reads its letter instead (both orders still count) and says so once; a
    --mode logprobs the user asked for is refused at start."""
    if mode != "logprobs":
        return
    rules = getattr(backend, "reasoning", None)
    effort = flags.get("judge_reasoning_effort") if "judge_reasoning_effort" in flags else None
    effort = effort or flags.get("reasoning_effort")
    if rules is not None and rules.reasons:
        effort = effort or rules.lowest_effort
    logprobs_at = getattr(backend, "logprobs_at", None)
    able = logprobs_at(effort) if logprobs_at is not None else backend.supports_logprobs
    if able:
        return
    if given("mode"):
        fail(f"{backend.model} gives no log-probs (at reasoning effort {effort}), so --mode "
             "logprobs cannot work: use --mode letter, or --mode votes for soft labels.", 2)  # fmt: skip
    typer.echo(f"Note: {backend.model} gives no log-probs: the judge reads its letter in both "
               "orders (--mode votes gives soft labels by sampling).", err=True)  # fmt: skip
