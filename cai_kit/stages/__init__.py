"""The data stages: records in, records out, each one resumable job over the engine.

- `generate.py`  k sampled responses per prompt (the raw material of preference pairs)
- `revise.py`    critique -> revise rounds with a sampled principle: SFT data with its trace
- `prefs.py`     sample responses, judge pairs: preference records
- `export.py`    records -> the column layouts TRL's trainers read (SFT, DPO, KTO)
- `infer.py`     Inverse Constitutional AI: principles that explain preference labels
- `expand.py`    new prompts in the style and spread of a seed file
- `dedupe.py`    exact and near-duplicate texts (normalised text, MinHash via datasketch)

The judges they ask (pairwise, rubric, group) are `cai_kit.judges`, shared with `train`.

May import `cai_kit.judges`, `cai_kit.engine`, `cai_kit.llm` and the ground; never torch, transformers, trl,
peft or typer, so a data job runs on the API-only install. Imported by `eval`, `serve`,
`pipeline` and `cli`; never by `engine`, `llm` or the ground.
"""
