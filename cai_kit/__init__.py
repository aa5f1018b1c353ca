"""cai-kit: Constitutional AI and RLAIF, from a YAML constitution to a trained model.

Importing `cai_kit` is light: it never imports torch, transformers, trl or litellm. The
public names below are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from cai_kit._version import __version__

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "Message": "cai_kit.records",
    "PromptRecord": "cai_kit.records",
    "CritiqueStep": "cai_kit.records",
    "RevisionRecord": "cai_kit.records",
    "Comparison": "cai_kit.records",
    "JudgeVerdict": "cai_kit.records",
    "PreferenceRecord": "cai_kit.records",
    "RunManifest": "cai_kit.records",
    "Provenance": "cai_kit.records",
    "Constitution": "cai_kit.constitution",
    "Principle": "cai_kit.constitution",
    "load_constitution": "cai_kit.constitution",
    "Backend": "cai_kit.llm.base",
    "Completion": "cai_kit.llm.base",
    "GenParams": "cai_kit.llm.base",
    "get_backend": "cai_kit.llm.registry",
    "register": "cai_kit.llm.registry",
    "BackendSpec": "cai_kit.llm.registry",
    "CaiKitError": "cai_kit.errors",
}

# public name -> module, loaded on first use: `cai_kit.rewards.rubric(...)`, `cai_kit.train.ppo(...)`
_MODULES: dict[str, str] = {"rewards": "cai_kit.train.sources", "train": "cai_kit.train"}

__all__ = ["__version__", *sorted(_LAZY), *sorted(_MODULES)]


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        module = importlib.import_module(_MODULES[name])
        globals()[name] = module
        return module
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cai_kit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
