"""Online RLAIF: `cai-kit train grpo` with an AI judge (scripted server on loopback) as the reward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tests.fixtures.fault_server as fs
from cai_kit.cli.main import app
from tests.fixtures.fault_server import FaultServer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cai_kit.train.common import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.slow
def test_train_grpo_with_a_judge_reward_runs_and_saves(
    tiny: Path, tmp_path: Path, fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        fs,
        "reply_text",
        lambda body: (
            "Yes" if "a" in body["messages"][-1]["content"].split("Response:")[-1][:40] else "No"
        ),
    )
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi\nSay bye\n")
    out = tmp_path / "grpo"
    r = CliRunner().invoke(app, ["train", "grpo", str(prompts), "--model", f"hf:{tiny}", "--reward-judge", "j",
                                 "--judge-api-base", fault_server.base_url, "--out", str(out), "--max-steps", "2",
                                 "--num-generations", "4", "--batch-size", "4", "--max-completion-length", "6"])  # fmt: skip
    assert r.exit_code == 0, r.output
    history = json.loads((out / "log_history.json").read_text())
    assert any("reward" in h for h in history) and fault_server.paid >= 8
    assert (out / "adapter_model.safetensors").is_file()
