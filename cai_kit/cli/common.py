"""Options shared by every command that calls a model, and CLI helpers.

API keys are read from the environment only (OPENAI_API_KEY, ...), never from flags, so
they never land in shell history or in a run's manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
TemperatureOpt = Annotated[float, typer.Option("--temperature", help="Sampling temperature.")]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", help="Maximum tokens per generation.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (sampling of principles, generation).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; print only the summary.")]


def fail(message: str, code: int = 1) -> None:
    """Print one red line and exit: for user errors caught in a command."""
    from cai_kit.errors import redact

    typer.secho(f"Error: {redact(message)}", fg="red", err=True)
    raise typer.Exit(code)
