"""`cai-kit models` and `cai-kit chat`: see what backends exist and check a setup."""

from __future__ import annotations

from typing import Annotated

import typer

from cai_kit.cli.common import ApiBaseOpt, MaxTokensOpt, ModelOpt, SeedOpt, TemperatureOpt


def models() -> None:
    """List the model backends, what each needs, and an example model string."""
    from rich.console import Console
    from rich.table import Table

    from cai_kit.llm.registry import list_backends

    table = Table(title="cai-kit backends (first match wins)")
    for col in ("backend", "example model string", "needs", "what it is"):
        table.add_column(col, overflow="fold")
    for spec in list_backends():
        table.add_row(spec.name, spec.example, spec.needs, spec.description)
    Console().print(table)


def chat(
    prompt: Annotated[str, typer.Argument(help="The user message to send.")],
    model: ModelOpt = "local",
    api_base: ApiBaseOpt = None,
    system: Annotated[str | None, typer.Option("--system", help="Optional system message.")] = None,
    temperature: TemperatureOpt = 0.7,
    max_tokens: MaxTokensOpt = 256,
    seed: SeedOpt = 0,
) -> None:
    """Send one prompt to any backend and print the reply (a quick check of a setup)."""
    import asyncio

    from cai_kit.llm.base import GenParams
    from cai_kit.llm.registry import get_backend

    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    params = GenParams(temperature=temperature, max_tokens=max_tokens, seed=seed)

    async def _go() -> str:
        # one call: the embedded model's low-latency one-at-a-time path, not the batched one
        one = {"parallel": 1} if model.strip() in ("local", "local:llama") else {}
        backend = get_backend(model, api_base=api_base, **one)
        try:
            return (await backend.chat(messages, params)).text
        finally:
            await backend.aclose()

    typer.echo(asyncio.run(_go()))


def register(app: typer.Typer) -> None:
    app.command("models")(models)
    app.command("chat")(chat)
