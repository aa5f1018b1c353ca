"""Where cai-kit keeps things on disk (overridable by environment variables)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """User cache root: $CAI_KIT_CACHE_DIR, else $XDG_CACHE_HOME/cai-kit, else ~/.cache/cai-kit."""
    if env := os.environ.get("CAI_KIT_CACHE_DIR"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "cai-kit"


def call_cache_path() -> Path:
    """The default SQLite call cache (content-addressed model calls)."""
    return cache_dir() / "calls.sqlite"


def models_dir() -> Path:
    """Converted model weights (e.g. the embedded GGUF as a transformers checkpoint).

    $CAI_KIT_MODELS_DIR overrides it, so tests can share one conversion across a run.
    """
    if env := os.environ.get("CAI_KIT_MODELS_DIR"):
        return Path(env).expanduser()
    return cache_dir() / "models"
