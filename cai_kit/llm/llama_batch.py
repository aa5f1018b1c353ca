"""Batched decoding of the embedded model on llama.cpp: many conversations, one pass per step.

llama.cpp decodes several sequences in one `llama_decode` when they share a context whose
`n_seq_max` is above one. `BatchedLlama` runs one scheduler thread (continuous batching):
each step feeds every active conversation's next token (and chunks of new prompts) in one
batch; requests join and leave between steps. On a CPU a step for 16 conversations costs a
few times one conversation's step, so a job's throughput rises several-fold. A finished
conversation's KV cache is kept: a new request takes the free sequence that shares the
longest token prefix with it (a revision extends its critique's conversation, few-shot turns
repeat), so only the new tokens are computed.

Each request gets its own sampler chain, the one `Llama.create_chat_completion` builds (top-k
40, typical-p 1, top-p, min-p 0.05, temperature, then a draw seeded with the request's seed;
greedy at temperature 0), and its own KV-cache sequence, so its text depends on its messages,
parameters and seed, not on which requests run beside it.

    engine = BatchedLlama(llm, n_parallel=16, n_ctx_seq=2048)   # llm: a loaded llama_cpp.Llama
    future = engine.submit(messages, params)                      # a concurrent.futures.Future
    completion = future.result()
    engine.close()
"""

from __future__ import annotations

import math
import random
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from cai_kit.errors import FatalBackendError
from cai_kit.llm.base import ChatMessages, Completion, GenParams, TokenLogprob, Usage

# create_chat_completion's defaults for what GenParams does not set
_TOP_K, _MIN_P, _TYPICAL_P = 40, 0.05, 1.0


@dataclass
class _Request:
    prompt: list[int]
    params: GenParams
    stop: list[str]
    future: Future[Completion]
    seq: int = -1
    fed: int = 0  # prompt tokens already in the KV cache
    out: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    sampler: Any = None
    batch_index: int = -1  # where this request's logits are in the current batch


