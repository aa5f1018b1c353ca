"""A newcomer's path that never breaks (issue 25), through the CLI:

- exit codes tell the truth (0 every row done, 1 no row done / error, 2 usage, 3 some rows
  failed, 4 stopped by --max-cost), on every job command;
- `eval winrate` warns when ties dominate, by the pipeline's one rule;
- every `--dry-run` works without keys and contacts nothing, and names the key a real run needs;
- a message that suggests a command suggests one that works, from any directory;
- outside a terminal, progress is whole plain lines;
- the pipeline's report.md links images that exist.
"""

from __future__ import annotations

import json
import random
import re
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from tests.fixtures.fault_server import FaultServer, default_reply

UNREACHABLE = "http://127.0.0.1:9/v1"  # the discard port: nothing listens, connect is refused


def _prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(n)))
    return path


def _invoke(monkeypatch: pytest.MonkeyPatch, args: list[str]):  # type: ignore[no-untyped-def]
    """Run the CLI as a shell would (sys.argv set: the manifest keeps a replayable argv)."""
    monkeypatch.setattr(sys, "argv", ["cai-kit", *args])
    return CliRunner().invoke(app, args)


def _job(name: str, tmp_path: Path, base: str) -> list[str]:
    """One invocation of each job command, every model at `base`."""
    prompts = str(_prompts(tmp_path / "p.jsonl", 2))
    out = ["--out", str(tmp_path / "o"), "--max-retries", "0", "--max-tokens", "8"]
    if name == "generate":
        return ["generate", prompts, "-m", "m", "--api-base", base, *out]
    if name == "revise":
        return ["revise", prompts, "-m", "m", "--api-base", base, *out]
    if name == "prefs":
        return ["prefs", prompts, "-p", "pol", "-j", "jud", "--api-base", base, "--mode", "letter", *out]  # fmt: skip
    if name == "judge":
        pairs = tmp_path / "pairs.jsonl"
        pairs.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"}) + "\n" for i in range(2)))  # fmt: skip
        return ["judge", str(pairs), "-j", "jud", "--api-base", base, "--mode", "letter", *out[:-2]]  # fmt: skip
    if name == "eval winrate":
        return ["eval", "winrate", "--prompts", prompts, "-m", "good", "-b", "base", "-j", "jud",
                "--api-base", base, "--mode", "letter", *out]  # fmt: skip
    assert name == "eval harmlessness"
    return ["eval", "harmlessness", "--prompts", prompts, "-m", "good", "-j", "jud", "--api-base", base, *out]  # fmt: skip


JOBS = ["generate", "revise", "prefs", "judge", "eval winrate", "eval harmlessness"]


# --- 1. exit codes ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", JOBS)
def test_a_job_whose_every_row_failed_exits_1_after_its_summary(name: str, tmp_path: Path) -> None:
    r = CliRunner().invoke(app, [*_job(name, tmp_path, UNREACHABLE), "-q"])
    assert r.exit_code == 1, r.output
    assert re.search(r"\b0 done; [1-9]\d* failed", r.output), r.output  # the summary is printed


