"""Constitutions: shipped files, line-accurate validation, sampling and hashing."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cai_kit.constitution import (
    ConstitutionError,
    list_constitutions,
    load_constitution,
    parse_constitution,
)

GOOD = """\
name: mini
version: 2
principles:
  - id: a
    critique: Find harm.
    revision: Remove harm.
  - id: b
    critique: Find lies.
    revision: Remove lies.
    judge: Which is more honest?
"""


REPO = Path(__file__).parent.parent


def test_shipped_constitutions_live_in_the_top_level_folder_users_edit() -> None:
    top = sorted(
        f.stem for f in (REPO / "constitutions").glob("*.yaml") if not f.stem.startswith("_")
    )
    assert top == list_constitutions()
    assert not (REPO / "cai_kit" / "constitutions").exists()
    assert (REPO / "constitutions" / "_template.yaml").is_file()
    assert "_template" not in list_constitutions()  # a starting point, not a constitution to use


def test_annotated_template_is_valid_and_commented() -> None:
    text = (REPO / "constitutions" / "_template.yaml").read_text()
    c = parse_constitution(text, "_template.yaml")
    assert c.principles and c.few_shot
    assert sum(line.lstrip().startswith("#") or " # " in line for line in text.splitlines()) >= 10


def test_balance_constitution_asks_both_less_harmful_and_less_evasive() -> None:
    c = load_constitution("helpful-harmless")
    questions = [p.judge_question.lower() for p in c.principles]
    assert any("less harmful" in q for q in questions)
    assert any("less evasive" in q for q in questions)
    refusal = [p for p in c.principles if "evasive" in p.judge_question.lower()]
    assert any("refus" in (p.critique + p.revision).lower() for p in refusal)


def test_shipped_constitutions_load_by_name() -> None:
    names = list_constitutions()
    assert {"harmless", "helpful-honest", "harmless-ko", "helpful-harmless"} <= set(names)
    assert len(load_constitution("harmless").principles) >= 12
    ko = load_constitution("harmless-ko")
    assert len(ko.principles) >= 8
    assert any("\uac00" <= ch <= "\ud7a3" for ch in ko.principles[0].critique)  # Hangul


def test_good_file_parses_and_judge_question_falls_back_to_critique() -> None:
    c = parse_constitution(GOOD)
    assert c.version == "2"
    assert c.get("b").judge_question == "Which is more honest?"
    assert "Find harm." in c.get("a").judge_question


def _problems(text: str) -> list[str]:
    with pytest.raises(ConstitutionError) as info:
        parse_constitution(text, "c.yaml")
    return [str(p) for p in info.value.problems]


def test_yaml_syntax_error_names_the_line() -> None:
    (msg,) = _problems("name: x\nprinciples:\n  - id: a\n    critique: [unclosed\n")
    assert msg.startswith("c.yaml:") and "yaml" in msg


def test_every_problem_is_reported_with_line_and_field() -> None:
    text = GOOD.replace("  - id: b\n", "  - id: a\n").replace(
        "    revision: Remove harm.\n", "    revision: '  '\n    colour: red\n"
    )
    problems = _problems(text)
    assert "c.yaml:3: principles[0].id" not in problems  # the first 'a' is fine
    assert any(p.startswith("c.yaml:8: principles[1].id: duplicate id 'a'") for p in problems)
    assert any(
        p.startswith("c.yaml:6: principles[0].revision: must not be empty") for p in problems
    )
    assert any(p.startswith("c.yaml:7: principles[0].colour: unknown key") for p in problems)


def test_missing_field_is_reported() -> None:
    problems = _problems("name: x\nprinciples:\n  - id: a\n    critique: c\n")
    assert problems == ["c.yaml:3: principles[0].revision: required field is missing"]


def test_sampling_is_reproducible_with_a_seed() -> None:
    c = load_constitution("harmless")
    a = [p.id for p in c.sample_principles(random.Random(7), "random", 6)]
    b = [p.id for p in c.sample_principles(random.Random(7), "random", 6)]
    assert a == b
    seq = [p.id for p in c.sample_principles(random.Random(0), "sequence", len(c.principles) + 1)]
    assert seq[0] == seq[-1] == c.principles[0].id
    assert len(c.sample_principles(random.Random(0), "all", 1)) == len(c.principles)


def test_hash_is_stable_and_content_sensitive() -> None:
    assert parse_constitution(GOOD).content_hash == parse_constitution(GOOD).content_hash
    changed = parse_constitution(GOOD.replace("Find lies.", "Find untruths."))
    assert changed.content_hash != parse_constitution(GOOD).content_hash


def test_duplicate_yaml_keys_and_wrong_types_are_reported_not_crashed() -> None:
    problems = _problems("name: x\nname: y\nprinciples: 5\n")
    assert "c.yaml:2: name: duplicate key (first at line 1)" in problems
    assert any(p.startswith("c.yaml:3: principles: ") for p in problems)
    problems = _problems(
        "name: x\nprinciples:\n  - 3\n  - {id: a, critique: c, revision: r, tags: t}\n"
    )
    assert any(p.startswith("c.yaml:3: principles[0]: ") for p in problems)
    assert any(p.startswith("c.yaml:4: principles[1].tags: ") for p in problems)


def test_empty_file_and_non_mapping_are_one_problem_each() -> None:
    assert _problems("") == ["c.yaml:1: file: expected a mapping with name and principles"]
    assert _problems("- a\n") == ["c.yaml:1: file: expected a mapping with name and principles"]


def test_few_shot_examples_are_validated_too() -> None:
    problems = _problems(GOOD + "few_shot:\n  - {prompt: p, response: r, critique: c}\n")
    assert problems == ["c.yaml:12: few_shot[0].revision: required field is missing"]


def test_every_shipped_constitution_has_judge_questions_and_few_shot() -> None:
    for name in list_constitutions():
        c = load_constitution(name)
        # a rubric whose every principle is a program (brief-and-safe) is as small as what it
        # measures; the others are for critique/revise and judging, and cover more ground
        assert len(c.principles) >= 6 or all(p.check for p in c.principles), name
        assert all(p.judge for p in c.principles), name
        assert c.few_shot, name


def test_unknown_constitution_name_is_one_clear_sentence() -> None:
    with pytest.raises(Exception, match="not a shipped name"):
        load_constitution("no-such-thing")


def test_annotated_example_in_the_docs_is_a_valid_constitution() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "constitutions.md").read_text()
    block = doc.split("## The format, annotated")[1].split("```yaml\n")[1].split("```")[0]
    c = parse_constitution(block, "docs/constitutions.md")
    assert [p.id for p in c.principles] == ["harmful-content", "privacy"]
    assert c.get("privacy").judge_question.startswith("Which response is better")


@pytest.mark.slow
def test_shipped_constitutions_load_from_a_built_wheel(tmp_path: Path) -> None:
    # Build from a copy so the shared working tree gets no build/ or egg-info, then import the
    # unpacked wheel from a directory that is not the repo: package data must be in the wheel.
    import shutil
    import subprocess
    import sys
    import zipfile

    repo = Path(__file__).parent.parent
    src = tmp_path / "src"
    for folder in ("cai_kit", "constitutions"):
        shutil.copytree(repo / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(repo / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(src)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("cai_kit-*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = (
        "import cai_kit.constitution as m; print(m.__file__);"
        "print(','.join(m.list_constitutions()));"
        "print(len(m.load_constitution('harmless-ko').principles));"
        "from cai_kit.constitution import template_text; print(len(template_text()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site"),
         "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.splitlines()  # fmt: skip
    assert out[0].startswith(str(tmp_path / "site"))
    assert out[1] == ",".join(list_constitutions())
    assert int(out[2]) == len(load_constitution("harmless-ko").principles)
    assert int(out[3]) > 100  # the template ships too: `constitution new` works after pip install
