"""The public Python API: the calls the CLI makes, as functions of plain Python values.

- `data.py`    revise, generate, prefs, judge, expand_prompts, infer_constitution
- `evals.py`   evaluate_winrate, evaluate_rubric, evaluate_harmlessness (-> `Evaluation`)
- `inputs.py`  what they share: prompts/constitution/model coercion, the run directory, the ledger

Every name here is also `cai_kit.NAME` (loaded lazily), with an `a`-prefixed coroutine
variant (`cai_kit.arevise`, ...) for async callers. Each sync call works inside a running
event loop (a Jupyter cell) through `cai_kit.engine.loop.run_sync`. docs/python.md lists it.

May import `stages`, `eval`, `engine`, `llm` and the ground; imported by nothing in the
package but `cai_kit/__init__.py`'s lazy names (and the CLI, should it want to).
"""

from __future__ import annotations

from cai_kit.api.data import expand_prompts, generate, infer_constitution, judge, prefs, revise
from cai_kit.api.evals import Evaluation, evaluate_harmlessness, evaluate_rubric, evaluate_winrate
from cai_kit.api.inputs import Records
from cai_kit.engine.budget import Budget
from cai_kit.engine.loop import coroutine_of

arevise = coroutine_of(revise)
agenerate = coroutine_of(generate)
aprefs = coroutine_of(prefs)
ajudge = coroutine_of(judge)
aexpand_prompts = coroutine_of(expand_prompts)
ainfer_constitution = coroutine_of(infer_constitution)
aevaluate_winrate = coroutine_of(evaluate_winrate)
aevaluate_rubric = coroutine_of(evaluate_rubric)
aevaluate_harmlessness = coroutine_of(evaluate_harmlessness)

FUNCTIONS = (
    "revise", "generate", "prefs", "judge", "expand_prompts", "infer_constitution",
    "evaluate_winrate", "evaluate_rubric", "evaluate_harmlessness",
)  # fmt: skip

__all__ = [
    *FUNCTIONS,
    *(f"a{name}" for name in FUNCTIONS),
    "Budget",
    "Evaluation",
    "Records",
]
