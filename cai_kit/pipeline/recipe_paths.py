"""Paths inside a recipe are read from the recipe's folder (as docker-compose and GitHub Actions
do), never from the directory `cai-kit` happens to run in.

    problems = resolve_recipe_paths(data, Path("examples/recipes"), "r.yaml", line_index)

`data` is the recipe's raw YAML mapping; its path fields are rewritten in place to absolute
paths, and every one that names nothing comes back as a `Problem` (`file:line: field: no file
at /the/resolved/path`, with the path to write when the old, current-directory reading would
have found the file). The fields:

- `prompts`, `eval_prompts`: a file; or `hf:NAME[:split][:column]`, whose NAME is resolved when
  it is path-like (`./`, `../`, `/`, `~`) or a folder of that name sits beside the recipe, and
  otherwise left as a Hugging Face Hub dataset name.
- `constitution`: a shipped name (`harmless`, ...) stays the shipped constitution unless it is
  written like a path (a `/`, a leading `.` or `~`, or a `.yaml`/`.yml` ending); anything else is
  a file.
- `student.model`, `teacher.model`, `expand.model`, `infer.model`: `hf:PATH` is a checkpoint folder; other model strings are
  not paths.

`~` is expanded and absolute paths are kept. The run directory is not in the recipe: it is the
`--out` flag, read like every command-line path, from the current directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cai_kit.constitution import Problem, list_constitutions

_HINT = "relative paths in a recipe are read from the recipe's folder"


def resolve(value: str, base: Path) -> Path:
    """`value` (`~` expanded) as an absolute path, read from `base` when relative."""
    path = Path(value).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def looks_like_path(value: str) -> bool:
    """Written as a path rather than a name: a separator, a leading `.` or `~`, or .yaml/.yml."""
    return (
        "/" in value
        or os.sep in value
        or value.startswith((".", "~"))
        or value.endswith((".yaml", ".yml"))
    )


def _missing(value: str, base: Path, kind: str = "file", prefix: str = "") -> str:
    """The message for a path that names nothing, with the path to write when the file sits
    where the current directory would have found it (how recipes were read before)."""
    msg = f"no {kind} at {resolve(value, base)}"
    if Path(value).expanduser().is_absolute():
        return msg
    old = Path(value).absolute()
    if old.exists():
        try:  # in one tree: a relative fix; else (or another drive) the absolute path
            near = Path(os.path.commonpath([old, base])) != Path(old.anchor)
        except ValueError:
            near = False
        fix = Path(os.path.relpath(old, base)).as_posix() if near else str(old)
        was = f"`{prefix}{value}` is there from the current directory"
        return f"{msg} ({_HINT}; {was}: write {prefix}{fix})"
    return f"{msg} ({_HINT})"


def _prompts(value: str, base: Path) -> tuple[str, str | None]:
    """(resolved spec, problem or None) for a prompts field."""
    if value.startswith("hf:"):
        name, sep, rest = value.removeprefix("hf:").partition(":")
        local = resolve(name, base)
        if name.startswith((".", "~")) or Path(name).is_absolute():  # ./data, ../x, /abs, ~/x
            if not local.is_dir():
                return value, _missing(name, base, "dataset folder", "hf:")
        elif not local.is_dir():
            return value, None  # a Hub dataset name
        return f"hf:{local}{sep}{rest}", None
    path = resolve(value, base)
    return str(path), None if path.is_file() else _missing(value, base)


def _constitution(value: str, base: Path) -> tuple[str, str | None]:
    shipped = list_constitutions()
    if value in shipped and not looks_like_path(value):
        return value, None
    path = resolve(value, base)
    if path.is_file():
        return str(path), None
    if looks_like_path(value):
        named = Path(value).stem if Path(value).stem in shipped else None
        also = f"; the shipped one is written `{named}`" if named else ""
        return value, _missing(value, base) + also
    return value, f"not a shipped name ({', '.join(shipped)}) and {_missing(value, base)}"


def _model(value: str, base: Path) -> tuple[str, str | None]:
    if not value.startswith("hf:"):
        return value, None
    path = resolve(value.removeprefix("hf:"), base)
    if not path.is_dir():
        return value, _missing(value.removeprefix("hf:"), base, "checkpoint folder", "hf:")
    return f"hf:{path}", None


_FIELDS: list[tuple[tuple[str, ...], Any]] = [
    (("prompts",), _prompts),
    (("eval_prompts",), _prompts),
    (("constitution",), _constitution),
    (("student", "model"), _model),
    (("teacher", "model"), _model),
    (("expand", "model"), _model),
    (("infer", "model"), _model),
]


def resolve_recipe_paths(
    data: dict[str, Any], base: Path, display: str, index: dict[tuple[Any, ...], int]
) -> list[Problem]:
    """Rewrite the path fields of raw recipe `data` against `base`; one Problem per missing one.
    Values of the wrong type are left for validation to report."""
    base = Path(os.path.abspath(base))
    problems = []
    for keys, how in _FIELDS:
        parent = data
        for key in keys[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        value = parent.get(keys[-1]) if isinstance(parent, dict) else None
        if not isinstance(value, str) or not value.strip():
            continue
        assert isinstance(parent, dict)
        parent[keys[-1]], problem = how(value.strip(), base)
        if problem:
            problems.append(Problem(display, index.get(keys), ".".join(keys), problem))
    return problems
