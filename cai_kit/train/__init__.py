"""Local training on TRL + PEFT (imports torch/transformers/trl only when used)."""
