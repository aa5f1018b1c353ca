"""`cai-kit train online-dpo`: Online DPO with AI feedback (OAIF), judged by our pairwise judge."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from tests.fixtures.fault_server import FaultServer
from tests.fixtures.interrupt import ctrl_c_while_held
from tests.test_train import tensorboard_scalars


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cai_kit.train.common import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny") / "model")


_BLOCK = r"<<<RESPONSE-{x}-\w+>>>\n(.*?)\n<<<END-RESPONSE-{x}-\w+>>>"


def _shown(body: dict[str, Any]) -> tuple[str, str]:
    """The two responses of a judge prompt, in the order shown."""
    text = body["messages"][-1]["content"]
    a = re.search(_BLOCK.format(x="A"), text, re.DOTALL)
    b = re.search(_BLOCK.format(x="B"), text, re.DOTALL)
    assert a and b
    return a.group(1), b.group(1)


def prefers_shorter(body: dict[str, Any], rng: object) -> str:
    """A judge that prefers the shorter response, whichever order it is shown in (equal
    lengths: "A" both ways, a position-inconsistent tie)."""
    a, b = _shown(body)
    return "B" if len(b) < len(a) else "A"


def _run(tiny: Path, prompts: Path, server: FaultServer, out: Path, *extra: str) -> Any:
    return CliRunner().invoke(app, ["train", "online-dpo", str(prompts), "--model", f"hf:{tiny}", "--judge", "j",
                                    "--judge-api-base", server.base_url, "--out", str(out), "--batch-size", "2",
                                    "--max-new-tokens", "4", "--lr", "1e-3", "--max-retries", "0", *extra])  # fmt: skip


@pytest.mark.slow
def test_online_dpo_cli_learns_from_decisive_pairs_and_writes_its_outputs(
    tiny: Path, tmp_path: Path, fault_server: FaultServer
) -> None:
    fault_server.responder = prefers_shorter
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi\nSay bye\n")
    out = tmp_path / "odpo"
    r = _run(tiny, prompts, fault_server, out, "--steps", "2", "--report-to", "tensorboard")
    assert r.exit_code == 0, r.output
    assert fault_server.paid == 8  # 2 steps x 2 pairs x both orders
    history = json.loads((out / "log_history.json").read_text())
    assert [h["step"] for h in history] == [1, 2]
    for h in history:
        assert h["decisive"] + h["ties"] == 2 and h["failed"] == 0
        assert ("loss" in h) == (h["decisive"] > 0)
    # decisive pairs are exactly those whose two responses differ in length (as the judge saw them)
    shown = [_shown(b) for b in fault_server.bodies]
    decisive = sum(len(a) != len(b) for a, b in shown) / 2  # each pair is shown in both orders
    assert sum(h["decisive"] for h in history) == decisive
    assert "step 2/2:" in r.output and "Saved to" in r.output
    assert (out / "adapter_config.json").is_file()  # LoRA by default
    for name in ("train_config.yaml", "training_curves.png", "log_history.json"):
        assert (out / name).is_file(), name
    assert "kind: online-dpo" in (out / "train_config.yaml").read_text()
    scalars = tensorboard_scalars(out)  # --report-to: the same per-step numbers
    for key in ("decisive", "ties", "failed", "judge_calls"):
        assert [s for s, _ in scalars[key]] == [1, 2], key
        assert [v for _, v in scalars[key]] == pytest.approx([h[key] for h in history]), key
    assert [v for _, v in scalars["judge_calls"]] == [4, 8]  # one engine: the run so far


@pytest.mark.slow
def test_a_dead_judge_or_max_cost_stops_online_dpo_and_keeps_the_finished_step(
    tiny: Path, tmp_path: Path, fault_server: FaultServer
) -> None:
    fault_server.responder = prefers_shorter
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi\nSay bye\n")
    fault_server.script = ["ok"] * 4  # step 1 is judged; then the judge's key stops working
    fault_server.default = "401"
    dead = tmp_path / "dead"
    r = _run(tiny, prompts, fault_server, dead, "--steps", "3")
    assert r.exit_code == 1, r.output
    assert "2 of 2 pair verdicts failed in step 2" in r.output, r.output
    assert "The 1 finished step(s) are saved" in r.output and "Traceback" not in r.output
    assert len(json.loads((dead / "log_history.json").read_text())) == 1
    assert (dead / "adapter_config.json").is_file()

    fault_server.reset()
    fault_server.responder = prefers_shorter
    fault_server.report_cost = 0.01  # $0.04 a step (4 calls): --max-cost 0.055 allows one step
    capped = tmp_path / "capped"
    r = _run(tiny, prompts, fault_server, capped, "--steps", "3", "--max-cost", "0.055",
             "--price", "0,2500", "--concurrency", "1", "--no-cache")  # fmt: skip
    assert r.exit_code == 1 and "max-cost" in r.output, r.output
    assert "The 1 finished step(s) are saved" in r.output
    assert len(json.loads((capped / "log_history.json").read_text())) == 1
    assert (capped / "adapter_config.json").is_file()
    assert fault_server.paid <= 6  # stopped inside step 2


def test_online_dpo_refuses_a_zero_temperature(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi\n")
    base = ["train", "online-dpo", str(prompts), "--judge", "j", "--judge-api-base",
            "http://127.0.0.1:9/v1", "--out", str(tmp_path / "o")]  # fmt: skip
    r = CliRunner().invoke(app, [*base, "--temperature", "0"])
    assert r.exit_code == 1 and "--temperature must be above 0" in r.output, r.output


# --- several processes (torchrun), as PPO -----------------------------------------------------


def _two_ranks(tiny: Path, tmp_path: Path, judge_url: str, prompts: str, *extra: str) -> tuple[int, str, Path]:  # fmt: skip
    """`train online-dpo` as 2 processes over torchrun (gloo): with "Say hi\\nSay bye", rank 0
    samples "Say hi" and rank 1 "Say bye"; judged by the scripted server: (exit code, output,
    OUT). Killed with its workers if it takes over 4 minutes (ranks out of step wait forever)."""
    import sys

    from tests.fixtures.processes import run_group

    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "p.txt"
    path.write_text(prompts)
    out = tmp_path / "odpo"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "cai_kit", "train",
           "online-dpo", str(path), "--model", f"hf:{tiny}", "--judge", "j", "--judge-api-base", judge_url,
           "--out", str(out), "--batch-size", "2", "--max-new-tokens", "4", "--lr", "1e-3", "--max-retries", "0",
           "--no-cache", *extra]  # fmt: skip
    code, output = run_group(cmd, timeout=240)
    return code, output, out


def _prompt_of(body: dict[str, Any]) -> str:
    return "Say hi" if "Say hi" in json.dumps(body["messages"]) else "Say bye"


@pytest.mark.slow
def test_online_dpo_as_two_processes_judges_both_slices_sums_the_pairs_and_rank_0_saves(
    tiny: Path, tmp_path: Path, fault_server: FaultServer
) -> None:
    """Rank 1's pairs are all ties ("A" in both orders), rank 0's judged by length: rank 1 has
    no decisive pair of its own, yet steps with rank 0 (a zero-weight loss), else DDP hangs."""

    def ties_for_bye(body: dict[str, Any], rng: object) -> str:
        return "A" if _prompt_of(body) == "Say bye" else prefers_shorter(body, rng)

    fault_server.responder = ties_for_bye
    code, output, out = _two_ranks(
        tiny, tmp_path, fault_server.base_url, "Say hi\nSay bye\n", "--steps", "2"
    )
    assert code == 0, output[-3000:]
    assert output.count("Saved to") == 1 and output.count("step 1/2") == 1, output[-3000:]
    # each rank judged its own slice: 2 steps x 2 pairs x both orders, per rank
    judged = [_prompt_of(b) for b in fault_server.bodies]
    assert judged.count("Say hi") == 8 and judged.count("Say bye") == 8
    history = json.loads((out / "log_history.json").read_text())
    assert [h["step"] for h in history] == [1, 2]
    for h in history:  # totals over both ranks: 2 ranks x 2 pairs per step
        assert h["decisive"] + h["ties"] + h["failed"] == 4 and h["failed"] == 0
        assert h["ties"] >= 2  # rank 1's
        assert ("loss" in h) == (h["decisive"] > 0)
    # the decisive pairs are rank 0's whose two responses differ in length (as the judge saw them)
    shown = [_shown(b) for b in fault_server.bodies if _prompt_of(b) == "Say hi"]
    decisive = sum(len(a) != len(b) for a, b in shown) / 2  # each pair is shown in both orders
    assert sum(h["decisive"] for h in history) == decisive > 0  # rank 1 stepped with none
    assert history[-1]["judge_calls"] == 16  # the run so far, both ranks
    assert (out / "adapter_config.json").is_file()
    assert (out / "train_config.yaml").is_file() and (out / "training_curves.png").is_file()

    # a per-response reward (a checks-only rubric) instead of the pairwise judge: no judge call
    fault_server.reset()
    cons = tmp_path / "c.yaml"
    cons.write_text(CHECKS_ONLY)
    code, output, out = _two_ranks(tiny, tmp_path / "rubric", fault_server.base_url, "Say hi\nSay bye\n",
                                   "--steps", "2", "--reward", "rubric", "-c", str(cons))  # fmt: skip
    assert code == 0 and output.count("Saved to") == 1, output[-3000:]
    history = json.loads((out / "log_history.json").read_text())
    assert len(history) == 2 and not fault_server.bodies
    for h in history:
        assert h["decisive"] + h["ties"] + h["failed"] == 4 and h["failed"] == 0
        assert h["rubric/picky"] == 1.0 and h["judge_calls"] == 0


@pytest.mark.slow
def test_online_dpo_as_two_processes_stops_every_rank_at_the_step_one_ranks_judge_fails(
    tiny: Path, tmp_path: Path, fault_server: FaultServer
) -> None:
    """Rank 1's judge refuses from step 2 on (rank 0's answers): the failures are counted over
    both ranks, so both stop at step 2 (the old code refused several processes; a rank that
    stopped alone would leave the other waiting forever in the next collective)."""
    seen = {"Say bye": 0}

    def refuses_bye_after_step_1(body: dict[str, Any], rng: object) -> str | None:
        if _prompt_of(body) == "Say bye":
            seen["Say bye"] += 1
            if seen["Say bye"] > 4:  # step 1: 2 pairs x both orders
                return None  # content null: the provider refused
        return prefers_shorter(body, rng)

    fault_server.responder = refuses_bye_after_step_1
    code, output, out = _two_ranks(tiny, tmp_path / "dead", fault_server.base_url, "Say hi\nSay bye\n",
                                   "--steps", "3")  # fmt: skip
    assert code == 1, output[-3000:]
    assert "2 of 4 pair verdicts failed in step 2" in output, output[-3000:]
    assert output.count("The 1 finished step(s) are saved") == 2, output[-3000:]  # both ranks
    assert len(json.loads((out / "log_history.json").read_text())) == 1
    assert (out / "adapter_config.json").is_file()

    # a judge that raises on one rank (its share of --max-cost spent) stops the other too;
    # rank 1's calls cost $0.02, rank 0's $0.01: --max-cost 0.2 gives each $0.10, and rank 1
    # reaches it in step 2 (4 calls a step; --price 0,5000: a call's worst case is $0.02)
    fault_server.reset()
    fault_server.responder = prefers_shorter
    fault_server.report_cost = lambda body: 0.02 if _prompt_of(body) == "Say bye" else 0.01
    code, output, out = _two_ranks(tiny, tmp_path / "capped", fault_server.base_url, "Say hi\nSay bye\n",
                                   "--steps", "3", "--max-cost", "0.2", "--price", "0,5000",
                                   "--concurrency", "1")  # fmt: skip
    assert code == 1 and "another process reached its share of --max-cost" in output, output[-3000:]
    assert output.count("The 1 finished step(s) are saved") == 2, output[-3000:]
    spent = sum(0.02 if _prompt_of(b) == "Say bye" else 0.01 for b in fault_server.bodies)
    assert spent <= 0.2 + 1e-9  # the run's cap, both ranks together
    assert len(json.loads((out / "log_history.json").read_text())) == 1

    # one prompt for two processes: one sentence, as PPO
    code, output, _ = _two_ranks(
        tiny, tmp_path / "one", fault_server.base_url, "Say hi\n", "--steps", "1"
    )
    assert code == 1 and "1 prompt(s) for 2 processes" in output, output[-3000:]


_GRADIENT_OF_ONE_STEP = """
import sys, torch
from transformers import AutoModelForCausalLM
from cai_kit.train.common import load_tokenizer
from cai_kit.train.online_dpo_trainer import OnlineDPOConfig, OnlineDPOTrainer

