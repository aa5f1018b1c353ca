"""litellm's model map (prices, context windows, which models reason), read without litellm.

litellm ships the map as `model_prices_and_context_window_backup.json`; reading that file takes
~0.1 s where importing litellm takes seconds, so `import cai_kit` and a job's first call stay
light. Prices (`cai_kit.engine.pricing`), OpenAI's reasoning rules (`cai_kit.llm.reasoning`)
and Claude's and Gemini's thinking controls (`cai_kit.llm.thinking`) all read it here.

    >>> entry("openai/gpt-4o-mini") is None or "input_cost_per_token" in entry("openai/gpt-4o-mini")
    True
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any


@lru_cache(maxsize=1)
def bundled_cost_map() -> dict[str, Any]:
    """litellm's bundled price file, read as JSON ({} when litellm is not installed)."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or spec.origin is None:
        return {}
    path = Path(spec.origin).parent / "model_prices_and_context_window_backup.json"
    if path.is_file():
        return dict(json.loads(path.read_text(encoding="utf-8")))
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch a price list
    import litellm

    return dict(litellm.model_cost)


def cost_table() -> dict[str, Any]:
    """The map in use: litellm's own when it is already imported (it may hold models a user
    registered), else the bundled file."""
    litellm = sys.modules.get("litellm")
    if litellm is not None and isinstance(getattr(litellm, "model_cost", None), dict):
        return litellm.model_cost
    return bundled_cost_map()


def entry(model: str) -> dict[str, Any] | None:
    """The map's entry for a model string: as given (less a `litellm:` prefix), then without
    each leading `provider/` (openrouter/openai/gpt-5-mini -> openai/gpt-5-mini -> gpt-5-mini)."""
    table = cost_table()
    name = model.removeprefix("litellm:")
    while True:
        found = table.get(name)
        if isinstance(found, dict):
            return found
        if "/" not in name:
            return None
        name = name.split("/", 1)[1]
