"""Evaluation: did the model move, and can the judge be trusted?

- `winrate.py`          win rate against a baseline on held-out prompts, judged in both orders
- `harmlessness.py`     share of harmful answers to red-team prompts, by a judge
- `rubric.py`           per-principle rubric pass rates, before vs after, with bootstrap CIs
- `safety.py`           harm vs over-refusal with bootstrap CIs, helpfulness, hard constraints;
                        its graders (`refusal.py`), prompt sets (`safety_sets.py`) and report
                        with the frontier plot (`safety_report.py`)
- `implicit_reward.py`  DPO implicit-reward accuracy on held-out pairs (runs trained models
                        through `cai_kit.train`, so it needs the [train] extra)
- `judge_report.py`     the judge's position consistency, calibration, agreement with gold labels

May import `stages`, `engine`, `llm` and the ground (and `train` for implicit reward only);
never torch, transformers, trl, peft or typer directly. Imported only by `cli` and
the pipeline's subprocess commands; never by a stage, the engine or the ground.
"""
