"""`cai-kit batches list RUN` and `cai-kit batches cancel RUN [BATCH_ID]` (issue 29: messages gave
a batch's id, but no command listed or cancelled a run's open batches). Against the scripted
provider's Batch API (tests/fixtures/fault_server.py), a batch left open by a run killed -9."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from typer.testing import CliRunner

from cai_kit.cli.main import app
from tests.fixtures.fault_server import FaultServer
from tests.test_batch_api import _killed_while_polling, _prompts, _rows


def _invoke(*args: str) -> str:
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, r.output + repr(r.exception)
    return " ".join(r.output.split())


def test_batches_list_shows_an_open_batch_and_cancel_closes_it_and_releases_it(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    prompts = _prompts(tmp_path / "p.jsonl", 4)
    out = tmp_path / "o"
    common = ["generate", str(prompts), "--model", "m", "--api-base", fault_server.base_url,
              "--out", str(out), "--batch-api", "--price", "1000,1000", "--max-tokens", "16",
              "--max-cost", "1", "--cache-path", str(tmp_path / "c.sqlite")]  # fmt: skip
    _killed_while_polling(fault_server, [sys.executable, "-m", "cai_kit", *common, "-q"])
    (submitting,) = [
        e for e in _rows(out / "batches" / "ledger.jsonl") if e["event"] == "submitting"
    ]
    listed = _invoke("batches", "list", str(out))
    assert f"batch_1 {fault_server.base_url} 4 requests in_progress" in listed, listed
    assert f"reserved ${submitting['reserved']:.4f}" in listed and submitting["reserved"] > 0

    cancelled = _invoke("batches", "cancel", str(out), "batch_1")
    assert "batch_1" in cancelled and "closed: 0 answered (kept), 4 not" in cancelled, cancelled
    assert fault_server.batches["batch_1"]["status"] == "cancelled"
    finished = [e for e in _rows(out / "batches" / "ledger.jsonl") if e["event"] == "finished"]
    assert len(finished) == 1 and "cai-kit batches cancel" in finished[0]["status"]
    assert "has no open batches" in _invoke("batches", "list", str(out))

    fault_server.batch_hold = False  # a re-run neither waits for it nor holds its worst case
    r = CliRunner().invoke(app, [*common, "-q"])
    assert r.exit_code == 0 and fault_server.batches_created == 2, r.output
    stats = json.loads((out / "manifest.json").read_text())["stats"]
    assert stats["calls"] == 4


def test_batches_cancel_of_an_unknown_batch_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    r = CliRunner().invoke(app, ["batches", "cancel", str(tmp_path / "o"), "batch_9"])
    assert r.exit_code == 1 and "has no open batch batch_9" in r.output, r.output
    assert "has no open batches" in _invoke("batches", "list", str(tmp_path / "o"))