model, out = sys.argv[1], sys.argv[2]
tok = load_tokenizer(model)
cfg = OnlineDPOConfig(batch_size=2, beta=0.5, max_grad_norm=1e9)
trainer = OnlineDPOTrainer(cfg, AutoModelForCausalLM.from_pretrained(model), tok)
grads = {}
def record():  # instead of the optimiser step: the gradient it would apply
    grads.update({n.removeprefix("module."): p.grad.clone() for n, p in trainer.policy.named_parameters()})
trainer.optimizer.step = record
# fixed samples per prompt (a, b, a, b, ...) and a judge: "A"'s pairs are decisive (a wins),
# "B"'s first is decisive (b wins), its second a tie
SAMPLES = {"A": [" hello there", " no", " hi", " what is it"], "B": [" a story", " nothing at all", " x", " y"]}
ids = {p: trainer._encode(p) for p in SAMPLES}
enc = lambda t: torch.tensor(tok(t)["input_ids"])
def generate(queries):
    prompt = next(p for p, q in ids.items() if torch.equal(q, queries[0]))
    return [enc(t) for t in SAMPLES[prompt]]
trainer.generate = generate
if sys.argv[3] == "train":  # rank 0 gets "A", rank 1 "B"
    trainer.train(["A", "B"], lambda p, a, b: [1.0, 1.0] if p[0] == "A" else [0.0, 0.5], 1)
