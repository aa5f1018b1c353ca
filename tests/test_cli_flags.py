"""The job flags are declared once (`cai_kit.cli.common`) and no job command drifts from them:
every command that takes one engine flag takes them all (eval once lacked them, and `train
ppo|grpo` lacked `--price`)."""

from __future__ import annotations

from typing import Any

import typer

from cai_kit.cli.common import ENGINE_KEYS
from cai_kit.cli.main import app

# Commands that call a model outside a job and so take a deliberate subset (the pipeline: only
# --max-cost, the cap of all its stages together; its stages' flags come from the recipe).
PARTIAL = {"chat", "serve", "pipeline"}
# Flags that only make sense where calls can go to a provider's Batch API.
BATCH_ONLY = {"batch_api", "batch_deadline"}
# Trainers call a judge through the engine but are no data job: no dry run, and their own output.
TRAINER_EXEMPT = {"dry_run", "quiet"}
# Only where a command has a judge apart from its own model; elsewhere --reasoning-effort is all.
ONE_MODEL = {"generate", "revise", "judge", "train ppo", "train grpo", "train online-dpo"}


def _commands(group: Any, prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    if hasattr(group, "commands"):  # a group (typer's own click types: no isinstance check)
        for name, sub in group.commands.items():
            found.update(_commands(sub, f"{prefix} {name}".strip()))
    else:
        found[prefix] = group
    return found


def test_both_rl_trainers_take_the_same_reward_flags() -> None:
    commands = _commands(typer.main.get_command(app))
    reward = {"reward_model", "reward_judge", "judge_api_base", "judge_reward", "max_judge_failures",
              "reward", "rubric_combine", "python_reward", "python_reward_weight"}  # fmt: skip
    for name in ("train ppo", "train grpo"):
        assert reward <= {p.name for p in commands[name].params}, name
    # --reward group ranks a prompt's completions together: only GRPO has such groups
    assert "group_repeats" in {p.name for p in commands["train grpo"].params}


def test_every_job_command_takes_every_engine_flag() -> None:
    commands = _commands(typer.main.get_command(app))
    jobs = {
        name: {p.name for p in cmd.params}
        for name, cmd in commands.items()
        if name not in PARTIAL and {p.name for p in cmd.params} & {"max_cost", "concurrency"}
    }
    data_jobs = {"generate", "revise", "prefs", "judge", "eval winrate", "eval harmlessness",
                 "eval rubric", "constitution infer", "prompts expand"}  # fmt: skip
    assert data_jobs | {"train ppo", "train grpo", "train online-dpo"} <= set(jobs)
    assert data_jobs <= {n for n, params in jobs.items() if "batch_api" in params}
    missing = {}
    for name, params in jobs.items():
        exempt = BATCH_ONLY | (TRAINER_EXEMPT if name.startswith("train ") else set())
        exempt |= {"judge_reasoning_effort"} if name in ONE_MODEL else set()
        if lacking := sorted(set(ENGINE_KEYS) - exempt - params):
            missing[name] = lacking
    assert not missing, missing


def test_every_job_command_documents_its_exit_codes() -> None:
    commands = _commands(typer.main.get_command(app))
    jobs = ["generate", "revise", "prefs", "judge", "eval winrate", "eval harmlessness",
            "eval rubric", "constitution infer", "prompts expand", "retry-failed", "pipeline"]  # fmt: skip
    missing = [n for n in jobs if "Exit codes: 0 every row done" not in (commands[n].epilog or "")]
    assert not missing, missing
