"""The AI judges: how a judge is asked and how its answer is read, below both `stages` and
`train`, so the data stages and the reward sources use the same judges.

- `pairwise.py` the pairwise judge: both orders, soft labels from log-probs (`judge_pair`)
- `rubric.py`   rubric scoring: each principle a yes/no item on one response, or a check
- `group.py`    group judging: one prompt's G responses scored together (RULER-style)
- `client.py`   JudgeClient: one engine, backend and event loop (a worker thread) for a
                 training run's judge rewards; the --max-cost share of each torchrun rank

May import `cai_kit.engine`, `cai_kit.llm` and the ground; never torch, transformers, trl,
peft or typer. Imported by `stages`, `train`, `eval`, `pipeline` and `cli`.
"""