else:  # one process, the same 3 decisive pairs: the mean loss
    a, b = SAMPLES["A"], SAMPLES["B"]
    trainer.dpo_step([ids["A"], ids["A"], ids["B"]], [enc(a[0]), enc(a[2]), enc(b[1])],
                     [enc(a[1]), enc(a[3]), enc(b[0])])
if trainer.is_main_process:
    torch.save(grads, out)
"""


@pytest.mark.slow
def test_two_processes_step_with_the_gradient_of_the_mean_over_all_decisive_pairs(
    tiny: Path, tmp_path: Path
) -> None:
    """Rank 0 ("A") has 2 decisive pairs, rank 1 ("B") 1 and a tie: the gradient DDP averages
    is that of one process's mean loss over the same 3 pairs (a per-rank mean would weigh rank
    1's single pair as much as rank 0's two)."""
    import sys

    import torch

    from tests.fixtures.processes import run_group

    script = tmp_path / "step.py"
    root = str(Path(__file__).resolve().parents[1])  # this checkout's cai_kit
    script.write_text(f"import sys; sys.path.insert(0, {root!r})\n" + _GRADIENT_OF_ONE_STEP)
    code, output = run_group([sys.executable, str(script), str(tiny), str(tmp_path / "one.pt"), "mean"], 240)  # fmt: skip
    assert code == 0, output[-3000:]
    code, output = run_group([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                              str(tiny), str(tmp_path / "two.pt"), "train"], 240)  # fmt: skip
    assert code == 0, output[-3000:]
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one.keys() == two.keys() and len(one) > 0
    for name, g in one.items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(two[name], g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("lora", [True, False])
def test_dpo_steps_start_at_log_2_and_raise_the_chosen_over_the_rejected(
    tiny: Path, lora: bool
) -> None:
    """The reference is the starting model (LoRA: adapters off), so the first step's margin is 0
    and its loss log 2; steps on one pair then widen log pi(chosen) - log pi(rejected)."""
    import math

    import torch
    from transformers import AutoModelForCausalLM

    from cai_kit.train.common import load_tokenizer, lora_config
    from cai_kit.train.online_dpo_trainer import OnlineDPOConfig, OnlineDPOTrainer

    tok = load_tokenizer(str(tiny))
    cfg = OnlineDPOConfig(learning_rate=1e-2, beta=0.5, max_new_tokens=4)
    trainer = OnlineDPOTrainer(cfg, AutoModelForCausalLM.from_pretrained(tiny), tok,
                               peft_config=lora_config(r=4, alpha=8) if lora else None)  # fmt: skip
    q = trainer._encode("Say hi")
    chosen, rejected = (
        torch.tensor(tok(" hello")["input_ids"]),
        torch.tensor(tok(" no")["input_ids"]),
    )

    def gap() -> float:
        ids, att, mask = trainer._batch([q, q], [chosen, rejected])
        with torch.no_grad():
            s = trainer._sums(ids, att, mask)
        return float(s[0] - s[1])

    before = gap()
    first = trainer.dpo_step([q], [chosen], [rejected])
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    for _ in range(4):
        trainer.dpo_step([q], [chosen], [rejected])
    assert gap() > before + 0.1


# --- a per-response reward instead of the pairwise judge: --reward rubric, --reward-fn ------

SEEN: list[tuple[str, str]] = []  # (prompt, response) pairs the Python reward was asked about


def shorter_is_better(prompts: list[str], responses: list[str]) -> list[float]:
    SEEN.extend(zip(prompts, responses, strict=True))
    return [-float(len(r)) for r in responses]


CHECKS_ONLY = """\
name: t
principles:
  - id: short
    critique: Too long?
    revision: Shorten it.
    check: {regex: '\\A.{0,6}\\Z', must: match}
  - id: picky
    critique: Picky?
    revision: Be picky.
    check: {python: "tests.test_online_dpo:picky"}
