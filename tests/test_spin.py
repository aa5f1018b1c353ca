"""SPIN on a tiny model: iterations chain, and the chosen-vs-rejected margin grows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cai_kit.cli.main import app
from tests.test_train import tensorboard_scalars, trackio_metrics


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cai_kit.train.common import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _pair_margin(model_dir: Path, rows: list[dict]) -> float:
    """Mean log p(chosen) - log p(rejected) under a model (the DPO quantity SPIN pushes up)."""
    import torch
    from transformers import AutoModelForCausalLM

    from cai_kit.train.common import load_tokenizer

    tok = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()

    def logp(prompt: list[dict], completion: list[dict]) -> float:
        p = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(prompt + completion, tokenize=False)
        ids = tok(full, return_tensors="pt", add_special_tokens=False)["input_ids"]
        n = len(tok(p, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(1, ids[0, 1:, None])[:, 0]
        return float(lp[n - 1 :].sum())

    return sum(
        logp(r["prompt"], r["chosen"]) - logp(r["prompt"], r["rejected"]) for r in rows
    ) / len(rows)


@pytest.mark.slow
def test_spin_iterations_chain_and_the_margin_grows(
    tiny: Path, tmp_path: Path, trackio_project: str
) -> None:
    data = tmp_path / "sft.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Greet person {i}."},
                {"role": "assistant", "content": "Hello! Nice to meet you."},
            ]
        }
        for i in range(8)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "spin"
    r = CliRunner().invoke(app, ["train", "spin", str(data), "--model", f"hf:{tiny}", "--out", str(out), "--iterations", "2",
                                 "--max-steps", "3", "--lr", "5e-3", "--max-new-tokens", "8",
                                 "--report-to", "trackio,tensorboard"])  # fmt: skip
    assert r.exit_code == 0, r.output
    # --report-to: each iteration's DPO steps (TRL) and one point per iteration (the loop)
    assert [s for s, _ in tensorboard_scalars(out)["spin/pairs"]] == [1, 2]
    assert [s for s, _ in tensorboard_scalars(out / "iter_2" / "model")["train/loss"]] == [1, 2, 3]
    # trackio ($TRACKIO_PROJECT holds both): each DPO's run, and the loop's own run, continued
    # after each DPO's run (which finishes it: trackio has one current run) with both points
    rows = trackio_metrics(trackio_project)
    spin = [(run, step) for run, step, m in rows if "spin/pairs" in m]
    assert [step for _, step in spin] == [1, 2] and spin[0][0] == spin[1][0]
    dpo_runs = {run for run, _, m in rows if "train/loss" in m}
    assert len(dpo_runs) == 2 and spin[0][0] not in dpo_runs
    cfg2 = yaml.safe_load((out / "iter_2" / "model" / "train_config.yaml").read_text())
    assert (
        Path(cfg2["base_model"]) == out / "iter_1" / "model"
    )  # iteration 2 starts from iteration 1
    it1 = [
        json.loads(x) for x in (out / "iter_1" / "data" / "train.jsonl").read_text().splitlines()
    ]
    assert _pair_margin(out / "iter_1" / "model", it1) > _pair_margin(tiny, it1)
