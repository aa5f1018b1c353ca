"""Log-probs of chosen and rejected completions under a causal LM (DPO's implicit reward).

    lp = pair_logprobs(Path("RUN/heldout_pairs"), {"sft": "RUN/sft_model", "dpo": "RUN/dpo_model"},
                       tokenizer="RUN/sft_model", max_length=512)
    # {"sft": [(log π(chosen|x), log π(rejected|x)), ...], "dpo": [...]}, in the order of rows

Rows are TRL preference rows (`prompt`, `chosen`, `rejected`; standard or conversational).
`cai_kit.eval.implicit_reward` turns two models' log-probs into accuracy and margins; this
module is where torch runs, so that the evaluators themselves never import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai_kit.errors import DataError

LogProbs = list[tuple[float, float]]  # per pair: (log π(chosen|x), log π(rejected|x))


def _token_ids(tok: Any, prompt: Any, completion: Any, max_length: int) -> tuple[list[int], int]:
    """(ids of prompt + completion, index where the completion starts), within max_length."""
    if isinstance(prompt, list):
        p = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        full = tok.apply_chat_template(prompt + completion, tokenize=True)
        if hasattr(p, "input_ids"):  # some tokenizers return a BatchEncoding
            p, full = p["input_ids"], full["input_ids"]
    else:
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        full = p + tok(completion, add_special_tokens=False)["input_ids"]
    start = 0
    while start < min(len(p), len(full)) and p[start] == full[start]:
        start += 1
    keep_prompt = min(start, max_length // 2)  # keep the end of a long prompt
    ids = full[start - keep_prompt : start] + full[start:]
    return ids[:max_length], keep_prompt


def sequence_logprobs(model_path: str, rows: list[dict[str, Any]], tok: Any, max_length: int) -> LogProbs:  # fmt: skip
    """Sum of log-probs of each completion's tokens, for chosen and rejected of every row."""
    import torch

    from cai_kit.train.common import load_model

    model = load_model(model_path).eval()
    out: LogProbs = []
    with torch.no_grad():
        for row in rows:
            pair = []
            for side in ("chosen", "rejected"):
                ids, start = _token_ids(tok, row["prompt"], row[side], max_length)
                x = torch.tensor([ids])
                logits = model(input_ids=x).logits[0, :-1].float()
                logp = torch.log_softmax(logits, dim=-1)
                targets = x[0, 1:]
                token_lp = logp.gather(1, targets[:, None])[:, 0]
                pair.append(float(token_lp[max(start - 1, 0) :].sum()))
            out.append((pair[0], pair[1]))
    del model
    return out


def pair_logprobs(
    pairs: Path, models: dict[str, str], tokenizer: str, max_length: int = 512
) -> dict[str, LogProbs]:
    """Each model's log-probs (by name) of every pair in a preference JSONL file or export dir.
    A model is a directory, or a model string (`local`, `hf:PATH`)."""
    from cai_kit.train.common import load_tokenizer, resolve_model
    from cai_kit.train.data import data_files, read_rows

    rows = [r for f in data_files(pairs).values() for r in read_rows(f)]
    if not rows or not all({"prompt", "chosen", "rejected"} <= set(r) for r in rows):
        raise DataError(f"{pairs}: every row needs prompt, chosen and rejected (`cai-kit export prefs`).")  # fmt: skip
    tok = load_tokenizer(tokenizer)
    return {
        name: sequence_logprobs(resolve_model(model), rows, tok, max_length)
        for name, model in models.items()
    }
