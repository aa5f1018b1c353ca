"""When a judge's ties leave a win rate meaningless: one rule for `eval winrate` and the
pipeline's report.

    warning = tie_warning({"A": 3, "B": 1, "tie": 12, "failed": 0})   # a sentence, or None
"""

from __future__ import annotations

from collections.abc import Mapping

# At least this share of the judged comparisons ties: the win rate is mostly 0.5 by construction.
TIE_RATE_MEANINGLESS = 0.5


def tie_warning(counts: Mapping[str, int]) -> str | None:
    """A sentence when ties dominate the judged comparisons (verdict label -> count: A, B, tie,
    failed); None when the win rate can speak. `eval winrate` (its output and report.md)
    and the pipeline's report both say it."""
    ties = counts.get("tie", 0)
    judged = counts.get("A", 0) + counts.get("B", 0) + ties
    if not judged or ties / judged < TIE_RATE_MEANINGLESS:
        return None
    return (f"The judge tied on {ties} of {judged} comparisons ({ties / judged:.0%}), so this win "
            "rate says nothing about the models: a tie counts as half a win, and a judge that ties "
            "on everything gives 0.500 whatever the models do. Use a stronger judge, or "
            "`--mode logprobs` where the judge returns log-probabilities.")  # fmt: skip
