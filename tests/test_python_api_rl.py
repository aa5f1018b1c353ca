"""The RL side from plain Python: the calls `cai-kit train ...` makes, with its run files and
its one-sentence errors (issue 31)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import tests.fixtures.fault_server as fs
from cai_kit.cli.main import app
from cai_kit.errors import ConfigError
from tests.fixtures.fault_server import FaultServer

RUBRIC = """\
name: t
principles:
  - id: short
    critique: Too long?
    revision: Shorten it.
    check: {regex: '\\A.{0,6}\\Z', must: match}
  - id: polite
    critique: Impolite?
    revision: Be polite.
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cai_kit.train.common import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.slow
def test_a_rubric_reward_trains_online_dpo_for_two_steps_from_python(
    tiny: Path, tmp_path: Path, fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six lines or fewer of user code; the run files are the command's."""
    monkeypatch.setattr(fs, "reply_text", lambda body: "Yes")
    cons, out = tmp_path / "c.yaml", tmp_path / "odpo"
    cons.write_text(RUBRIC)

    # --- what a user writes ---
    from cai_kit import rewards, train

    reward = rewards.rubric(cons, model="j", api_base=fault_server.base_url)
    config = train.OnlineDPOConfig(batch_size=2, max_new_tokens=4, learning_rate=1e-3)
    path, history = train.online_dpo(
        ["Say hi", "Say bye"], reward, out, model=f"hf:{tiny}", steps=2, config=config
    )
    # ---

    assert path == out and len(history) == 2
    for h in history:
        assert h["decisive"] + h["ties"] + h["failed"] == 2 and h["failed"] == 0
        assert h["rubric/polite"] == 1.0 and h["judge_calls"] > 0  # the judged principle asked
    assert json.loads((out / "log_history.json").read_text())[-1]["step"] == 2
    for name in ("train_config.yaml", "training_curves.png", "adapter_config.json"):
        assert (out / name).is_file(), name
    assert "kind: online-dpo" in (out / "train_config.yaml").read_text()
    assert reward.client._loop is None  # the trainer closed the reward when it ended


def _cli_error(*args: str) -> str:
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 1, r.output
    return r.output


@pytest.mark.parametrize(
    ("values", "flags"),
    [
        ({"mode": "maybe"}, ["--mode", "maybe"]),
        ({"samples": 0}, ["--samples", "0"]),
        ({"principles": "sample:0"}, ["--principles", "sample:0"]),
    ],
)
def test_a_judge_config_built_in_python_refuses_a_bad_value_with_the_cli_sentence(
    tmp_path: Path, values: dict[str, Any], flags: list[str]
) -> None:
    from cai_kit.judges.pairwise import JudgeConfig

    with pytest.raises(ConfigError) as exc:
        JudgeConfig(**values)
    sentence = str(exc.value)
    assert sentence.startswith("--") and sentence.endswith(".")
    assert sentence in _cli_error(
        "prefs", str(tmp_path / "p.txt"), "--out", str(tmp_path / "o"), *flags
    )


def test_the_rl_configs_refuse_bad_values_with_the_cli_sentence(tmp_path: Path) -> None:
    from cai_kit import rewards, train

    with pytest.raises(ConfigError) as exc:
        train.OnlineDPOConfig(temperature=0.0)
    assert str(exc.value) in _cli_error("train", "online-dpo", "p.txt", "--out", str(tmp_path / "o"),
                                        "--judge", "j", "--temperature", "0")  # fmt: skip
    with pytest.raises(ConfigError) as exc:
        rewards.RewardConfig(kind="best")
    assert str(exc.value) in _cli_error("train", "grpo", "p.txt", "--out", str(tmp_path / "g"),
                                        "--reward-judge", "j", "--reward", "best")  # fmt: skip
    with pytest.raises(ConfigError) as exc:
        rewards.build_reward(rewards.RewardConfig())  # neither a reward model nor a judge
    assert str(exc.value) in _cli_error("train", "ppo", "p.txt", "--out", str(tmp_path / "p"))


def test_a_plain_function_is_a_reward_and_the_library_imports_lightly() -> None:
    import subprocess
    import sys

    code = ("import sys, cai_kit; from cai_kit import rewards, train; train.RewardConfig; "
            "r = rewards.python(lambda p, r: [1.0] * len(r)); assert r(['p'], ['a']) == [1.0]; "
            "assert not any(m in sys.modules for m in ('torch', 'transformers', 'trl'))")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
