"""The TRL trainers and SPIN from plain Python: `cai_kit.train.sft|dpo|kto|orpo|reward|spin`,
the calls `cai-kit train ...` makes, with its run files and its defaults (issue 31)."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from cai_kit.errors import ConfigError, DataError

SFT = [
    {"messages": [{"role": "user", "content": f"Say hello {i}"}, {"role": "assistant", "content": "Hello there!"}]}
    for i in range(4)
]  # fmt: skip
PAIRS = [
    {"prompt": f"How do I do thing {i}?", "chosen": "Here is a safe way.", "rejected": f"No. Go away {i}."}
    for i in range(4)
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cai_kit.train.common import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.slow
def test_sft_from_a_list_of_rows_writes_the_run_files_and_returns_the_history(
    tiny: Path, tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    from cai_kit import train

    out = tmp_path / "sft"
    path, history = train.sft(
        SFT, out, model=f"hf:{tiny}", max_steps=2, batch_size=2, save_steps=100
    )

    assert path == out
    assert [h["step"] for h in history if "loss" in h] == [1, 2]
    # a notebook sees no library warning it cannot act on (the CLI never did)
    noise = [w for w in recwarn if issubclass(w.category, FutureWarning | DeprecationWarning)]
    assert not noise, [str(w.message) for w in noise]
    assert history == json.loads((out / "log_history.json").read_text())
    for name in ("adapter_config.json", "train_config.yaml", "training_curves.png", "README.md"):
        assert (out / name).is_file(), name
    # the rows the run trained on are kept in OUT, and train_config.yaml points at them
    assert [json.loads(x) for x in (out / "data" / "train.jsonl").read_text().splitlines()] == SFT
    config = yaml.safe_load((out / "train_config.yaml").read_text())
    assert config["kind"] == "sft" and config["options"]["data"] == str(out / "data")
    assert config["options"]["batch_size"] == 2 and config["options"]["save_steps"] == 100


@pytest.mark.slow
def test_dpo_from_a_jsonl_file_takes_beta_and_logs_the_reward_margins(
    tiny: Path, tmp_path: Path
) -> None:
    from cai_kit import train

    data, out = tmp_path / "pairs.jsonl", tmp_path / "dpo"
    data.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    path, history = train.dpo(data, out, model=f"hf:{tiny}", beta=0.25, max_steps=1, batch_size=2, lr=1e-3,
                              trl={"save_steps": 100})  # fmt: skip
    assert (
        yaml.safe_load((out / "train_config.yaml").read_text())["trl_config"]["save_steps"] == 100
    )  # trl= is --set

    assert path == out and (out / "adapter_config.json").is_file()
    steps = [h for h in history if "loss" in h]
    assert len(steps) == 1 and "rewards/margins" in steps[0]
    config = yaml.safe_load((out / "train_config.yaml").read_text())
    assert config["kind"] == "dpo" and config["trl_config"]["beta"] == 0.25
    assert config["trl_config"]["learning_rate"] == 1e-3 and config["options"]["data"] == str(data)
    assert not (out / "data").exists()  # a file given is used where it is


def test_an_unknown_option_or_empty_rows_is_one_sentence_before_anything_loads(
    tmp_path: Path,
) -> None:
    from cai_kit import train

    with pytest.raises(
        ConfigError, match=r"^Unknown training option\(s\) betta: .*trl=\{\.\.\.\}\.$"
    ):
        train.sft(SFT, tmp_path / "o", betta=0.1)
    with pytest.raises(DataError, match="non-empty list of row dicts"):
        train.dpo([], tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_the_trainers_and_the_cli_share_their_defaults() -> None:
    """Defaults are defined once: TrainOptions (every TRL trainer) and SpinOptions (SPIN)."""
    from cai_kit import train
    from cai_kit.cli.rl import spin as cli_spin
    from cai_kit.train.self_play import SPIN

    defaults = train.TrainOptions()
    for name in ("sft", "dpo", "kto", "orpo", "reward"):
        params = inspect.signature(getattr(train, name)).parameters
        for p in params.values():
            if p.kind is p.KEYWORD_ONLY and p.name != "report_to":
                assert p.default == getattr(defaults, p.name), (name, p.name)
    cli = inspect.signature(cli_spin).parameters
    api = inspect.signature(train.spin).parameters
    for name in ("model", "iterations", "max_steps", "batch_size", "lr", "beta", "max_new_tokens"):
        assert cli[name].default == api[name].default == getattr(SPIN, name, "local"), name


def test_train_spin_is_the_function_even_after_the_cli_loaded_the_spin_loop() -> None:
    import subprocess
    import sys

    code = ("import sys, cai_kit.cli.rl; from cai_kit import train; assert callable(train.spin), train.spin; "
            "train.dpo; assert not any(m in sys.modules for m in ('torch', 'transformers', 'trl'))")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


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
def test_the_rl_trainers_and_the_cli_share_their_defaults(command: str) -> None:
    """The flags of `train ppo|online-dpo|grpo` default to the library's (PPOConfig,
    OnlineDPOConfig, cai_kit.train.grpo): a notebook and a shell given nothing train alike."""
    from cai_kit.cli.main import app

    train = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    flags = {p.name: p.default for p in train.commands[command].params}
    library = _library_defaults(command)
    shared = {name: RENAMED.get(name, name) for name in flags}
    shared = {flag: field for flag, field in shared.items() if field in library}
    assert len(shared) >= 6, shared  # learning rate, steps/batch sizes, lengths, ...
    differ = {flag: (flags[flag], library[field]) for flag, field in shared.items()
              if flags[flag] != library[field]}  # fmt: skip
    assert not differ, f"CLI default vs library default: {differ}"
