"""`cai-kit models` and `cai-kit chat`: see what backends exist and check a setup."""

from __future__ import annotations

from typing import Annotated

import typer

from cai_kit.cli.common import ApiBaseOpt, MaxTokensOpt, ModelOpt, SeedOpt, TemperatureOpt, fail


def models(
    model: Annotated[
        str | None, typer.Argument(help="A model string: say which path it takes.")
    ] = None,
    api_base: ApiBaseOpt = None,
) -> None:
    """List the model backends and hosted providers, or say which path one model string takes."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from cai_kit.llm.providers import PROVIDERS
    from cai_kit.llm.registry import list_backends, route

    console = Console()
    if model is not None:
        from cai_kit.errors import ConfigError

        try:
            console.print(escape(route(model.strip(), api_base)), soft_wrap=True)
        except ConfigError as exc:
            fail(str(exc))
        return
    table = Table(title="cai-kit backends (first match wins)")
    for col in ("backend", "example model string", "needs", "what it is"):
        table.add_column(col, overflow="fold")
    for spec in list_backends():  # texts may hold brackets ("the [local] extra"): not markup
        table.add_row(*(escape(t) for t in (spec.name, spec.example, spec.needs, spec.description)))
    console.print(table)
    hosted = Table(title="hosted providers (PROVIDER/MODEL)")
    for col in ("provider", "path", "key variable", "base URL", "log-probs", "price"):
        hosted.add_column(col, overflow="fold")
    for p in PROVIDERS.values():
        base = p.base_url or "-"
        if p.base_vars:
            base += f" ({p.base_vars[0]} overrides)"
        hosted.add_row(*(escape(t) for t in (
            p.name, "fast client" if p.fast else "litellm", " or ".join(p.key_vars), base,
            p.logprobs_note(), p.price,
        )))  # fmt: skip
    console.print(hosted)


def chat(
    prompt: Annotated[str, typer.Argument(help="The user message to send.")],
    model: Annotated[str | None, ModelOpt.__metadata__[0]] = None,  # None: see below
    api_base: ApiBaseOpt = None,
    system: Annotated[str | None, typer.Option("--system", help="Optional system message.")] = None,
    temperature: TemperatureOpt = 0.7,
    max_tokens: MaxTokensOpt = 256,
    seed: SeedOpt = 0,
) -> None:
    """Send one prompt to any backend and print the reply (a quick check of a setup).

    Without --model it asks the embedded model, or with --api-base URL the first model that
    server lists at URL/models.
    """
    import asyncio

    from cai_kit.llm.base import GenParams
    from cai_kit.llm.registry import get_interactive_backend, resolve

    if model is not None and api_base and resolve(model.strip(), api_base).name in ("local", "hf"):
        fail(
            f"--model {model} is a model on this machine and ignores --api-base {api_base}; "
            "leave out --model to ask that server's own model, or leave out --api-base "
            "(and CAI_KIT_API_BASE)."
        )

    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    params = GenParams(temperature=temperature, max_tokens=max_tokens, seed=seed)

    async def _go() -> str:
        name = model
        if name is None and api_base:
            from cai_kit.llm.openai_compat import served_models

            # as openai/NAME: the registry then sends NAME as listed (even 'local', which is
            # what `cai-kit serve local` lists) to the server, never to a model on this machine
            name = "openai/" + (await served_models(api_base))[0]
        backend = get_interactive_backend(name, api_base=api_base)
        try:
            return (await backend.chat(messages, params)).text
        finally:
            await backend.aclose()

    typer.echo(asyncio.run(_go()))


def register(app: typer.Typer) -> None:
    app.command("models")(models)
    app.command("chat")(chat)
