"""Every command block of README.md and docs/*.md runs, so the docs cannot drift from the tool.

How a block is read and marked: tests/docs_blocks.py. Two tests per doc file:
- `test_commands_parse` (fast): every cai-kit command of every block, marked skip or not,
  parses against the real CLI (subcommands, flags, their types, required options).
- `test_python_blocks_compile` (fast) and `test_python_blocks_run` (slow): every ```python
  block compiles, and each one not marked skip runs as a script (`python -c`) in a fresh
  directory, exiting 0.
- `test_blocks_run` (slow): the file's blocks, in order, in one fresh directory (with the
  repo's `examples/` and a `prompts.jsonl` placeholder), each cai-kit command as a
  `python -m cai_kit` subprocess with no API key in its environment, shortened
  (`docs_blocks.shorten`); a block marked `server` talks to the scripted server
  (tests/fixtures/fault_server.py), one marked `dry-run` calls nothing. A command must exit
  as its block says (`# exits N`, else 0).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from tests.docs_blocks import (
    DOC_FILES,
    REPO,
    Block,
    Command,
    parse_blocks,
    shorten,
    to_server,
    with_dry_run,
)
from tests.fixtures.fault_server import default_reply

# Provider variables the scripted server stands in for (a `server` block); a dummy key only.
_PROVIDER_BASES = ["OPENAI", "OPENROUTER", "TOGETHER", "GROQ", "FIREWORKS", "DEEPSEEK", "MISTRAL"]


def _cli() -> Any:
    from cai_kit.cli.main import app

    return typer.main.get_command(app)


def parse_error(argv: list[str]) -> str | None:
    """Why the CLI would refuse argv before doing anything (unknown command or flag, a bad
    value, a missing required option), or None. (typer's own copy of click: duck-typed.)"""
    cmd = _cli()
    ctx = None
    args, name = list(argv), "cai-kit"
    try:
        while hasattr(cmd, "get_command"):  # a group
            ctx = cmd.context_class(cmd, info_name=name, parent=ctx)
            if not args:
                return f"`{name}` needs a subcommand"
            cmd.parse_args(
                ctx, list(args)
            )  # as the group reads it (`review RUN` is `review open RUN`)
            args = [*(getattr(ctx, "_protected_args", None) or ctx.protected_args), *ctx.args]
            name = args.pop(0)
            sub = cmd.get_command(ctx, name)
            if sub is None:
                return f"no command {name!r}"
            cmd = sub
        with cmd.make_context(name, args, parent=ctx):
            return None
    except Exception as exc:
        if hasattr(exc, "format_message"):  # click's UsageError, BadParameter, MissingParameter
            return str(exc.format_message())
        raise


@pytest.mark.parametrize("doc", DOC_FILES)
def test_commands_parse(doc: str) -> None:
    problems = []
    for block in parse_blocks(doc):
        for c in block.cai_kit:
            why = parse_error(c.argv or [])
            if why:
                problems.append(f"{doc}:{c.line}: {c.text}\n    {why}")
        if block.mode != "skip" and any(c.launcher for c in block.commands):
            problems.append(
                f"{block.where}: a launcher (torchrun / accelerate) runs here: mark the block "
                "`<!-- docs-test: skip (why) -->` and test the command another way"
            )
    assert not problems, "\n".join(problems)


def test_the_parser_refuses_a_flag_that_does_not_exist() -> None:
    assert parse_error(["revise", "p.jsonl", "--out", "r", "--max-stepz", "1"])
    assert parse_error(["train", "dpo", "d", "--loss-type", "ipo"])
    assert parse_error(["export", "dpo", "runs/pf"])  # --out is required
    assert parse_error(["nonsense"])
    assert parse_error(["train", "sft", "d", "--out", "o", "--max-steps", "fifty"])
    assert parse_error(["revise", "p.jsonl", "--out", "r", "--limit", "3"]) is None


def test_commands_are_shortened_not_changed() -> None:
    argv = ["train", "sft", "runs/sft", "--model", "local", "--out", "m", "--max-steps", "50"]
    assert shorten(argv) == [*argv[:-1], "1"]
    assert shorten(["train", "dpo", "--config", "c.yaml"])[-2:] == ["--max-steps", "1"]
    assert shorten(["revise", "p", "--limit", "200", "--out", "r"]) == ["revise", "p", "--limit", "4", "--out", "r"]  # fmt: skip
    assert shorten(["revise", "p", "--limit", "3", "--out", "r"]) == ["revise", "p", "--limit", "3", "--out", "r"]  # fmt: skip
    assert shorten(["revise", "p", "--out", "r"])[-2:] == ["--limit", "2"]
    assert shorten(["revise", "p", "--out", "r", "--dry-run"]) == ["revise", "p", "--out", "r", "--dry-run"]  # fmt: skip


# --- running -----------------------------------------------------------------------------


def _workdir(tmp: Path) -> Path:
    work = tmp / "work"
    work.mkdir()
    (work / "examples").symlink_to(REPO / "examples", target_is_directory=True)
    # the docs' placeholder for "your prompt file"
    shutil.copy(REPO / "examples" / "prompts" / "sample.jsonl", work / "prompts.jsonl")
    return work


def _env(tmp: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith(("_API_KEY", "_TOKEN", "_BASE_URL", "_API_BASE")) and k != "HF_TOKEN"
    }
    env.update(
        PYTHONPATH=str(REPO), CAI_KIT_CACHE_DIR=str(tmp / "cache"), PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
        LITELLM_LOCAL_MODEL_COST_MAP="True", TOKENIZERS_PARALLELISM="false", WANDB_DISABLED="true",
        TQDM_DISABLE="1", PYTHONWARNINGS="ignore", COLUMNS="120",
    )  # fmt: skip
    return env


def _server_env(env: dict[str, str], base_url: str) -> dict[str, str]:
    env = dict(env)
    for name in _PROVIDER_BASES:
        env[f"{name}_BASE_URL"] = base_url
        env[f"{name}_API_KEY"] = "sk-docs-test"  # the scripted server's, not a real key
    env["TOGETHERAI_API_KEY"] = "sk-docs-test"
    return env


def _run(block: Block, c: Command, work: Path, env: dict[str, str], base_url: str | None) -> str:
    argv = shorten(c.argv or [])
    if block.mode == "dry-run":
        argv = with_dry_run(argv)
    if block.mode == "server":
        assert base_url is not None
        argv = to_server(argv, base_url)
        env = _server_env(env, base_url)
    proc = subprocess.run(
        [sys.executable, "-m", "cai_kit", *argv], cwd=work, env=env, capture_output=True,
        text=True, timeout=1800,
    )  # fmt: skip
    shown = " ".join(argv)
    out = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == c.exits, (
        f"{block.file}:{c.line}: `cai-kit {shown}` exited {proc.returncode}, "
        f"the doc expects {c.exits}:\n{out}"
    )
    tail = "".join(f"\n    {line}" for line in out.splitlines()[-12:])
    return f"{block.file}:{c.line} [{block.mode}] $ cai-kit {shown}  (exit {proc.returncode}){tail}"


def _runs(doc: str) -> bool:
    return any(b.mode != "skip" and b.cai_kit for b in parse_blocks(doc))


def _judge_like(body: dict[str, Any], rng: random.Random) -> str | None:
    """The scripted server as a model that follows the answer format of a judge prompt (A or
    B, Yes or No, a 1-10 rating); anything else gets the server's usual reply."""
    asked = str(body["messages"][-1].get("content") or "")
    if "A or B" in asked or "Answer: A" in asked:
        return rng.choice(["A", "B"])
    if "Yes or No" in asked:
        return rng.choice(["Yes", "No"])
    if "to 10" in asked:
        return str(rng.randint(1, 10))
    return default_reply(body, rng)


@pytest.mark.slow
@pytest.mark.parametrize("doc", [d for d in DOC_FILES if _runs(d)])
def test_blocks_run(doc: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    blocks = parse_blocks(doc)
    base_url = None
    if any(b.mode == "server" for b in blocks):
        server = request.getfixturevalue("fault_server")
        server.responder = _judge_like
        base_url = server.base_url
    work, env = _workdir(tmp_path), _env(tmp_path)
    for block in blocks:
        if block.mode == "skip":
            continue
        for c in block.cai_kit:
            print(_run(block, c, work, env, base_url))


def _python_blocks(doc: str) -> list[Block]:
    return [b for b in parse_blocks(doc) if b.lang == "python"]


@pytest.mark.parametrize("doc", DOC_FILES)
def test_python_blocks_compile(doc: str) -> None:
    for block in _python_blocks(doc):
        compile(block.code, block.where, "exec")  # a SyntaxError names the file and line


@pytest.mark.slow
@pytest.mark.parametrize("doc", [d for d in DOC_FILES if any(b.mode != "skip" for b in _python_blocks(d))])  # fmt: skip
def test_python_blocks_run(doc: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    blocks = [b for b in _python_blocks(doc) if b.mode != "skip"]
    base_url = None
    if any(b.mode == "server" for b in blocks):
        server = request.getfixturevalue("fault_server")
        server.responder = _judge_like
        base_url = server.base_url
    work, env = _workdir(tmp_path), _env(tmp_path)
    for block in blocks:
        run_env = _server_env(env, base_url) if block.mode == "server" and base_url else env
        proc = subprocess.run(
            [sys.executable, "-c", block.code], cwd=work, env=run_env, capture_output=True,
            text=True, timeout=1800,
        )  # fmt: skip
        out = (proc.stdout + proc.stderr)[-3000:]
        assert proc.returncode == 0, (
            f"{block.where}: the python block exited {proc.returncode}:\n{out}"
        )
        print(
            f"{block.where} [{block.mode}] python: exit 0"
            + "".join(f"\n    {x}" for x in out.splitlines()[-6:])
        )


def _yaml_blocks(doc: str) -> list[tuple[int, str]]:
    lines = (REPO / doc).read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```yaml":
            start, i = i + 1, i + 1
            while lines[i].strip() != "```":
                i += 1
            out.append((start, "\n".join(lines[start:i])))
        i += 1
    return out


def test_the_recipe_reference_in_docs_is_a_valid_recipe() -> None:
    """docs/pipeline.md's annotated recipe lists every field: it must validate as written."""
    from cai_kit.pipeline.recipe import parse_recipe

    blocks = [(n, text) for n, text in _yaml_blocks("docs/pipeline.md") if "prompts:" in text]
    assert blocks
    for n, text in blocks:
        recipe = parse_recipe(text, f"docs/pipeline.md:{n}")
        assert recipe.prefs.no_pairs == "revisions" and recipe.prefs.include_ties is False


def test_the_training_recipe_example_has_only_known_options() -> None:
    from cai_kit.train.run import resolve_options

    opts = resolve_options(REPO / "examples" / "recipes" / "dpo.yaml", {}, [])
    assert opts.data == "runs/dpo_data" and opts.eval_fraction == 0.1


def test_the_exit_code_the_docs_give_a_max_cost_stop_is_the_one_it_exits_with() -> None:
    """docs/backends.md said a --max-cost stop exits 2 (a usage error); it exits 4 (issue 29)."""
    import re

    from cai_kit.engine.jobs import EXIT_STOPPED

    found = []
    for doc in DOC_FILES:
        text = (REPO / doc).read_text(encoding="utf-8")
        for m in re.finditer(r"exit(?:s| code)? (\d)\b", text):
            if "max-cost" in text[max(0, m.start() - 300) : m.start()]:
                found.append((doc, int(m.group(1))))
    assert found and all(code == EXIT_STOPPED for _, code in found), found
