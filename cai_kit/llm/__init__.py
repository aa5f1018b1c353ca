"""Model backends behind one async interface (see `base.Backend`)."""

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
