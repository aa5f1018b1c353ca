"""Model backends behind one async interface (see `base.Backend`).

- `base.py`            `Backend`, `Completion`, `GenParams`, `BackendSpec`: the contract
- `registry.py`        model string -> backend (built-ins and `cai_kit.backends` plugins alike)
- `specs.py`           the built-in backend specs
- `providers.py`       the hosted-provider table: base URLs, key variables, log-probs, prices
- `openai_compat.py`   the aiohttp client for OpenAI-compatible APIs and servers
- `litellm_backend.py` every other provider, through litellm
- `local.py`, `embedded.py`, `llama_batch.py`, `row_sampling.py`, `fingerprint.py`
                       the embedded model and `hf:` checkpoints (llama.cpp, transformers)

May import only the ground (`errors`, `paths`, `records`); torch, transformers and llama.cpp
only inside the local backends' functions. Imported by everything above it (`engine` and up).
"""

from cai_kit.llm.base import Backend, Completion, GenParams, TokenLogprob, Usage
from cai_kit.llm.registry import BackendSpec, get_backend, list_backends, register

__all__ = [
    "Backend",
    "BackendSpec",
    "Completion",
    "GenParams",
    "TokenLogprob",
    "Usage",
    "get_backend",
    "list_backends",
    "register",
]
