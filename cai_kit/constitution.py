"""Constitutions: YAML principles that drive critiques, revisions and judge questions.

A constitution file looks like::

    name: harmless
    version: "1.0"
    description: Avoid harm without becoming evasive.
    principles:
      - id: harmful-content
        critique: Identify ways the response is harmful, unethical or dangerous.
        revision: Rewrite the response to remove harmful, unethical or dangerous content.
        judge: Which response is less harmful, unethical or dangerous?   # optional
    few_shot:                                                             # optional
      - {prompt: ..., response: ..., critique: ..., revision: ...}

A principle may also be a rubric item (`cai-kit eval rubric`, `train grpo|ppo --reward rubric`,
docs/rewards.md): `question:` (a yes/no question about one response; derived from the critique
when not given), `weight:` (for `combine: weighted`), and `check:`, a program that decides it
with no model call: `{regex: PATTERN, must: match | not_match, ignore_case: false}` or
`{python: "module:function"}` (function(prompt, response) -> bool or a float in [0, 1]). The
optional top-level `rubric: {combine: mean | min | weighted | all-pass | priority, threshold: 0.5}`
says how the per-principle scores become one (a score passes at `threshold` or above).

Priorities: a principle may carry `priority: N` (a tier; 0 is the most important, a principle
without one comes after every named tier) and `hard: true` (a hard constraint: a tier above
every other, and a violation, a score below the threshold, fails the response: its combined
score is 0 under any `combine`). `combine: priority` compares tier by tier (`judges.rubric`),
and the pairwise judge decides on the most important tier whose principles are not tied
(`judges.pairwise`). `Constitution.tier(principle)` gives a principle's tier.

`load_constitution("harmless")` loads a shipped one by name (the files in the repository's
top-level `constitutions/` folder, installed inside the package); any other string is a path.
`template_text()` is the annotated `constitutions/_template.yaml` (`cai-kit constitution new`).
Validation collects every problem with its `file:line: field: message` before failing.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cai_kit.errors import CaiKitError
from cai_kit.records import stable_hash

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

SampleMode = Literal["random", "sequence", "all"]
Combine = Literal["mean", "min", "weighted", "all-pass", "priority"]
COMBINES: tuple[str, ...] = ("mean", "min", "weighted", "all-pass", "priority")
_PYTHON_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class ConstitutionError(CaiKitError):
    """A constitution file has problems; `problems` lists each with its location."""

    def __init__(self, path: str, problems: list[Problem]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{path}: {len(problems)} problem(s) in the constitution:\n{lines}")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _nonblank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    return v.strip()


class Check(_Strict):
    """A program that decides a principle for one response: a regex, or a Python function."""

    regex: str | None = Field(default=None, description="a pattern searched for in the response")
    must: Literal["match", "not_match"] = "match"
    ignore_case: bool = False
    python: str | None = Field(
        default=None, description="module:function(prompt, response) -> bool | float in [0, 1]"
    )

    @field_validator("regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return v

    @field_validator("python")
    @classmethod
    def _python(cls, v: str | None) -> str | None:
        if v is not None and not _PYTHON_REF.match(v.strip()):
            raise ValueError(f"must be 'module:function', not {v!r}")
        return None if v is None else v.strip()

    @model_validator(mode="after")
    def _one_kind(self) -> Check:
        if (self.regex is None) == (self.python is None):
            raise ValueError("give exactly one of regex or python")
        return self


class RubricSpec(_Strict):
    """How the per-principle rubric scores of one response become one score."""

    combine: Combine = "mean"
    threshold: float = Field(default=0.5, ge=0.0, le=1.0, description="a score passes at this")


class Principle(_Strict):
    id: str
    critique: str = Field(description="critique request: what to look for in a response")
    revision: str = Field(description="revision request: how to rewrite the response")
    judge: str | None = Field(
        default=None, description="pairwise question: which response is better?"
    )
    tags: list[str] = Field(default_factory=list)
    question: str | None = Field(
        default=None, description="rubric: a yes/no question about one response (Yes = follows)"
    )
    weight: float = Field(default=1.0, gt=0.0, description="rubric weight (combine: weighted)")
    check: Check | None = Field(default=None, description="a program that decides the principle")
    priority: int | None = Field(
        default=None, ge=0, description="tier: 0 is the most important; unset: after every tier"
    )
    hard: bool = Field(
        default=False,
        description="a hard constraint: a violation fails the response whatever else holds",
    )

    _check = field_validator("id", "critique", "revision")(_nonblank)

    @field_validator("judge", "question")
    @classmethod
    def _judge(cls, v: str | None) -> str | None:
        return None if v is None else _nonblank(v)

    @property
    def rubric_question(self) -> str:
        """The yes/no rubric question (Yes: the response follows the principle)."""
        return self.question or (
            f"Does the response give no grounds for this critique request: {self.critique.rstrip()}"
        )

    @property
    def judge_question(self) -> str:
        """The comparison question; derived from the critique request when not given."""
        return self.judge or (
            f"Which response is better with respect to this request: {self.critique}"
        )


class FewShotExample(_Strict):
    prompt: str
    response: str
    critique: str
    revision: str

    _check = field_validator("prompt", "response", "critique", "revision")(_nonblank)


class Constitution(_Strict):
    name: str
    version: str = "1.0"
    description: str = ""
    principles: list[Principle]
    few_shot: list[FewShotExample] = Field(default_factory=list)
    judge_instruction: str | None = None
    rubric: RubricSpec | None = None

    _check = field_validator("name")(_nonblank)

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> str:
        return str(v)

    @field_validator("principles")
    @classmethod
    def _principles(cls, v: list[Principle]) -> list[Principle]:
        if not v:
            raise ValueError("needs at least one principle")
        return v

    @cached_property
    def content_hash(self) -> str:
        """A stable hash of the content (not of the file's formatting); computed once (the
        model is frozen), as it goes into the record id of every row."""
        data = self.model_dump(mode="json")
        # the rubric fields enter the hash only when set: constitutions without them keep the
        # hash (and so the record ids) they had before rubrics existed
        if data.get("rubric") is None:
            data.pop("rubric", None)
        for p in data["principles"]:
            for key, default in (("question", None), ("weight", 1.0), ("check", None),
                                 ("priority", None), ("hard", False)):  # fmt: skip
                if p.get(key) == default:
                    p.pop(key, None)
        return stable_hash("constitution", data)

    def tier(self, principle: Principle) -> int:
        """The principle's tier, most important first: -1 for a hard constraint, its
        `priority:`, else one after the last tier any principle names."""
        if principle.hard:
            return -1
        if principle.priority is not None:
            return principle.priority
        return 1 + max((p.priority for p in self.principles if p.priority is not None), default=-1)

    def get(self, principle_id: str) -> Principle:
        for p in self.principles:
            if p.id == principle_id:
                return p
        known = ", ".join(p.id for p in self.principles)
        raise CaiKitError(
            f"No principle {principle_id!r} in constitution {self.name!r} (known: {known})."
        )

    def sample_principles(
        self, rng: random.Random, mode: SampleMode, rounds: int
    ) -> list[Principle]:
        """Principles for `rounds` rounds: one random per round (as in the CAI paper), the
        file's order cycling, or every principle once (`all` ignores `rounds`)."""
        if mode == "random":
            return [rng.choice(self.principles) for _ in range(rounds)]
        if mode == "sequence":
            return [self.principles[i % len(self.principles)] for i in range(rounds)]
        if mode == "all":
            return list(self.principles)
        raise CaiKitError(f"Unknown principle mode {mode!r}; use random, sequence or all.")


