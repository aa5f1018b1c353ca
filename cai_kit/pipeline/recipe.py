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
    expand: {n: 200, keep_if: "asks for something harmful"}   # optional: more prompts first
    infer: {min_agreement: 0.6}                 # optional: principles behind the pairs
    max_cost: 5.0                               # optional: USD for the whole pipeline
    stage_max_cost: {prefs: 2.0}                # optional: USD per stage, inside max_cost

`expand` and `infer` are run by the teacher unless they name their own `model`
(`Recipe.step_model`).

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
# the stages that make model calls (job commands with --max-cost): `stage_max_cost` keys
JOB_STAGES = ("expand", "revise", "prefs", "infer", "eval", "revise-heldout")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_url(v: str | None) -> str | None:
    if v is not None and not v.startswith(("http://", "https://")):
        raise ValueError(f"must be an http:// or https:// URL, not {v!r}")
    return v


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
    reasoning_effort: str | None = Field(
        None, description="a reasoning teacher's effort for responses, critiques, revisions, "
        "expand and infer proposals (--reasoning-effort; default: the model's own)")  # fmt: skip
    judge_reasoning_effort: str | None = Field(
        None, description="its effort as a judge (verdicts, --keep-if, eval; "
        "--judge-reasoning-effort; default: the least the model takes)")  # fmt: skip

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v.strip()

    @field_validator("api_base")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return _check_url(v)

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


class _Step(_Section):
    """A step run by one model: its own, else the teacher's (`Recipe.step_model`)."""

    model: str | None = Field(None, description="the model (default: the teacher's)")
    api_base: str | None = Field(None, description="its server (default: the teacher's)")

    @field_validator("api_base")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return _check_url(v)


class ExpandStep(_Step):
    """`expand:` new prompts in the style of `prompts` (`cai-kit prompts expand`), before the
    held-out split: the split and every later stage use them."""

    n: int = Field(100, ge=1, description="how many new prompts to write")
    keep_if: str | None = Field(None, description="keep only prompts that match this description")
    per_call: int = Field(5, ge=1, le=50)
    shots: int = Field(5, ge=1, le=50)
    oversample: float = Field(1.3, ge=1.0)
    max_rounds: int = Field(3, ge=1)
    similarity: float = Field(0.7, ge=0.05, le=1.0)
    topic_column: str = "category"
    temperature: float = Field(1.0, ge=0)
    max_tokens: int = Field(512, ge=1)
    include_seeds: bool = Field(True, description="the seed prompts stay in the pool too")


class InferStep(_Step):
    """`infer:` the principles that explain the preference pairs (`cai-kit constitution
    infer`), after the preferences stage; writes RUN/infer/inferred.yaml."""

    min_agreement: float = Field(0.6, ge=0, le=1)
    min_decided: float = Field(0.2, ge=0, le=1)
    holdout: float = Field(0.5, ge=0.05, le=0.95)
    propose_pairs: int = Field(100, ge=1)
    test_pairs: int = Field(100, ge=1)
    per_pair: int = Field(3, ge=1, le=10)
    max_candidates: int = Field(20, ge=1)
    mode: JudgeMode = "logprobs"
    temperature: float = Field(0.7, ge=0)
    max_tokens: int = Field(256, ge=1)


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
    expand: ExpandStep | None = None
    infer: InferStep | None = None
    max_cost: float | None = Field(
        None,
        gt=0,
        description="USD cap for the whole pipeline, every stage together, per invocation "
        "(`--max-cost` overrides it)",
    )
    stage_max_cost: dict[str, float] = Field(
        default_factory=dict,
        description="USD cap per job stage inside the whole, e.g. {prefs: 2.0} (stages: "
        "expand, revise, prefs, infer, eval, revise-heldout)",
    )
    report_to: str = Field(
        "none",
        description="train sft/dpo log to: none, tensorboard, trackio, wandb, mlflow (comma-separated)",
    )

    @field_validator("stage_max_cost")
    @classmethod
    def _stage_caps(cls, v: dict[str, float]) -> dict[str, float]:
        for name, cap in v.items():
            if name not in JOB_STAGES:
                raise ValueError(f"{name!r} is not a stage that makes model calls: "
                                 f"{', '.join(JOB_STAGES)}")  # fmt: skip
            if cap <= 0:
                raise ValueError(f"{name}: a cap must be more than 0")
        return v

    @field_validator("report_to")
    @classmethod
    def _report_to(cls, v: str) -> str:
        from cai_kit.train.tracking import parse_report_to

        try:  # known names here; whether each is installed, the train stage says
            return ",".join(parse_report_to(v, check_installed=False)) or "none"
        except ConfigError as exc:
            raise ValueError(str(exc).replace("--report-to", "report_to:")) from None

    def served_by(self, role: Serves) -> tuple[str, str | None]:
        """(model, api_base) for one role: the teacher when it serves it, else the student."""
        if self.teacher is not None and role in self.teacher.serves:
            return self.teacher.model, self.teacher.api_base
        return self.student.model, None

    def step_model(self, step: _Step) -> tuple[str, str | None]:
        """(model, api_base) of an expand or infer step: its own, else the teacher's (the
        student's without a teacher); a step naming the teacher's model gets its server."""
        if step.model is None:
            if self.teacher is not None:
                return self.teacher.model, step.api_base or self.teacher.api_base
            return self.student.model, step.api_base
        if step.api_base is None and self.teacher is not None and step.model == self.teacher.model:
            return step.model, self.teacher.api_base
        return step.model, step.api_base


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
