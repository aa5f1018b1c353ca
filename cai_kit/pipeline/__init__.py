"""`cai-kit pipeline RECIPE.yaml`: the whole loop from one recipe.

- `run.py`           the stages in order, each a CLI command in its own subprocess, resumable
- `split.py`         training vs held-out prompts, disjoint by content
- `recipe.py`        the recipe schema (pydantic), validated with line numbers
- `recipe_paths.py`  paths in a recipe resolved against the recipe's folder
- `estimate.py`      --dry-run: calls, tokens and cost per stage before anything runs
- `report.py`        RUN/report.md: stage times, held-out prompts, win rate, implicit reward

May import `stages`, `engine`, `llm` and the ground (stages run as subprocess commands, so
it never imports `train` or torch). Imported only by `cli`.
"""
