"""Score pairs with a trained reward model: accuracy = share of pairs with r(chosen) > r(rejected)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cai_kit.errors import DataError


def _text(tokenizer: Any, prompt: Any, completion: Any) -> str:
    if isinstance(prompt, list) and isinstance(completion, list):
        return tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    return f"{prompt if isinstance(prompt, str) else ''}{completion if isinstance(completion, str) else ''}"


def load_reward_model(path: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification

    from cai_kit.train.common import load_tokenizer

    adapter = path / "adapter_config.json"
    if adapter.is_file():
        from peft import PeftModel

        base = json.loads(adapter.read_text())["base_model_name_or_path"]
        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=1, dtype=torch.float32
        )
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch.float32
        )
    tok = load_tokenizer(str(path))
    model.config.pad_token_id = tok.pad_token_id
    return model.eval(), tok


def score_pairs(
    model_dir: Path, pairs: Path, out: Path | None = None, batch_size: int = 8
) -> dict[str, Any]:
    """Scores for chosen and rejected of every pair; writes OUT (JSONL) when given."""
    import torch

    from cai_kit.train.data import data_files, read_rows

    rows = read_rows(data_files(pairs).get("test") or data_files(pairs)["train"])
    if not rows or not all("chosen" in r and "rejected" in r for r in rows):
        raise DataError(
            f"{pairs}: every row needs chosen and rejected (as written by `cai-kit export reward`)."
        )
    model, tok = load_reward_model(model_dir)
    texts = [
        _text(tok, r.get("prompt", ""), r[side]) for r in rows for side in ("chosen", "rejected")
    ]
    scores: list[float] = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tok(
                texts[i : i + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=1024,
            )
            scores += model(**enc).logits[:, 0].float().tolist()
    results = [
        {"chosen_score": scores[2 * i], "rejected_score": scores[2 * i + 1]}
        for i in range(len(rows))
    ]
    accuracy = sum(r["chosen_score"] > r["rejected_score"] for r in results) / len(results)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            "".join(
                json.dumps({**row, **res}) + "\n" for row, res in zip(rows, results, strict=True)
            )
        )
    return {
        "pairs": len(rows),
        "accuracy": accuracy,
        "mean_margin": sum(r["chosen_score"] - r["rejected_score"] for r in results) / len(results),
    }