# --- loading ----------------------------------------------------------------------------


TEMPLATE = "_template"  # the annotated starting point for `cai-kit constitution new`


def shipped_dir() -> Traversable:
    """Where the shipped constitutions are: inside the installed wheel (`cai_kit/constitutions`,
    mapped there from the repository's top-level `constitutions/` at build time), or that
    top-level folder itself in a source checkout or editable install."""
    packaged = resources.files("cai_kit").joinpath("constitutions")
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "constitutions"


def list_constitutions() -> list[str]:
    """Names of the constitutions shipped with the package (the template is not one)."""
    folder = shipped_dir()
    if not folder.is_dir():
        return []
    names = (f.name[: -len(".yaml")] for f in folder.iterdir() if f.name.endswith(".yaml"))
    return sorted(n for n in names if not n.startswith("_"))


def template_text() -> str:
    """The annotated template (`constitutions/_template.yaml`) as text."""
    return shipped_dir().joinpath(f"{TEMPLATE}.yaml").read_text(encoding="utf-8")


def _read(name_or_path: str) -> tuple[str, str]:
    """(display path, text) for a shipped name or a file path."""
    if name_or_path in list_constitutions():
        res = shipped_dir().joinpath(f"{name_or_path}.yaml")
        return f"{name_or_path}.yaml", res.read_text(encoding="utf-8")
    path = Path(name_or_path)
    if not path.is_file():
        shipped = ", ".join(list_constitutions())
        raise CaiKitError(
            f"No constitution {name_or_path!r}: not a shipped name ({shipped}) and not a file."
        )
    return str(path), path.read_text(encoding="utf-8")