def test_harmlessness_with_every_judge_answer_unparsed_exits_1(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.responder = lambda body, rng: "Maybe." if body["model"] == "jud" else "Fine."
    r = CliRunner().invoke(app, [*_job("eval harmlessness", tmp_path, fault_server.base_url), "-q"])
    assert r.exit_code == 1 and "0 done; 2 failed" in r.output, r.output


def test_some_rows_failed_exits_3_and_all_done_exits_0(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.script = ["401"]  # the first call is refused, the others answer
    args = [*_job("generate", tmp_path, fault_server.base_url), "--concurrency", "1", "-q"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 3 and "1 done; 1 failed" in r.output, r.output
    r = CliRunner().invoke(app, args)  # the re-run finishes it
    assert r.exit_code == 0 and "1 done; 0 failed; 1 already done" in r.output, r.output


def test_exit_codes_are_documented_in_help_and_readme() -> None:
    for cmd in (["generate"], ["eval", "winrate"], ["retry-failed"], ["pipeline"], []):
        out = CliRunner().invoke(app, [*cmd, "--help"]).output
        assert "Exit codes" in out and "3" in out and "4" in out, cmd
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "Exit codes" in readme


# --- 2. ties ----------------------------------------------------------------------------------


def test_eval_winrate_warns_when_every_comparison_is_a_tie(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    # a judge that always answers "A": the model wins one order and loses the other, a tie
    fault_server.responder = lambda body, rng: "A" if body["model"] == "jud" else default_reply(body, rng)  # fmt: skip
    r = CliRunner().invoke(app, [*_job("eval winrate", tmp_path, fault_server.base_url), "-q"])
    assert r.exit_code == 0, r.output
    assert "win rate 0.500" in r.output and "2 ties" in r.output
    flat = " ".join(r.output.split())
    assert "The judge tied on 2 of 2 comparisons" in flat, r.output
    assert "The judge tied on 2 of 2 comparisons" in (tmp_path / "o" / "report.md").read_text()


# --- 3. dry runs without keys -----------------------------------------------------------------

KEYED = {
    "openai/gpt-4o-mini": "OPENAI_API_KEY",
    "anthropic/claude-3-5-haiku-20241022": "ANTHROPIC_API_KEY",
    "groq/llama-3.1-8b-instant": "GROQ_API_KEY",
}


def _dry(name: str, model: str, tmp_path: Path) -> list[str]:
    prompts = str(_prompts(tmp_path / "p.jsonl", 2))
    out = ["--out", str(tmp_path / "o"), "--dry-run"]
    if name == "generate":
        return ["generate", prompts, "-m", model, *out]
    if name == "revise":
        return ["revise", prompts, "-m", model, "--rounds", "2", *out]
    if name == "prefs":
        return ["prefs", prompts, "-p", model, "-j", model, *out]
    if name == "judge":
        pairs = tmp_path / "pairs.jsonl"
        pairs.write_text(json.dumps({"prompt": "q", "chosen": "yes", "rejected": "no"}) + "\n")
        return ["judge", str(pairs), "-j", model, *out]
    if name == "eval winrate":
        return ["eval", "winrate", "--prompts", prompts, "-m", model, "-b", "local", "-j", model, *out]  # fmt: skip
    if name == "eval rubric":
        return ["eval", "rubric", "--prompts", prompts, "-m", model, "-b", "local", "-j", model, *out]  # fmt: skip
    if name == "constitution infer":
        pairs = tmp_path / "labelled.jsonl"
        pairs.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": f"short {i}",
                                             "rejected": f"a much longer answer {i}"}) + "\n"
                                 for i in range(8)))  # fmt: skip
        return ["constitution", "infer", str(pairs), "-m", model, "--out", str(tmp_path / "o.yaml"),
                "--work", str(tmp_path / "o"), "--dry-run"]  # fmt: skip
    if name == "prompts expand":
        return ["prompts", "expand", prompts, "-m", model, "--n", "4", *out]
    return ["eval", "harmlessness", "--prompts", prompts, "-m", model, "-j", model, *out]


@pytest.fixture
def no_keys_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for var in list(os.environ):
        if var.endswith(("_API_KEY", "_TOKEN", "_BASE_URL", "_API_BASE")):
            monkeypatch.delenv(var)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a dry run tried to connect: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("batch", [False, True], ids=["sync", "batch-api"])
@pytest.mark.parametrize("model", sorted(KEYED))
@pytest.mark.parametrize("name", [*JOBS, "eval rubric", "constitution infer", "prompts expand"])
def test_every_dry_run_works_without_keys_and_names_the_key_needed(
    name: str, model: str, batch: bool, tmp_path: Path, no_keys_no_network: None
) -> None:
    args = [*_dry(name, model, tmp_path), *(["--batch-api"] if batch else [])]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "nothing was called" in r.output
    assert f"{KEYED[model]} (not set)" in r.output, r.output
    assert not (tmp_path / "o" / "manifest.json").exists()


# --- 4. messages that suggest a command -------------------------------------------------------


