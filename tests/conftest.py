"""Shared test setup: no network, a private cache dir, and the real-server fixtures.

Fixtures that start real servers on loopback live in tests/fixtures/ (the llama.cpp server
serving the embedded GGUF, and a scripted fault-injection OpenAI-compatible server).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid

import pytest

# Never let a library reach for a hub or a price list during tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
# Converted weights of the embedded model are shared by all tests (and by later runs).
os.environ.setdefault(
    "CAI_KIT_MODELS_DIR",
    os.path.join(
        os.path.expanduser(os.environ.get("XDG_CACHE_HOME", "~/.cache")), "cai-kit", "models"
    ),
)

# trackio binds its store directory when first imported: one temp dir for the session, never
# ~/.cache/huggingface/trackio, and never a Space or server (`trackio_project` gives each test
# its own project, i.e. its own SQLite file there).
os.environ["TRACKIO_DIR"] = tempfile.mkdtemp(prefix="cai-kit-trackio-")
atexit.register(shutil.rmtree, os.environ["TRACKIO_DIR"], ignore_errors=True)
for _var in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL", "TRACKIO_PROJECT"):
    os.environ.pop(_var, None)

pytest_plugins = [
    "tests.fixtures.browser",
    "tests.fixtures.llama_server",
    "tests.fixtures.fault_server",
    "tests.fixtures.serve_server",
]


@pytest.fixture(autouse=True)
def _private_call_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test gets its own call cache so cached answers never leak between tests.

    The converted-model cache (models/) is shared across the session through
    CAI_KIT_MODELS_DIR so the embedded model is converted once per test run, not per test.
    """
    monkeypatch.setenv("CAI_KIT_CACHE_DIR", str(tmp_path_factory.mktemp("cai-cache")))


@pytest.fixture
def trackio_project(monkeypatch: pytest.MonkeyPatch) -> str:
    """A trackio project of this test's own ($TRACKIO_PROJECT), in the session's TRACKIO_DIR."""
    project = f"cai-kit-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("TRACKIO_PROJECT", project)
    return project
