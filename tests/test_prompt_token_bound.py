"""`prompt_tokens_upper` is a bound, not an estimate: a real tokenizer never counts more tokens
for a conversation than it says, on CJK, emoji and code too (issue 29: UTF-8 bytes / 3 was under
by 2x on CJK with the embedded model's tokenizer). The tokenizer is SmolLM2's, from the embedded
GGUF through llama.cpp (offline), rendering the conversation with its ChatML template."""

from __future__ import annotations

import pytest

from cai_kit.engine.pricing import prompt_tokens_upper

TEXTS = {
    "cjk": "憲法的人工智能訓練：模型根據一組原則批評並修改自己的回答。",
    "rare cjk": "龘靐齉爩麤驫鱻羴猋",
    "emoji": "👍🏽👨‍👩‍👧‍👦🧑🏿‍🚀🏳️‍🌈😀🙃",
    "code": "def f(x):\n\treturn {k: v for k, v in x.items() if v is not None}  # ok\n",
    "mixed": "Translate «naïve café» → 日本語 (カフェ) and ÄÖÜ; résumé… ✓ 🙂",
    "english": "The quick brown fox jumps over the lazy dog. " * 4,
}


@pytest.fixture(scope="module")
def tokenize():  # type: ignore[no-untyped-def]
    llama_cpp = pytest.importorskip("llama_cpp")
    from cai_kit.llm.embedded import gguf_path

    llm = llama_cpp.Llama(model_path=str(gguf_path()), vocab_only=True, verbose=False)
    return lambda text: llm.tokenize(text.encode(), add_bos=False, special=True)


@pytest.mark.parametrize("kind", list(TEXTS))
def test_no_conversation_has_more_tokens_than_the_bound(tokenize, kind: str) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "system", "content": "Answer briefly. " + TEXTS[kind]},
        {"role": "user", "content": TEXTS[kind] * 3},
    ]
    rendered = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    tokens = len(tokenize(rendered + "<|im_start|>assistant\n"))
    assert tokens <= prompt_tokens_upper(messages), (kind, tokens, prompt_tokens_upper(messages))
