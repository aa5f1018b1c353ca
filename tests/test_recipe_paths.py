"""Paths in a recipe are read from the recipe's folder, not from wherever `cai-kit` runs.

Every test runs `cai-kit pipeline ... --dry-run` (the cheapest real check: the recipe is loaded,
its prompts read and split, the constitution loaded for the cost estimate, every stage's
command built) from a current directory that is NOT the recipe's folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.constitution import shipped_dir
from cai_kit.pipeline.recipe import load_recipe
from cai_kit.pipeline.run import stages

ROOT = Path(__file__).parent.parent
PROMPTS = ROOT / "examples" / "red_team_prompts.jsonl"
RECIPES = ROOT / "examples" / "recipes"


def _pipeline(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["pipeline", *args])


def _stage_argv(output: str, stage: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(f"[todo] {stage}: "))


def _flag(argv: str, flag: str) -> str:
    words = argv.split()
    return words[words.index(flag) + 1]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project folder: a recipe with its prompts, eval prompts and constitution beside
    it, all written as paths relative to the recipe."""
    proj = tmp_path / "project"
    (proj / "data").mkdir(parents=True)
    shutil.copy(PROMPTS, proj / "prompts.jsonl")
    rows = PROMPTS.read_text(encoding="utf-8").splitlines()
    (proj / "data" / "held.jsonl").write_text("\n".join(rows[:4]) + "\n", encoding="utf-8")
    shutil.copy(Path(str(shipped_dir().joinpath("harmless.yaml"))), proj / "mine.yaml")
    (proj / "recipe.yaml").write_text(
        "name: mine\nprompts: prompts.jsonl\neval_prompts: ./data/held.jsonl\n"
        "constitution: mine.yaml\nlimit: 6\nstudent: {model: local}\n",
        encoding="utf-8",
    )
    return proj


