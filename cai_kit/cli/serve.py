"""`cai-kit serve MODEL`: an OpenAI-compatible API and a feedback page for any model string."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer

from cai_kit.cli.common import ApiBaseOpt, MaxTokensOpt, TemperatureOpt

SERVE_KEY_ENV = "CAI_KIT_SERVE_API_KEY"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    model: Annotated[
        str,
        typer.Argument(
            help="Model string: local, hf:PATH (a trained model or adapter), "
            "PROVIDER/MODEL, or a name at --api-base to proxy."
        ),
    ] = "local",
    api_base: ApiBaseOpt = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0 picks a free one).")] = 8000,
    feedback_db: Annotated[
        Path | None,
        typer.Option(
            "--feedback-db",
            help="SQLite file for completions and ratings (default: ~/.cache/cai-kit/feedback.db).",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar=SERVE_KEY_ENV,
            show_envvar=True,
            help="Require 'Authorization: Bearer KEY' on every route but the static page; "
            "prefer the env var (a flag lands in shell history). Needed beyond loopback.",
        ),
    ] = None,
    max_tokens: MaxTokensOpt = 256,
    max_tokens_limit: Annotated[
        int, typer.Option("--max-tokens-limit", help="Reject requests asking for more tokens.")
    ] = 1024,
    temperature: TemperatureOpt = 0.7,
    max_body_bytes: Annotated[
        int, typer.Option("--max-body-bytes", help="Reject request bodies larger than this.")
    ] = 1024 * 1024,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin",
            help="Let the web page at this origin (scheme://host[:port]) call the API, with "
            "CORS headers; repeatable. Other pages are refused (403), so a site you visit "
            "cannot use the model or write ratings.",
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="Also answer requests whose Host header is NAME or NAME:PORT (a reverse proxy, "
            "an /etc/hosts name); repeatable. By default only the address served (and "
            "localhost on loopback) is, which stops DNS rebinding.",
        ),
    ] = None,
) -> None:
    """Serve MODEL as an OpenAI-compatible API with a chat page whose Good/Bad ratings feed `export kto`.

    Every reply and rating goes to --feedback-db; then `cai-kit export kto FEEDBACK_DB --out
    DIR` (or `export prefs` for regenerated pairs) and `cai-kit train kto DIR`.

    Only its own page and API clients (openai SDK, litellm, curl, `cai-kit chat`) are answered:
    other web pages and foreign Host names get 403, JSON bodies need Content-Type
    application/json. See docs/serve.md, "Security".
    """
    import asyncio

    from cai_kit.cli.common import fail
    from cai_kit.llm.registry import get_interactive_backend
    from cai_kit.paths import cache_dir
    from cai_kit.serve.app import ServeConfig, create_app
    from cai_kit.serve.protocol import Limits
    from cai_kit.serve.store import FeedbackStore
    from cai_kit.web.guard import parse_allowed_host, parse_origin
    from cai_kit.web.server import start, until_stopped

    if not _is_loopback(host) and not api_key:
        fail(
            f"Serving on {host} lets anyone who can reach it use the model and write feedback: "
            f"set {SERVE_KEY_ENV} (or --api-key), or bind to 127.0.0.1."
        )
    try:
        cors_origins = tuple(parse_origin(o) for o in cors_origin or [])
        allowed_hosts = tuple(parse_allowed_host(h) for h in allowed_host or [])
    except ValueError as exc:
        fail(str(exc))
    if not 1 <= max_tokens <= max_tokens_limit:
        fail(f"--max-tokens {max_tokens} must be from 1 to --max-tokens-limit {max_tokens_limit}.")
    db_path = feedback_db or cache_dir() / "feedback.db"
    store = FeedbackStore(db_path)
    backend = get_interactive_backend(model, api_base=api_base)
    config = ServeConfig(
        model=model,
        api_key=api_key or None,
        max_body_bytes=max_body_bytes,
        limits=Limits(max_tokens_limit, max_tokens, temperature),
        cors_origins=cors_origins,
        allowed_hosts=allowed_hosts,
    )

    async def main() -> None:
        runner, bound = await start(create_app(backend, store, config), host, port)
        shown = f"[{host}]" if ":" in host else host
        typer.echo(
            f"Serving {model} ({backend.kind} backend) at http://{shown}:{bound}/ "
            f"(chat page at /, OpenAI API at /v1); feedback -> {db_path}",
            err=False,
        )
        typer.echo("Stop with Ctrl-C.", err=True)
        try:
            await until_stopped(runner)
        finally:
            store.close()

    asyncio.run(main())
    counts = store_counts(db_path)
    typer.echo(
        f"Stopped. {db_path}: {counts['completions']} completions, "
        f"{counts['up']} 👍, {counts['down']} 👎."
    )


def store_counts(path: Path) -> dict[str, int]:
    from cai_kit.serve.store import FeedbackStore

    store = FeedbackStore(path)
    try:
        return store.counts()
    finally:
        store.close()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