def test_no_batch_api_suggests_retry_failed_sync_with_the_run_path_and_it_works(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "o"
    args = ["generate", str(_prompts(tmp_path / "p.jsonl", 2)), "-m", "m", "--api-base",
            fault_server.base_url + "/no-batches", "--out", str(out), "--batch-api",
            "--cache-path", str(tmp_path / "c"), "-q"]  # fmt: skip
    r = _invoke(monkeypatch, args)
    assert r.exit_code == 1 and "0 done; 2 failed" in r.output, r.output
    flat = " ".join(r.output.split())
    assert f"cai-kit retry-failed {out} --sync" in flat, r.output
    assert "Re-run" not in flat, r.output  # a re-run with --batch-api would fail again
    # the suggestion works (its /no-batches base answers chat completions: the rows finish)
    retry = CliRunner().invoke(app, ["retry-failed", str(out), "--sync"])
    assert retry.exit_code == 0
    rows = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert {x["status"] for x in {r["id"]: r for r in rows}.values()} == {"ok"}


def test_retry_failed_works_from_any_directory(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    _prompts(start / "p.jsonl", 2)
    monkeypatch.chdir(start)  # relative paths, as a newcomer types them
    fault_server.script = ["401"]
    args = ["generate", "p.jsonl", "-m", "m", "--api-base", fault_server.base_url, "--out",
            "runs/g", "--concurrency", "1", "--cache-path", "c.sqlite", "-q"]  # fmt: skip
    r = _invoke(monkeypatch, args)
    assert r.exit_code == 3, r.output
    monkeypatch.chdir(elsewhere)
    r = CliRunner().invoke(app, ["retry-failed", str(start / "runs" / "g")])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (start / "runs" / "g" / "generations.jsonl").read_text().splitlines()]  # fmt: skip
    assert {x["status"] for x in {r["id"]: r for r in rows}.values()} == {"ok"}
    assert not (elsewhere / "runs").exists()  # nothing written where the retry was typed


def test_max_cost_with_an_unknown_price_says_so_and_names_price_flag(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    args = [*_job("generate", tmp_path, fault_server.base_url), "--max-cost", "0.01", "-q",
            "--cache-path", str(tmp_path / "c")]  # fmt: skip
    r = CliRunner().invoke(app, args)
    flat = " ".join(r.output.split())
    assert r.exit_code == 4, r.output
    assert "reached: spent $0.0000" not in flat, r.output
    assert "no price is known for m" in flat and "--price IN,OUT" in flat, r.output


# --- 5. plain progress outside a terminal -----------------------------------------------------

PROGRESS = re.compile(
    r"^generate: \d+/\d+ rows \| failed \d+ \| [\d.]+ calls/s \| \d+ tok \| "
    r"(\$\d+\.\d{4}|cost unknown \(\d+ calls? with no price\)) \| \d+:\d\d:\d\d$"
)  # an unpriced server (as here) is "cost unknown", never $0.0000 (tests/test_spend.py)


def test_progress_outside_a_terminal_is_whole_plain_lines(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cai_kit.engine.jobs as jobs

    monkeypatch.setattr(jobs, "PLAIN_PROGRESS_EVERY_S", 0.01, raising=False)
    fault_server.latency_s = 0.02
    args = [*_job("generate", tmp_path, fault_server.base_url), "--concurrency", "1"]
    args[1] = str(_prompts(tmp_path / "many.jsonl", 12))
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    progress = [x for x in lines if x.startswith("generate")]
    assert progress and all(PROGRESS.match(x) for x in progress), r.output
    assert progress[-1].startswith("generate: 12/12 rows")  # the last line is the end
    # no line is the tail of a wrapped one (old: "tok | $0.0100" alone on the next line)
    assert not [x for x in lines if re.match(r"^\s*(tok|\$|\|)", x)], r.output


# --- 6. report.md's images --------------------------------------------------------------------


def test_pipeline_report_links_only_images_that_exist(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    from cai_kit.pipeline.recipe import load_recipe
    from cai_kit.pipeline.report import write_report
    from cai_kit.pipeline.split import split_prompts

    prompts = _prompts(tmp_path / "p.jsonl", 6)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\nprompts: {prompts}\nlimit: 6\n")
    run = tmp_path / "run"
    fault_server.responder = lambda body, rng: random.Random(str(body)).choice("AB") if body["model"] == "jud" else default_reply(body, rng)  # fmt: skip
    r = CliRunner().invoke(app, ["eval", "winrate", "--prompts", str(prompts), "-m", "good", "-b", "base", "-j", "jud",
                                 "--api-base", fault_server.base_url, "--mode", "letter", "--out", str(run / "eval"), "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    r_ = load_recipe(recipe)
    report = write_report(r_, run, ["eval"], split_prompts(r_))
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())
    assert links, report.read_text()
    for link in links:
        assert (report.parent / link).is_file(), link
    eval_links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (run / "eval" / "report.md").read_text())
    assert eval_links and all((run / "eval" / link).is_file() for link in eval_links)


@pytest.mark.slow  # (several seconds: the full run's, not the fast tier's)
def test_a_pipeline_stage_whose_rows_failed_lets_the_pipeline_go_on_and_an_error_stops_it(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """Every verdict failed (exit 1, the 135M judge often gives none) is a finished stage with
    failed rows: the pipeline goes on to the implicit-reward stages. A usage error stops it."""
    import io

    from cai_kit.errors import ConfigError
    from cai_kit.pipeline.run import Stage, run_stage

    eval_args = _job("eval winrate", tmp_path, fault_server.base_url)  # judge: no letter
    partial = run_stage(Stage("eval", [*eval_args, "-q"]), tmp_path, io.StringIO())[2]
    assert partial and "0 done; 2 failed" in (tmp_path / "logs" / "eval.log").read_text()
    # an error before the job began (no such prompts file): its manifest is the old run's
    eval_args[eval_args.index("--prompts") + 1] = str(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="Stage eval failed"):
        run_stage(Stage("eval", [*eval_args, "-q"]), tmp_path, io.StringIO())