def test_relative_paths_resolve_against_the_recipe_folder_from_any_cwd(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # the recipe named by an absolute path, then by a relative one from another folder
    for recipe in (str(project / "recipe.yaml"), "../project/recipe.yaml"):
        r = _pipeline(recipe, "--out", "run", "--dry-run")
        assert r.exit_code == 0, r.output
        assert "Training prompts: 6; eval prompts: 4" in r.output
        # the resolved paths are printed, and the stages get them
        assert f"prompts: {project / 'prompts.jsonl'}" in r.output
        assert f"eval_prompts: {project / 'data' / 'held.jsonl'}" in r.output
        assert f"constitution: {project / 'mine.yaml'}" in r.output
        assert f"run directory: {elsewhere / 'run'}" in r.output  # --out: the current directory
        assert _flag(_stage_argv(r.output, "revise"), "--constitution") == str(project / "mine.yaml")  # fmt: skip
    assert not (project / "run").exists() and not (elsewhere / "run").exists()  # dry run


def test_absolute_and_home_paths_work_and_shipped_constitution_names_stay_shipped(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(project / "prompts.jsonl", home / "p.jsonl")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    (project / "recipe.yaml").write_text(
        f"name: x\nprompts: ~/p.jsonl\neval_prompts: {project / 'data' / 'held.jsonl'}\n"
        "constitution: harmless\n",
        encoding="utf-8",
    )
    r = load_recipe(project / "recipe.yaml")
    assert r.prompts == str(home / "p.jsonl")
    assert r.eval_prompts == str(project / "data" / "held.jsonl")
    assert r.constitution == "harmless"  # the shipped one, whatever folder the recipe is in
    out = _pipeline(str(project / "recipe.yaml"), "--out", "run", "--dry-run").output
    assert "constitution: harmless (shipped)" in out
    assert _flag(_stage_argv(out, "revise"), "--constitution") == "harmless"


def test_a_student_checkpoint_path_resolves_against_the_recipe_folder(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "ckpt").mkdir()
    monkeypatch.chdir(tmp_path)
    (project / "recipe.yaml").write_text(
        "name: x\nprompts: prompts.jsonl\nstudent: {model: 'hf:ckpt'}\n", encoding="utf-8"
    )
    r = load_recipe(project / "recipe.yaml")
    assert r.student.model == f"hf:{project / 'ckpt'}"
    plan = {s.name: s.argv for s in stages(r, tmp_path / "run", 4, 2)}
    assert _flag(" ".join(plan["train-sft"]), "--model") == f"hf:{project / 'ckpt'}"


def test_a_missing_prompts_file_is_one_sentence_naming_recipe_field_and_resolved_path(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = project / "recipe.yaml"
    recipe.write_text("name: x\nprompts: nope.jsonl\n", encoding="utf-8")
    r = _pipeline(str(recipe), "--out", "run", "--dry-run")
    assert r.exit_code == 1
    problem = [line for line in r.output.splitlines() if "nope.jsonl" in line]
    assert len(problem) == 1, r.output
    assert problem[0].strip().startswith(f"{recipe}:2: prompts: no file at {project / 'nope.jsonl'}")  # fmt: skip
    assert "Traceback" not in r.output


def test_a_path_that_only_exists_from_the_cwd_is_refused_with_the_path_to_write(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old behaviour (read from the current directory) is never a silent fallback."""
    sub = project / "recipes"
    sub.mkdir()
    recipe = sub / "r.yaml"
    recipe.write_text("name: x\nprompts: prompts.jsonl\nconstitution: mine.yaml\n", encoding="utf-8")  # fmt: skip
    monkeypatch.chdir(project)  # where both files do sit
    r = _pipeline(str(recipe), "--out", "run", "--dry-run")
    assert r.exit_code == 1, r.output
    assert f"{recipe}:2: prompts: no file at {sub / 'prompts.jsonl'}" in r.output
    assert "write ../prompts.jsonl" in r.output
    assert f"{recipe}:3: constitution: no file at {sub / 'mine.yaml'}" in r.output
    assert "2 problem(s)" in r.output


def test_a_misspelt_constitution_name_lists_the_shipped_ones(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = project / "recipe.yaml"
    recipe.write_text("name: x\nprompts: prompts.jsonl\nconstitution: harmles\n")
    r = _pipeline(str(recipe), "--out", "run", "--dry-run")
    assert r.exit_code == 1
    assert f"{recipe}:3: constitution: not a shipped name (" in r.output
    assert "harmless" in r.output and f"no file at {project / 'harmles'}" in r.output
    recipe.write_text("name: x\nprompts: prompts.jsonl\nconstitution: harmless.yaml\n")
    r = _pipeline(str(recipe), "--out", "run", "--dry-run")
    assert f"{recipe}:3: constitution: no file at {project / 'harmless.yaml'}" in r.output
    assert "the shipped one is written `harmless`" in r.output


@pytest.mark.parametrize("name", ["local_tiny", "hosted_teacher", "server_teacher"])
def test_shipped_recipes_work_from_the_repo_root_and_from_elsewhere(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = []
    for cwd, recipe in ((ROOT, f"examples/recipes/{name}.yaml"), (tmp_path, str(RECIPES / f"{name}.yaml"))):  # fmt: skip
        monkeypatch.chdir(cwd)
        r = _pipeline(recipe, "--out", str(tmp_path / "run"), "--dry-run")
        assert r.exit_code == 0, r.output
        assert f"prompts: {PROMPTS}" in r.output
        results.append(r.output)
    assert results[0] == results[1]  # the same plan, whichever folder it was run from


def test_copied_recipe_with_its_prompts_reads_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copy a shipped recipe elsewhere, put a (shorter) prompts file beside it, point the
    recipe at it: the copy is what is read, even run from the repository root."""
    folder = tmp_path / "copy"
    folder.mkdir()
    rows = [json.loads(x) for x in PROMPTS.read_text(encoding="utf-8").splitlines()[:8]]
    (folder / "p.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    text = (RECIPES / "local_tiny.yaml").read_text(encoding="utf-8")
    lines = [("prompts: p.jsonl" if x.startswith("prompts:") else x) for x in text.splitlines()]
    (folder / "tiny.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.chdir(ROOT)
    r = _pipeline(str(folder / "tiny.yaml"), "--out", str(tmp_path / "run"), "--dry-run")
    assert r.exit_code == 0, r.output
    assert "Training prompts: 6; eval prompts: 2" in r.output  # 8 prompts, a quarter held out
    assert f"prompts: {folder / 'p.jsonl'}" in r.output


def test_hf_specs_resolve_local_folders_and_keep_hub_names(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "ds").mkdir()
    (project / "teacher_ckpt").mkdir()
    monkeypatch.chdir(tmp_path)
    recipe = project / "recipe.yaml"
    recipe.write_text(
        "name: x\nprompts: hf:ds:train:text\neval_prompts: hf:Anthropic/hh-rlhf:test\n"
        "teacher: {model: 'hf:./teacher_ckpt'}\n",
        encoding="utf-8",
    )
    r = load_recipe(recipe)
    assert r.prompts == f"hf:{project / 'ds'}:train:text"  # a folder beside the recipe
    assert r.eval_prompts == "hf:Anthropic/hh-rlhf:test"  # a Hub name, untouched
    assert r.teacher is not None and r.teacher.model == f"hf:{project / 'teacher_ckpt'}"
    recipe.write_text("name: x\nprompts: hf:./gone\nstudent: {model: 'hf:~/nowhere'}\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    r2 = _pipeline(str(recipe), "--out", "run", "--dry-run")
    assert r2.exit_code == 1
    assert f"{recipe}:2: prompts: no dataset folder at {project / 'gone'}" in r2.output
    assert f"{recipe}:3: student.model: no checkpoint folder at {tmp_path / 'nowhere'}" in r2.output