"""


def picky(prompt: str, response: str) -> bool:
    if prompt == "Explode":
        raise ValueError("cannot judge this one")
    return True


def _pointwise(tiny: Path, prompts: Path, out: Path, *extra: str) -> Any:
    return CliRunner().invoke(app, ["train", "online-dpo", str(prompts), "--model", f"hf:{tiny}", "--out", str(out),
                                    "--batch-size", "2", "--max-new-tokens", "4", "--lr", "1e-3", *extra])  # fmt: skip


@pytest.mark.slow
def test_online_dpo_with_a_python_reward_chooses_the_higher_score_and_calls_no_judge(
    tiny: Path, tmp_path: Path
) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi\nSay bye\n")
    SEEN.clear()
    out = tmp_path / "fn"
    r = _pointwise(
        tiny, prompts, out, "--steps", "2", "--reward-fn", "tests.test_online_dpo:shorter_is_better"
    )
    assert r.exit_code == 0, r.output
    history = json.loads((out / "log_history.json").read_text())
    assert len(SEEN) == 8  # 2 steps x 2 prompts x 2 samples, each scored alone
    # each call scores the a-samples then the b-samples: pairs are (i, i + 2) within a step
    decisive = [
        sum(len(SEEN[s + i][1]) != len(SEEN[s + i + 2][1]) for i in range(2)) for s in (0, 4)
    ]
    assert [h["decisive"] for h in history] == decisive
    assert all(h["failed"] == 0 and h["judge_calls"] == 0 for h in history)
    assert (out / "adapter_config.json").is_file()


@pytest.mark.slow
def test_online_dpo_with_a_checks_only_rubric_logs_each_principle_and_a_raising_check_stops_it(
    tiny: Path, tmp_path: Path
) -> None:
    cons = tmp_path / "c.yaml"
    cons.write_text(CHECKS_ONLY)
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi\nSay bye\n")
    out = tmp_path / "rubric"
    r = _pointwise(tiny, prompts, out, "--steps", "2", "--reward", "rubric", "-c", str(cons))
    assert r.exit_code == 0, r.output
    history = json.loads((out / "log_history.json").read_text())
    assert len(history) == 2
    for h in history:
        assert h["rubric/picky"] == 1.0 and 0.0 <= h["rubric/short"] <= 1.0
        assert h["decisive"] + h["ties"] == 2 and h["failed"] == 0 and h["judge_calls"] == 0

    prompts.write_text("Explode\n")  # every pair has a check that raises: failed, never a tie
    r = _pointwise(
        tiny, prompts, tmp_path / "boom", "--steps", "2", "--reward", "rubric", "-c", str(cons)
    )
    assert r.exit_code == 1, r.output
    assert (
        "2 of 2 pair verdicts failed in step 1" in r.output and "No step was finished" in r.output
    )


def test_online_dpo_needs_a_judge_or_a_reward_and_no_pairwise_judge_with_reward_fn(
    tmp_path: Path,
) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi\n")
    base = ["train", "online-dpo", str(prompts), "--out", str(tmp_path / "o")]
    r = CliRunner().invoke(app, base)
    assert r.exit_code == 1 and "Give --judge MODEL" in r.output, r.output
    r = CliRunner().invoke(app, [*base, "--judge", "j", "--reward-fn", "m:f"])
    assert r.exit_code == 1 and "use it with --reward rubric" in r.output, r.output
    r = CliRunner().invoke(app, [*base, "--reward", "group"])
    assert r.exit_code == 1 and "--reward must be pairwise or rubric" in r.output, r.output


@pytest.mark.slow
def test_online_dpo_stopped_by_max_cost_continues_from_its_last_step_when_re_run(
    tiny: Path, tmp_path: Path, fault_server: FaultServer
) -> None:
    """A re-run with a higher cap trains only the remaining steps; the stopped step is drawn
    again as before, so its one paid verdict comes from the cache (no call is paid twice)."""
    fault_server.responder = prefers_shorter
    fault_server.report_cost = 0.01  # 4 calls, $0.04 a step: --max-cost 0.055 allows 5 calls
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi\nSay bye\n")
    out = tmp_path / "capped"
    flags = ("--steps", "3", "--price", "0,2500", "--concurrency", "1")
    r = _run(tiny, prompts, fault_server, out, *flags, "--max-cost", "0.055")
    assert r.exit_code == 1 and "The 1 finished step(s) are saved" in r.output, r.output
    assert "with a higher --max-cost: training continues from step 2 of 3" in r.output, r.output
    first = fault_server.paid
    assert first == 5

    r = _run(tiny, prompts, fault_server, out, *flags, "--max-cost", "1")
    assert r.exit_code == 0, r.output
    assert "training continues from step 2 of 3" in r.output
    assert [h["step"] for h in json.loads((out / "log_history.json").read_text())] == [1, 2, 3]
    assert fault_server.paid == 12  # 3 steps x 4 verdict calls, none paid twice
    last = json.loads((out / "log_history.json").read_text())[-1]
    # the run's judge totals carry across the stop: every call the provider billed, once
    assert last["judge_calls"] == 12 and last["judge_cost"] == pytest.approx(0.12)
    assert not (out / "resume_state").exists()


@pytest.mark.slow
def test_ctrl_c_stops_online_dpo_at_the_steps_end_and_a_re_run_continues(
    tiny: Path, tmp_path: Path, fault_server: FaultServer
) -> None:
    """Ctrl-C (SIGINT to a real `cai-kit train online-dpo`) while step 2 waits on the judge: the
    step finishes, the 2 finished steps are saved with what a re-run needs, exit 130; the same
    command then trains steps 3-4 only, and no verdict is paid twice. (Before: KeyboardInterrupt
    went straight up, nothing was saved, and the CLI's "re-run to resume" was untrue.)"""
    import os
    import subprocess
    import sys

    fault_server.responder = prefers_shorter
    fault_server.report_cost = 0.01
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi\nSay bye\n")
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "cai_kit", "train", "online-dpo", str(prompts), "--model", f"hf:{tiny}",
           "--judge", "j", "--judge-api-base", fault_server.base_url, "--out", str(out), "--batch-size", "2",
           "--max-new-tokens", "4", "--lr", "1e-3", "--max-retries", "0", "--steps", "4",
           "--price", "0,2500", "--concurrency", "1"]  # fmt: skip
    code, output = ctrl_c_while_held(cmd, fault_server, paid=6)  # in step 2
    assert code == 130, output[-3000:]
    assert "Interrupted (Ctrl-C) at the end of a step. The 2 finished step(s) are saved" in output
    assert "Re-run the same command: training continues from step 3 of 4." in output
    assert (out / "resume_state").is_dir() and fault_server.paid == 8

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=os.environ)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "training continues from step 3 of 4" in again.stdout + again.stderr
    logged = json.loads((out / "log_history.json").read_text())
    assert [h["step"] for h in logged] == [1, 2, 3, 4]
    assert fault_server.paid == 16  # 4 steps x 4 verdicts, none paid twice
    assert logged[-1]["judge_calls"] == 16 and logged[-1]["judge_cost"] == pytest.approx(0.16)
    assert not (out / "resume_state").exists()
