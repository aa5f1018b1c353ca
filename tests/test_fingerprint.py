"""Stale results can't pass for new ones: an `hf:` backend's identity is a fingerprint of the
weights' contents, and `eval` record ids hash it, so new weights in the same directory are
evaluated anew (not served from old records with 0 calls)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.llm import get_backend
from tests.fixtures.fault_server import FaultServer


def _rewrite_keeping_stat(path: Path, data: bytes) -> None:
    """Overwrite a file in place with same-size content and put its old mtime back."""
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_hf_identity_follows_the_weights_contents_not_their_mtime(tmp_path: Path) -> None:
    ckpt = tmp_path / "model"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model_type": "llama"}')
    (ckpt / "model.safetensors").write_bytes(b"A" * 64)
    (ckpt / "README.md").write_text("card")
    backend = get_backend(f"hf:{ckpt}")
    first = backend.identity()
    assert get_backend(f"hf:{ckpt}").identity() == first  # stable across backend objects
    _rewrite_keeping_stat(ckpt / "model.safetensors", b"B" * 64)  # same size, same mtime
    second = get_backend(f"hf:{ckpt}").identity()
    assert second != first
    (ckpt / "README.md").write_text("a new model card")  # docs don't change the model
    assert get_backend(f"hf:{ckpt}").identity() == second
    (ckpt / "config.json").write_text('{"model_type": "llama", "x": 1}')
    assert get_backend(f"hf:{ckpt}").identity() != second


def test_hf_identity_covers_a_lora_adapter_and_its_local_base(tmp_path: Path) -> None:
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir(), adapter.mkdir()
    (base / "model.safetensors").write_bytes(b"base-1")
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    (adapter / "adapter_model.safetensors").write_bytes(b"lora-1")
    ids = [get_backend(f"hf:{adapter}").identity()]
    _rewrite_keeping_stat(adapter / "adapter_model.safetensors", b"lora-2")
    ids.append(get_backend(f"hf:{adapter}").identity())
    _rewrite_keeping_stat(base / "model.safetensors", b"base-2")
    ids.append(get_backend(f"hf:{adapter}").identity())
    assert len(set(map(str, ids))) == 3


@pytest.mark.slow
def test_retraining_into_the_same_hf_dir_then_eval_re_evaluates(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    from cai_kit.train.common import tiny_model

    ckpt = tmp_path / "dpo_model"
    shutil.copytree(tiny_model(tmp_path / "v1", seed=1, init_range=0.5), ckpt)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": f"Say something about {w}."}) + "\n" for w in ("cats", "rain")
        )
    )

    def judge(
        body: dict, rng: object
    ) -> str:  # the baseline says BASE; the judge prefers the model
        if body["model"] == "base":
            return "BASE answer"
        blocks = re.findall(
            r"<<<RESPONSE-[AB]-\w+>>>\n(.*?)\n<<<END", body["messages"][-1]["content"], re.DOTALL
        )
        return "B" if blocks[0] == "BASE answer" else "A"

    fault_server.responder = judge
    args = ["eval", "winrate", "--prompts", str(prompts), "--model", f"hf:{ckpt}", "--baseline", "base", "--judge",
            "judge", "--api-base", fault_server.base_url, "--mode", "letter", "--temperature", "0",
            "--max-tokens", "8", "--out", str(tmp_path / "ev"), "-q"]  # fmt: skip

    def answers() -> list[str]:
        lines = (tmp_path / "ev" / "prefs.jsonl").read_text().splitlines()
        latest = {json.loads(x)["id"]: json.loads(x) for x in lines}
        return sorted(r["response_a"] for r in latest.values())

    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    before, paid = answers(), fault_server.paid
    r = CliRunner().invoke(app, args)
    assert fault_server.paid == paid and answers() == before  # same weights: nothing to redo
    # Retrain in place: new weights, same file name and size.
    v2 = tiny_model(tmp_path / "v2", seed=2, init_range=0.5)
    shutil.copyfile(v2 / "model.safetensors", ckpt / "model.safetensors")
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert fault_server.paid > paid  # the new answers were judged
    assert answers() != before  # the new weights' answers, not the old records
    assert "2 done; 0 failed; 0 already done" in r.output
    calls = int(re.search(r"(\d+) calls", r.output).group(1))  # type: ignore[union-attr]
    assert calls > 0