def yaml_line_index(node: yaml.Node, prefix: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """Map each path in the YAML tree (keys and list indexes) to its 1-based line."""
    index = {prefix: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            index[(*prefix, key)] = key_node.start_mark.line + 1
            for sub, line in yaml_line_index(value_node, (*prefix, key)).items():
                index.setdefault(sub, line)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            index.update(yaml_line_index(item, (*prefix, i)))
    return index


def duplicate_keys(node: yaml.Node, display: str, prefix: str = "") -> list[Problem]:
    """Keys given twice in one mapping: safe_load keeps the last silently, so say so."""
    found: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            field = f"{prefix}.{key}" if prefix else key
            if key in first:
                found.append(
                    Problem(display, line, field, f"duplicate key (first at line {first[key]})")
                )
            else:
                first[key] = line
            found.extend(duplicate_keys(value_node, display, field))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found.extend(duplicate_keys(item, display, f"{prefix}[{i}]"))
    return found


def line_for(index: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    while loc not in index and loc:
        loc = loc[:-1]
    return index.get(loc)


def problems_from(
    exc: ValidationError, index: dict[tuple[Any, ...], int], display: str, root: str
) -> list[Problem]:
    """A pydantic error as `file:line: field: message` problems (`index` maps a YAML key path to
    its line; `root` names a problem with no field). Shared by constitutions and recipes."""
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        field = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in loc).lstrip(".")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required field is missing"
        out.append(Problem(display, line_for(index, loc), field or root, msg))
    return out


M = TypeVar("M", bound=BaseModel)


def validate_with(
    model: type[M], data: Any, problems: list[Problem], index: dict[tuple[Any, ...], int],
    display: str, root: str,
) -> tuple[M | None, list[Problem]]:  # fmt: skip
    """Validate `data` as `model` after the checks that found `problems`: (the object, or None,
    and every problem, pydantic's among them, in line order). Shared by constitutions and
    recipes, which each raise their own error with the problems."""
    try:
        obj: M | None = model.model_validate(data)
    except ValidationError as exc:
        problems = problems + problems_from(exc, index, display, root=root)
        obj = None
    return obj, sorted(problems, key=lambda p: (p.line or 0, p.field))


def parse_constitution(text: str, display: str = "<string>") -> Constitution:
    """Parse and validate YAML text, raising ConstitutionError with every problem."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else None
        col = f" (column {mark.column + 1})" if mark else ""
        raise ConstitutionError(
            display, [Problem(display, line, "yaml", f"{exc.problem}{col}")]
        ) from None
    if not isinstance(data, dict) or node is None:
        raise ConstitutionError(
            display, [Problem(display, 1, "file", "expected a mapping with name and principles")]
        )
    index = yaml_line_index(node)
    problems: list[Problem] = []

    problems.extend(duplicate_keys(node, display))

    seen: dict[str, int] = {}
    raw_principles = data.get("principles")
    for i, p in enumerate(raw_principles if isinstance(raw_principles, list) else []):
        pid = p.get("id") if isinstance(p, dict) else None
        if isinstance(pid, str):
            if pid in seen:
                problems.append(
                    Problem(
                        display,
                        line_for(index, ("principles", i, "id")),
                        f"principles[{i}].id",
                        f"duplicate id {pid!r} (first defined at line {seen[pid]})",
                    )
                )
            else:
                seen[pid] = line_for(index, ("principles", i, "id")) or 0
    rubric = data.get("rubric")
    if isinstance(rubric, dict) and rubric.get("combine") == "priority":
        tiered = [p for p in raw_principles if isinstance(p, dict) and ("priority" in p or p.get("hard"))] \
            if isinstance(raw_principles, list) else []  # fmt: skip
        if not tiered:
            problems.append(Problem(display, line_for(index, ("rubric", "combine")), "rubric.combine",
                                    "combine: priority needs principles with priority: or hard: true"))  # fmt: skip
    constitution, problems = validate_with(Constitution, data, problems, index, display, "file")
    if problems:
        raise ConstitutionError(display, problems)
    assert constitution is not None
    return constitution


def load_constitution(name_or_path: str) -> Constitution:
    """Load a shipped constitution by name (e.g. "harmless") or a YAML file by path."""
    display, text = _read(name_or_path)
    return parse_constitution(text, display)
