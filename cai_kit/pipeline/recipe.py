"""Pipeline recipes: one YAML file that says what `cai-kit pipeline` does.

A recipe names a **student** (the model trained locally: SFT, then DPO) and, optionally, a
**teacher** (the capable model that writes data and judges). The teacher serves the stages
listed in `serves`; every other stage uses the student. Without a teacher everything runs on
the student (with `local`, fully offline)::

    name: hosted
    prompts: ../red_team_prompts.jsonl          # from the recipe's folder
    student: {model: local}                     # trained here
    teacher:
      model: openai/gpt-4o-mini                 # any cai-kit model string
      api_base: null                            # an OpenAI-compatible server (vLLM, llama.cpp)
      serves: [responses, critiques, judging, eval_judging]
      price: "0.15,0.60"                        # USD per M tokens, for --dry-run if unknown

Relative paths in a recipe (`prompts`, `eval_prompts`, a constitution file, `hf:PATH` models)
are read from the recipe's folder; a shipped constitution name stays the shipped one
(`cai_kit.pipeline.recipe_paths`). The run directory is not in the recipe (`--out`, current directory).

`load_recipe(path)` validates with pydantic and reports every problem as
`file:line: field: message` (one `ConfigError`); recipes written before the teacher/student
split (`base_model`, `judge_model`, `api_base`) get a message saying what to write instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cai_kit.constitution import Problem, duplicate_keys, validate_with, yaml_line_index
from cai_kit.errors import ConfigError

Serves = Literal["responses", "critiques", "judging", "eval_judging"]
ALL_SERVES: list[Serves] = ["responses", "critiques", "judging", "eval_judging"]
JudgeMode = Literal["logprobs", "letter", "cot", "votes"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Student(_Section):
    model: str = Field(
        "local", description="the model trained locally: local (embedded SmolLM2) or hf:PATH"
    )

    @field_validator("model")
    @classmethod
    def _servable(cls, v: str) -> str:
        if v in ("local", "local:llama", "local:transformers") or v.startswith("hf:"):
            return v
        raise ValueError(
            "the student is trained and served on this machine: use local or hf:PATH "
            "(download a Hub model first, e.g. `huggingface-cli download ID --local-dir DIR`)"
        )


class Teacher(_Section):
    model: str = Field(description="any model string: openai/gpt-4o-mini, local, a served name")
    api_base: str | None = Field(None, description="base URL of an OpenAI-compatible server")
    serves: list[Serves] = Field(default_factory=lambda: list(ALL_SERVES))
    price: str | None = Field(
        None, description="USD per million input,output tokens, e.g. '0.15,0.60' (for --dry-run)"
    )
    batch_api: bool = Field(False, description="send the teacher's calls as provider Batch jobs")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v.strip()

    @field_validator("api_base")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL, not {v!r}")
        return v

    @field_validator("price")
    @classmethod
    def _price(cls, v: str | None) -> str | None:
        if v is not None:
            from cai_kit.engine.pricing import parse_price

            try:
                parse_price(str(v))
            except ConfigError as exc:
                raise ValueError(str(exc).replace("--price", "price")) from None
        return v


class ReviseStage(_Section):
    rounds: int = Field(1, ge=0)
    principles: Literal["random", "sequence", "all"] = "random"
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.7, ge=0)


class TrainStage(_Section):
    max_steps: int = 50
    batch_size: int = Field(4, ge=1)
    lr: float | None = None
    max_length: int = Field(512, ge=16)
    beta: float | None = None
    loss: str | None = None


class PrefsStage(_Section):
    k: int = Field(2, ge=2)
    pairs: str = "best-worst"
    mode: JudgeMode = "logprobs"
    max_tokens: int = Field(256, ge=1)
    min_margin: float = 0.0
    include_ties: bool = Field(False, description="keep pairs the judge called a tie (export dpo --include-ties)")  # fmt: skip
    no_pairs: Literal["revisions", "fail"] = Field(
        "revisions",
        description="when the judge leaves no pair to train on (all ties, failed or below "
        "min_margin): revisions: DPO trains on the revision-over-initial pairs instead, and the "
        "pipeline says so; fail: the pipeline stops at export-dpo",
    )

    @field_validator("pairs")
    @classmethod
    def _pairs(cls, v: str) -> str:
        if v in ("best-worst", "all") or (v.startswith("random:") and v.split(":", 1)[1].isdigit()):
            return v
        raise ValueError(f"use best-worst, all or random:N, not {v!r}")


class EvalStage(_Section):
    limit: int | None = Field(None, ge=1, description="use at most this many eval prompts")
    max_tokens: int = Field(256, ge=1)
    mode: JudgeMode = "logprobs"
    implicit_reward: bool = Field(
        True, description="also score held-out revision pairs by the DPO/SFT implicit reward"
    )


class Recipe(_Section):
    name: str
    prompts: str
    eval_prompts: str | None = Field(
        None, description="held-out eval prompts; default: a seeded split of `prompts`"
    )
    eval_fraction: float = Field(0.25, gt=0, lt=1, description="share of `prompts` held out")
    limit: int | None = Field(None, ge=1, description="use at most this many training prompts")
    constitution: str = "harmless"
    student: Student = Student()
    teacher: Teacher | None = None
    seed: int = 0
    preferences: Literal["judge", "revisions"] = "revisions"
    revise: ReviseStage = ReviseStage()
    sft: TrainStage = TrainStage()
    prefs: PrefsStage = PrefsStage()
    dpo: TrainStage = TrainStage()
    eval: EvalStage = EvalStage()

    def served_by(self, role: Serves) -> tuple[str, str | None]:
        """(model, api_base) for one role: the teacher when it serves it, else the student."""
        if self.teacher is not None and role in self.teacher.serves:
            return self.teacher.model, self.teacher.api_base
        return self.student.model, None


# Recipes from before the teacher/student split: say what to write instead, never guess.
_MIGRATION = {
    "base_model": "renamed: write `student: {model: VALUE}` (the model trained locally); a "
    "different model that writes responses, critiques or judgements goes in `teacher:`",
    "judge_model": "moved: write `teacher: {model: VALUE, serves: [judging, eval_judging]}`",
    "api_base": "moved: the server belongs to the teacher, write `teacher: {model: ..., "
    "api_base: VALUE}`",
}


def parse_recipe(text: str, display: str = "<recipe>", base: Path | None = None) -> Recipe:
    """Validate recipe YAML text; a ConfigError lists every problem as file:line: field: msg.

    With `base` (the recipe's folder) the path fields are resolved against it and must exist
    (`cai_kit.pipeline.recipe_paths`); without it they are kept exactly as written."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{display}:{mark.line + 1}" if mark else display
        raise ConfigError(f"{where}: yaml: {exc.problem}") from None
    if not isinstance(data, dict) or node is None:
        raise ConfigError(f"{display}:1: recipe: expected a mapping with name and prompts.")
    index = yaml_line_index(node)
    problems = duplicate_keys(node, display)
    for key, how in _MIGRATION.items():
        if key in data:
            value = data.pop(key)
            problems.append(Problem(display, index.get((key,)), key, how.replace("VALUE", str(value))))  # fmt: skip
    if base is not None:
        from cai_kit.pipeline.recipe_paths import resolve_recipe_paths

        problems += resolve_recipe_paths(data, base, display, index)
    recipe, problems = validate_with(Recipe, data, problems, index, display, "recipe")
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise ConfigError(f"{display}: {len(problems)} problem(s) in the recipe:\n{lines}")
    assert recipe is not None
    return recipe


def load_recipe(path: Path) -> Recipe:
    """Read and validate a recipe file (see `parse_recipe`); its relative paths are read from
    its folder, whatever the current directory."""
    if not path.is_file():
        raise ConfigError(f"No recipe at {path}.")
    return parse_recipe(path.read_text(encoding="utf-8"), str(path), base=path.parent)
