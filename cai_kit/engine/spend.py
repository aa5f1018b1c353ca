"""What a run spent, said truthfully: a dollar figure only where every call's cost is known.

A call's cost is known when it has a price (`--price`, a list price; local models are free)
or the provider reports it (`usage.cost`). A server with neither (vLLM, a gateway) is not free:
its calls are counted as `unpriced_calls` and the spend reads "cost unknown", never `$0.0000`.

    spend_text(0.0123, 0)   -> "$0.0123"
    spend_text(0.0, 3)      -> "cost unknown (3 calls with no price)"
    spend_text(0.02, 3)     -> "$0.0200 + cost unknown (3 calls with no price)"

`manifest.json` says the same in `stats`: `cost` (null when unknown), `cost_known`,
`unpriced_calls`, and `priced_cost` (what the priced calls cost) when the cost is unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

UNKNOWN_HINT = "pass --price IN,OUT (USD per million input/output tokens) to count it"


def spend_text(cost: float | None, unpriced_calls: int = 0, *, hint: bool = False) -> str:
    """ "$X", or "cost unknown (...)" when some calls had no price and no reported cost
    (`hint`: with what to do about it)."""
    if not unpriced_calls:
        return f"${cost or 0.0:.4f}"
    calls = f"{unpriced_calls} call{'s' if unpriced_calls != 1 else ''} with no price"
    unknown = f"cost unknown ({calls}{': ' + UNKNOWN_HINT if hint else ''})"
    return f"${cost:.4f} + {unknown}" if cost else unknown


def stats_spend(stats: Mapping[str, Any], *, hint: bool = False) -> str:
    """spend_text of a job's statistics (`manifest.json`'s `stats`, `EngineStats.as_dict()`);
    a manifest written before `unpriced_calls` existed reads as known."""
    unpriced = int(stats.get("unpriced_calls") or 0)
    cost = stats.get("priced_cost") if unpriced else stats.get("cost")
    return spend_text(cost or 0.0, unpriced, hint=hint)


def cost_known(stats: Mapping[str, Any]) -> bool:
    """Whether a job's statistics give its whole cost (older manifests: yes)."""
    return not stats.get("unpriced_calls") and stats.get("cost_known", True) is not False
