"""Model loading, LoRA, CPU-safe defaults and tiny test models for the trainers.

`--model local` means the embedded SmolLM2-135M-Instruct, converted once from its GGUF to a
safetensors checkpoint (`cai_kit.llm.embedded.trainable_checkpoint`); `hf:PATH` is a
checkpoint on disk; anything else is a Hugging Face Hub id (needs network).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cai_kit.errors import ConfigError


def resolve_model(model: str) -> str:
    """A model string -> something `from_pretrained` accepts."""
    if model in ("local", "local:transformers", "local:llama"):
        from cai_kit.llm.embedded import trainable_checkpoint

        return str(trainable_checkpoint())
    if model.startswith("hf:"):
        path = Path(model[3:]).expanduser()
        if not path.is_dir():
            raise ConfigError(f"No checkpoint directory at {path} (from {model!r}).")
        return str(path)
    return model


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, *, for_reward: bool = False, load_in_4bit: bool = False) -> Any:
    """A causal LM (or a 1-logit sequence classifier for reward models), float32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if has_cuda() else torch.float32}
    if load_in_4bit:
        if not has_cuda():
            raise ConfigError(
                "--load-in-4bit (QLoRA) needs a CUDA GPU and bitsandbytes; drop it on CPU."
            )
        try:
            from transformers import BitsAndBytesConfig
        except ImportError:  # pragma: no cover
            raise ConfigError(
                "--load-in-4bit needs bitsandbytes: pip install bitsandbytes."
            ) from None
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16
        )
    adapter = adapter_base(path)
    if adapter is not None:
        # Start from the adapter's model, merged: a LoRA on top then has "adapters off" = this
        # model (the SFT model for `train sft` -> `train dpo`), not the bare base underneath.
        from peft import PeftModel

        if load_in_4bit:
            raise ConfigError(
                f"{path} is a LoRA adapter: --load-in-4bit needs a full model to start from."
            )
        base = load_model(adapter, for_reward=for_reward)  # the base may be an adapter itself
        return PeftModel.from_pretrained(base, path).merge_and_unload()
    if for_reward:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model


def adapter_base(path: str) -> str | None:
    """The base model of a LoRA adapter directory (None when `path` is a full model)."""
    import json

    cfg = Path(path) / "adapter_config.json"
    if not cfg.is_file():
        return None
    return str(json.loads(cfg.read_text())["base_model_name_or_path"])


def lora_config(r: int = 16, alpha: int = 32, dropout: float = 0.05, target_modules: str = "all-linear",
                task_type: str = "CAUSAL_LM") -> Any:  # fmt: skip
    from peft import LoraConfig

    targets: Any = (
        target_modules
        if target_modules == "all-linear"
        else [t.strip() for t in target_modules.split(",")]
    )
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type=task_type
    )


def tiny_model(
    out_dir: Path, *, hidden: int = 32, layers: int = 2, seed: int = 0, init_range: float = 0.02
) -> Path:
    """A tiny Llama-config model with the embedded tokenizer, saved to out_dir (for tests)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from cai_kit.llm.embedded import trainable_checkpoint

    if (out_dir / "config.json").is_file():
        return out_dir
    tok = load_tokenizer(str(trainable_checkpoint()))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True, initializer_range=init_range,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Inside our training commands only: no library warnings a user cannot act on
    (FutureWarning/DeprecationWarning from torch, transformers, TRL, PEFT, ...; transformers'
    load report, e.g. "score.weight MISSING ... newly initialized" for every reward model,
    whose head is new by design). Errors still show; everything is restored afterwards."""
    import warnings

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings(
            "ignore", category=UserWarning,
            module=r"(torch|transformers|trl|peft|accelerate|datasets|huggingface_hub)(\.|$)",
        )  # fmt: skip
        hf_logging.set_verbosity_error()
        try:
            yield
        finally:
            hf_logging.set_verbosity(level)
