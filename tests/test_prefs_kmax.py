"""`prefs --label rubric --k-max N`: a prompt whose k samples all score alike draws more
samples (2k, ... up to N), that prompt only, until it gives a decisive pair; the summary says
how many prompts gave none. Against the scripted provider: the policy's first k samples of a
prompt are the same rude answer (alike under the rubric), later ones differ."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.llm.base import GenParams
from tests.fixtures.fault_server import FaultServer
from tests.test_prefs_rubric import PROMPTS, _args, _records, _reply

K, K_MAX = 2, 8
# the seed each sample index sends (`GenParams.for_sample`), to key the scripted policy on it
INDEX = {GenParams(seed=0).for_sample(i).seed: i for i in range(K_MAX)}


def _policy(body: dict[str, Any], rng: Any) -> str:
    """Samples 0..K-1: the same rude answer (every rubric item alike); later ones: polite."""
    if body["model"] != "pol":
        return _reply(body, rng)
    i = INDEX[body["seed"]]
    return "Go away." if i < K else f"Please, happy to help ({i})."


def _run(server: FaultServer, tmp_path: Path, out: Path, monkeypatch: pytest.MonkeyPatch, *extra: str):  # type: ignore[no-untyped-def]  # fmt: skip
    args = [*_args(server, tmp_path, out, "--label", "rubric", "--k", str(K)), *extra]
    monkeypatch.setattr(sys, "argv", ["cai-kit", *args])
    return CliRunner().invoke(app, args)


def test_k_max_draws_more_samples_for_a_prompt_whose_k_samples_tie(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault_server.responder = _policy
    r = _run(fault_server, tmp_path, tmp_path / "plain", monkeypatch)
    assert r.exit_code == 0, r.output
    assert f"pairs:    {PROMPTS} of {PROMPTS} prompts gave no pair" in r.output, r.output
    assert all(rec.verdict.label == "tie" for rec in _records(tmp_path / "plain"))

    fault_server.bodies.clear()
    run = tmp_path / "kmax"
    r = _run(fault_server, tmp_path, run, monkeypatch, "--k-max", str(K_MAX))
    assert r.exit_code == 0, r.output
    assert f"pairs:    0 of {PROMPTS} prompts gave no pair" in r.output, r.output
    decisive = [rec for rec in _records(run) if rec.verdict.label in ("A", "B")]
    assert len(decisive) == PROMPTS
    assert all(rec.chosen and rec.chosen.startswith("Please") and rec.rejected == "Go away."
               for rec in decisive)  # fmt: skip
    # one more round (2k = 4 samples) was enough: samples 4..7 were never drawn
    drawn = {INDEX[b["seed"]] for b in fault_server.bodies if b["model"] == "pol"}
    assert {2, 3} <= drawn <= {0, 1, 2, 3}  # (0 and 1 may come from the call cache)

    calls = len(fault_server.bodies)
    r = _run(fault_server, tmp_path, run, monkeypatch, "--k-max", str(K_MAX))
    assert r.exit_code == 0 and len(fault_server.bodies) == calls, (
        r.output
    )  # a re-run calls nothing


def test_k_max_below_k_is_refused(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault_server.responder = _policy
    r = _run(fault_server, tmp_path, tmp_path / "bad", monkeypatch, "--k-max", "2", "--k", "4")
    assert r.exit_code != 0
    assert "--k-max must be at least --k (4), not 2." in r.output
    assert fault_server.paid == 0
