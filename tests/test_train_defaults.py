"""One default per setting: the CLI's `train ppo|online-dpo|grpo` flags default to what the library
(`PPOConfig`, `OnlineDPOConfig`, `cai_kit.train.grpo`) defaults to, so a notebook and a shell
given the same nothing train the same model."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest
import typer

from cai_kit.cli.main import app

RENAMED = {"lr": "learning_rate"}  # flag name -> the config field it sets


def _library_defaults(command: str) -> dict[str, Any]:
    if command == "grpo":
        import cai_kit.train.api as api

        params = inspect.signature(api.grpo).parameters.values()
        return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    if command == "ppo":
        from cai_kit.train.ppo_trainer import PPOConfig as config
    else:
        from cai_kit.train.online_dpo_trainer import OnlineDPOConfig as config
    return {f.name: f.default for f in dataclasses.fields(config)}


@pytest.mark.parametrize("command", ["ppo", "online-dpo", "grpo"])
def test_the_cli_flags_default_to_the_librarys_defaults(command: str) -> None:
    train = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    flags = {p.name: p.default for p in train.commands[command].params}
    library = _library_defaults(command)
    shared = {name: RENAMED.get(name, name) for name in flags}
    shared = {flag: field for flag, field in shared.items() if field in library}
    assert len(shared) >= 6, shared  # learning rate, steps/batch sizes, lengths, ...
    differ = {flag: (flags[flag], library[field]) for flag, field in shared.items()
              if flags[flag] != library[field]}  # fmt: skip
    assert not differ, f"CLI default vs library default: {differ}"
