"""`cai-kit pipeline RECIPE.yaml`: the whole loop from one recipe.

- `run.py`           the stages in order, resumable: data stages in this process, training as
                     a CLI command in its own subprocess (its memory is freed when it ends)
- `calls.py`         the data stages' library calls (expand, revise, export, prefs, infer, eval)
- `in_process.py`    how a call runs here: its output to its log, errors as exit codes
- `split.py`         training vs held-out prompts, disjoint by content
- `recipe.py`        the recipe schema (pydantic), validated with line numbers
- `recipe_paths.py`  paths in a recipe resolved against the recipe's folder
- `estimate.py`      --dry-run: calls, tokens and cost per stage before anything runs
- `report.py`        RUN/report.md: stage times, held-out prompts, win rate, implicit reward

May import `eval`, `review`, `stages`, `engine`, `llm` and the ground. Training runs as a
subprocess command, so `train` is never imported (an `hf:` model that prefs or eval samples
loads torch here, through `llm`). Imported only by `cli`.
"""
