"""Anthropic's prompt cache, marked where it pays.

OpenAI caches a prompt's prefix by itself (1,024 tokens or more); Anthropic caches only up to
a block marked `cache_control: {"type": "ephemeral"}`, and bills a write at 1.25x the input
price (5-minute cache) and a read at 0.1x. Our prompts put their stable part first (revise:
the constitution's few-shot turns, then the row; the judge: its rules, then the pair; a
revise conversation grows call by call), so a prefix that an earlier call of the same backend
began with is one that later calls will begin with too. `PrefixMarks` marks the longest such
prefix, when it is long enough to be cached at all (Anthropic ignores a shorter one):

    marks = PrefixMarks("anthropic/claude-sonnet-4-5")
    messages = marks.mark(messages)   # a copy; the caller's list and the call-cache key unchanged

Minimum cacheable lengths are from Anthropic's prompt caching guide (platform.claude.com,
"Cache limitations"): 1,024 tokens for Sonnet 4.5 / 4.6, Opus 4 / 4.1; 2,048 for Haiku 3 / 3.5;
4,096 for Opus 4.5 / 4.6 and Haiku 4.5.
"""

from __future__ import annotations

import hashlib
import json

from cai_kit.llm.base import ChatMessages

DEFAULT_MIN_TOKENS = 1024
MIN_TOKENS = {  # model name fragment -> the smallest prefix Anthropic caches
    "opus-4-5": 4096,
    "opus-4-6": 4096,
    "haiku-4-5": 4096,
    "3-5-haiku": 2048,
    "3-haiku": 2048,
}
CACHE_CONTROL = {"type": "ephemeral"}


def min_cache_tokens(model: str) -> int:
    return next((n for part, n in MIN_TOKENS.items() if part in model), DEFAULT_MIN_TOKENS)


def takes_cache_control(model: str) -> bool:
    """Anthropic's models (litellm's `anthropic/` provider) take `cache_control` marks."""
    return model.removeprefix("litellm:").startswith(("anthropic/", "claude-"))


def _tokens(message: dict[str, str]) -> int:
    return len(str(message.get("content") or "")) // 4 + 4  # as cost_preview.prompt_tokens


class PrefixMarks:
    """Remembers the message prefixes this backend has sent, and marks the longest one a new
    request begins with (a write the first time, a read after)."""

    def __init__(self, model: str) -> None:
        self.min_tokens = min_cache_tokens(model)
        self._seen: set[str] = set()

    def mark(self, messages: ChatMessages) -> ChatMessages:
        digest, prefixes = hashlib.sha256(), []
        for m in messages:
            digest.update(json.dumps([m.get("role"), m.get("content")]).encode())
            prefixes.append(digest.copy().hexdigest())
        # the longest earlier prefix, short of the whole request (its last turn is this call's)
        k = max((i + 1 for i, h in enumerate(prefixes[:-1]) if h in self._seen), default=0)
        self._seen.update(prefixes)
        if k == 0 or sum(_tokens(m) for m in messages[:k]) < self.min_tokens:
            return messages
        out = list(messages)
        text = str(out[k - 1].get("content") or "")
        block = {"type": "text", "text": text, "cache_control": dict(CACHE_CONTROL)}
        out[k - 1] = {**out[k - 1], "content": [block]}  # type: ignore[dict-item]
        return out