class BatchedLlama:
    """A scheduler thread that decodes up to `n_parallel` conversations together."""

    def __init__(
        self, llm: Any, n_parallel: int = 16, n_ctx_seq: int = 2048, n_batch: int = 512
    ) -> None:
        from cai_kit.llm.embedded import import_llama_cpp

        llama_cpp = import_llama_cpp()
        from llama_cpp import _internals, llama_chat_format

        if llm.chat_format != "chat_template.default":
            raise FatalBackendError(
                f"Batched decoding needs a GGUF chat template ({llm.chat_format})."
            )
        self.llm = llm
        self.n_parallel = n_parallel
        self.n_ctx_seq = n_ctx_seq
        self.n_batch = n_batch
        model = llm._model
        eos = model.token_eos()
        self._formatter = llama_chat_format.Jinja2ChatFormatter(
            template=llm.metadata["tokenizer.chat_template"],
            eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(model.token_bos()) if model.token_bos() != -1 else "",
            stop_token_ids=[eos],
        )
        # the single context's settings (threads, attention, rope), sized for n conversations
        params = type(llm.context_params).from_buffer_copy(llm.context_params)
        params.n_ctx = n_parallel * n_ctx_seq
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_parallel
        params.kv_unified = False  # one KV stream per sequence: attention sees its own tokens
        # flash attention: without it llama.cpp builds the attention of every stream over
        # padded caches, and a 16-conversation step is ~10x slower on a CPU
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self._lib = llama_cpp
        self._internals = _internals
        self._ctx = _internals.LlamaContext(model=model, params=params, verbose=False)
        self._batch = _internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
        self._vocab = model.vocab
        self._n_vocab = llm.n_vocab()
        self._queue: deque[_Request] = deque()
        self._active: list[_Request] = []
        self._free = list(range(n_parallel))
        self._kv: list[list[int]] = [[] for _ in range(n_parallel)]  # tokens held per sequence
        self._cond = threading.Condition()
        self._closed = False
        self.max_active = 0  # the most conversations decoded in one step so far
        self._thread = threading.Thread(target=self._loop, name="cai-kit-llama-batch", daemon=True)
        self._thread.start()

    # --- public --------------------------------------------------------------------------
    def prompt_tokens(self, messages: ChatMessages) -> tuple[list[int], list[str]]:
        """The prompt as create_chat_completion tokenizes it, and the template's stop strings."""
        result = self._formatter(messages=messages)
        tokens = self.llm.tokenize(
            result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
        )
        stop = (
            result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
        )
        return tokens, stop

    def fits(self, n_prompt: int, params: GenParams) -> bool:
        return n_prompt + params.max_tokens <= self.n_ctx_seq

    def submit(self, prompt: list[int], stop: list[str], params: GenParams) -> Future[Completion]:
        future: Future[Completion] = Future()
        req = _Request(prompt, params, [*params.stop, *stop], future)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batched llama.cpp engine is closed")
            self._queue.append(req)
            self._cond.notify()
        return future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)
        self._batch.close()
        self._ctx.close()

    # --- the scheduler thread ------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._queue and not self._active:
                    self._cond.wait()
                if self._closed:
                    failed = [*self._queue, *self._active]
                    self._queue.clear()
                    self._active.clear()
                    break
                while self._queue and self._free:
                    req = self._queue.popleft()
                    if req.future.set_running_or_notify_cancel():
                        self._start(req)
            try:
                self._step()
            except Exception as exc:  # the context is unusable for these requests: fail them
                for req in self._active:
                    self._finish(req, error=exc)
        for req in failed:
            if not req.future.done():
                req.future.set_exception(RuntimeError("the local model was closed"))

    def _start(self, req: _Request) -> None:
        # The free sequence whose cached tokens share the longest prefix with this prompt (a
        # revision extends its critique's conversation): only the rest is computed.
        best, keep = self._free[-1], -1
        for seq in self._free:
            n = _common_prefix(self._kv[seq], req.prompt)
            if n > keep:
                best, keep = seq, n
        keep = min(keep, len(req.prompt) - 1)  # at least one token to compute: its logits
        self._free.remove(best)
        req.seq = best
        self._lib.llama_memory_seq_rm(self._ctx.memory, best, keep, -1)
        del self._kv[best][keep:]
        req.fed = keep
        p = req.params
        s = self._internals.LlamaSampler()
        if p.temperature <= 0:
            s.add_greedy()
        else:
            s.add_top_k(_TOP_K)
            s.add_typical(_TYPICAL_P, 1)
            s.add_top_p(p.top_p, 1)
            s.add_min_p(_MIN_P, 1)
            s.add_temp(p.temperature)
            s.add_dist(
                p.seed if p.seed is not None else random.randrange(2**31)
            )  # no seed: a fresh draw
        req.sampler = s
        if p.top_logprobs > 0:
            req.logprobs = []
        self._active.append(req)

    def _step(self) -> None:
        b = self._batch.batch
        n = 0
        for req in self._active:  # decoding requests first: one token each
            req.batch_index = -1
            if req.fed == len(req.prompt):
                n = self._add(b, n, req.out[-1], len(req.prompt) + len(req.out) - 1, req, True)
        for req in self._active:  # then prompt chunks, as many tokens as the batch has left
            if req.fed < len(req.prompt) and n < self.n_batch:
                take = min(len(req.prompt) - req.fed, self.n_batch - n)
                for k in range(take):
                    pos = req.fed + k
                    n = self._add(b, n, req.prompt[pos], pos, req, pos == len(req.prompt) - 1)
                req.fed += take
        if n == 0:
            return
        self.max_active = max(self.max_active, len(self._active))
        b.n_tokens = n
        self._ctx.decode(self._batch)
        for req in list(self._active):
            if req.batch_index < 0:
                continue
            logp = top = None
            if req.logprobs is not None:  # before sampling: the raw distribution
                logp, top = self._logprobs(req)
            token = req.sampler.sample(self._ctx, req.batch_index)
            if self._lib.llama_vocab_is_eog(self._vocab, token):
                self._finish(req, reason="stop")
                continue
            req.out.append(token)
            if req.logprobs is not None and logp is not None and top is not None:
                req.logprobs.append(
                    TokenLogprob(token=self._piece(token), logprob=float(logp[token]), top=top)
                )
            text = self._text(req)
            if any(s and s in text for s in req.stop):
                self._finish(req, reason="stop")
            elif len(req.out) >= req.params.max_tokens:
                self._finish(req, reason="length")

    def _add(self, b: Any, n: int, token: int, pos: int, req: _Request, logits: bool) -> int:
        self._kv[req.seq].append(token)  # positions are consecutive per sequence
        b.token[n] = token
        b.pos[n] = pos
        b.n_seq_id[n] = 1
        b.seq_id[n][0] = req.seq
        b.logits[n] = logits
        if logits:
            req.batch_index = n
        return n + 1

    def _logprobs(self, req: _Request) -> tuple[Any, dict[str, float]]:
        """Log-softmax of this step's logits and its top-k candidates (as text)."""
        import numpy as np

        ptr = self._lib.llama_get_logits_ith(self._ctx.ctx, req.batch_index)
        logp = np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).astype(np.float64)
        logp -= logp.max()
        logp -= math.log(float(np.exp(logp).sum()))
        k = min(req.params.top_logprobs, 20)
        ids = np.argpartition(-logp, k)[:k]
        ids = ids[np.argsort(-logp[ids])]
        top = {self._piece(int(t)): float(logp[t]) for t in ids if math.isfinite(logp[t])}
        return logp, top

    def _piece(self, token: int) -> str:
        return self.llm.detokenize([token]).decode("utf-8", errors="ignore")

    def _text(self, req: _Request) -> str:
        return self.llm.detokenize(req.out, prev_tokens=req.prompt).decode("utf-8", errors="ignore")

    def _finish(self, req: _Request, reason: str = "stop", error: Exception | None = None) -> None:
        if error is not None:  # what the cache holds is unknown: start this sequence afresh
            self._lib.llama_memory_seq_rm(self._ctx.memory, req.seq, -1, -1)
            self._kv[req.seq].clear()
        self._active.remove(req)
        self._free.append(req.seq)
        req.sampler = None
        if req.future.done():
            return
        if error is not None:
            req.future.set_exception(error)
            return
        text = self._text(req)
        cut = [text.index(s) for s in req.stop if s and s in text]
        if cut:
            text, reason = text[: min(cut)], "stop"
        req.future.set_result(
            Completion(
                text=text,
                logprobs=req.logprobs or None,
                usage=Usage(len(req.prompt), len(req.out)),
                cost=0.0,
                finish_reason=reason,
            )
        )


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
