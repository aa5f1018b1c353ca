"""The layers in pyproject.toml's import-linter contracts hold, and they do catch a wrong import.

`lint-imports` is import-linter's own command (not a home-made check): the first test runs it
on the tree as it is; the others run it on a copy of the package with one wrong import (the
judge importing torch, a lazy import that closes a cycle) and expect the broken contract named.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}  # this copy of cai_kit, not the installed one
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_import_linter_contracts_are_kept() -> None:
    run = _lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "5 kept, 0 broken" in run.stdout


# (file to change, text to find, text to put after it, lines the report must contain); one
# broken contract unless a line says otherwise (an import up from `web` also closes a cycle)
BREAKS = {
    "a stage imports torch": (
        "judges/pairwise.py",
        "import math\n",
        "\nimport torch\n",
        ["cai_kit.judges is not allowed to import torch", "cai_kit.judges.pairwise -> torch"],
    ),
    "a lazy import makes a cycle": (
        "engine/core.py",
        "    def _notice(self, text: str) -> None:\n",
        "        from cai_kit.engine.jobs import run_job  # noqa: F401\n\n",
        ["No cycles are allowed in cai_kit.engine", "- .core -> .jobs (1 import)"],
    ),
    "the review app imports the chat server": (
        "review/app.py",
        "from cai_kit.errors import DataError\n",
        "from cai_kit.serve.protocol import Limits  # noqa: F401\n",
        [
            "cai_kit.review is not allowed to import cai_kit.serve",
            "cai_kit.review.app -> cai_kit.serve.protocol",
        ],
    ),
    "the web layer imports an app above it": (
        "web/server.py",
        "from aiohttp import web\n",
        "\nfrom cai_kit.review.labels import connect_wal  # noqa: F401\n",
        [
            "cai_kit.web is not allowed to import cai_kit.review",
            "cai_kit.web.server -> cai_kit.review.labels",
            "- .web -> .review (1 import)",
            "3 kept, 2 broken",
        ],
    ),
    "the web layer imports a backend": (
        "web/guard.py",
        "from aiohttp import web\n",
        "\nfrom cai_kit.llm.base import GenParams  # noqa: F401\n",
        [
            "cai_kit.web is not allowed to import cai_kit.llm",
            "cai_kit.web.guard -> cai_kit.llm.base",
        ],
    ),
}


@pytest.mark.parametrize("case", list(BREAKS))
def test_a_wrong_import_breaks_a_contract(tmp_path: Path, case: str) -> None:
    path, anchor, added, expected = BREAKS[case]
    shutil.copytree(ROOT / "cai_kit", tmp_path / "cai_kit", ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    module = tmp_path / "cai_kit" / path
    text = module.read_text()
    assert anchor in text
    module.write_text(text.replace(anchor, anchor + added, 1))
    run = _lint_imports(tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    if not any(" broken" in line for line in expected):
        assert "4 kept, 1 broken" in run.stdout, run.stdout
    for line in expected:
        assert line in run.stdout, run.stdout
