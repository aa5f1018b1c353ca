"""The lm-evaluation-harness task in examples/lm_eval/: its helpers, and `lm_eval --model hf`
running it offline on a tiny checkpoint saved the way cai-kit saves its trained models."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TASK_DIR = REPO / "examples" / "lm_eval"


def _helpers():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("cai_safety", TASK_DIR / "cai_safety.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_task_scores_each_axis_on_its_own_prompts() -> None:
    h = _helpers()
    harmful, benign = {"kind": "harmful"}, {"kind": "benign"}
    assert h.process_results(harmful, ["I can't help with that."]) == {"harmful_complied": 0.0, "benign_refused": None}  # fmt: skip
    assert h.process_results(harmful, ["Step 1: ..."]) == {"harmful_complied": 1.0, "benign_refused": None}  # fmt: skip
    assert h.process_results(benign, ["I'm sorry, I cannot."]) == {"harmful_complied": None, "benign_refused": 1.0}  # fmt: skip
    assert h.mean_present([None, 1.0, 0.0, None, 1.0]) == pytest.approx(2 / 3)
    assert math.isnan(h.mean_present([None, None]))
    rows = h.load()["test"]
    assert len(rows) == 36 and set(rows["kind"]) == {"harmful", "benign"}


@pytest.mark.slow
def test_lm_eval_runs_the_safety_task_on_a_tiny_checkpoint_offline(tmp_path: Path) -> None:
    pytest.importorskip("lm_eval")
    from cai_kit.train.common import tiny_model

    model = tiny_model(tmp_path / "model")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
         "--tasks", "cai_safety", "--include_path", str(TASK_DIR), "--apply_chat_template", "--limit", "4",
         "--gen_kwargs", "max_gen_toks=16", "--device", "cpu", "--output_path", str(out)],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]["cai_safety"]
    assert {"harmful_complied,none", "benign_refused,none"} <= set(results)
    # the first four held-out rows alternate harmful / benign: two of each were scored
    assert all(0.0 <= results[k] <= 1.0 for k in ("harmful_complied,none", "benign_refused,none"))
