"""Local backends: the embedded model through llama.cpp, and transformers checkpoints.

- `local` / `local:llama`: SmolLM2-135M-Instruct GGUF through llama.cpp. Concurrent calls are
  decoded together, up to `parallel` (16) conversations per step in one llama.cpp context
  (`cai_kit.llm.llama_batch`), so a job runs several times faster than one call at a time,
  with the same text for the same messages, parameters and seed. `parallel=1` (or a request
  longer than the batched context's 2,048 tokens per conversation) takes the one-at-a-time
  path: one 4,096-token context in a worker thread, plus one with `logits_all=True` when
  top log-probs are asked for.
- `local:transformers` and `hf:PATH`: a transformers checkpoint (the embedded model converted
  once, or e.g. a model you trained; PEFT adapter dirs load on their base). Concurrent
  `chat()` calls are micro-batched into one left-padded `generate`, so many prompts run
  faster than one by one; each row samples from its own seed (`row_sampling.RowSampler`), so
  a seed gives the same text whatever else shares the batch.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai_kit.errors import ConfigError, FatalBackendError, RetryableError
from cai_kit.llm.base import (
    Backend,
    ChatMessages,
    Completion,
    GenParams,
    TokenLogprob,
    Usage,
    parse_openai_logprobs,
)
from cai_kit.llm.embedded import gguf_path

# One transformers load or generate at a time in the process: transformers' lazy first import
# is not thread-safe (two threads importing it get "cannot import name 'AutoModelForCausalLM'"),
# and a model loading while another generated gave garbage text for that batch (`eval safety
# hf:A --baseline local:transformers`, `eval winrate --model hf:A --baseline hf:B`).
_TRANSFORMERS = threading.RLock()


def make_local_backend(model: str, api_base: str | None = None, **options: Any) -> Backend:
    from cai_kit.llm import embedded

    if model == "local:transformers":
        return TransformersBackend(embedded.trainable_checkpoint(), name=model, **options)
    return LlamaCppBackend(embedded.gguf_path(), name=model, **options)


def make_hf_backend(model: str, api_base: str | None = None, **options: Any) -> Backend:
    path = Path(model.removeprefix("hf:")).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"No checkpoint directory at {path} (from {model!r}); pass hf:PATH to a saved model."
        )
    return TransformersBackend(path, name=model, **options)


class LlamaCppBackend(Backend):
    kind = "local"
    supports_logprobs = True

    def __init__(
        self,
        gguf: Path,
        name: str = "local",
        n_ctx: int = 4096,
        parallel: int = 16,
        n_ctx_seq: int = 2048,
        **_: Any,
    ) -> None:
        super().__init__(name)
        self.gguf = gguf
        self.n_ctx = n_ctx
        self.parallel = parallel
        self.n_ctx_seq = n_ctx_seq
        # one at a time, a few in flight keep the thread busy; batched, fill every slot
        self.default_concurrency = 4 if parallel <= 1 else parallel
        self._llms: dict[bool, Any] = {}
        self._lock = threading.Lock()  # the one-at-a-time contexts: one call at a time
        self._load_lock = threading.Lock()  # creating a model or the batched engine
        self._batched: Any = None

    def identity(self) -> dict[str, Any]:
        if self.parallel <= 1:
            return {"kind": self.kind, "model": self.gguf.name}
        # another decoding path gives (slightly) other text: its own cache entries
        return {"kind": self.kind, "model": self.gguf.name, "decode": "batched-q8_0"}

    def _llm(self, logits_all: bool) -> Any:
        with self._load_lock:
            return self._load(logits_all)

    def _load(self, logits_all: bool) -> Any:
        if logits_all not in self._llms:
            from cai_kit.llm.embedded import import_llama_cpp

            Llama = import_llama_cpp().Llama
            self._llms[logits_all] = Llama(
                model_path=str(self.gguf),
                n_ctx=self.n_ctx,
                n_threads=_threads(),
                logits_all=logits_all,
                verbose=False,
            )
        return self._llms[logits_all]

    def _engine(self) -> Any:
        with self._load_lock:
            if self._batched is None:
                from cai_kit.llm.embedded import batch_gguf, import_llama_cpp
                from cai_kit.llm.llama_batch import BatchedLlama

                llm = import_llama_cpp().Llama(
                    model_path=str(batch_gguf() if self.gguf == gguf_path() else self.gguf),
                    n_ctx=512,  # the batched engine makes its own, bigger context
                    n_threads=_threads(),
                    verbose=False,
                )
                self._batched = BatchedLlama(
                    llm, n_parallel=self.parallel, n_ctx_seq=self.n_ctx_seq
                )
            return self._batched

    async def chat(self, messages: ChatMessages, params: GenParams) -> Completion:
        if self.parallel <= 1:
            return await asyncio.to_thread(self._chat_sync, messages, params)
        engine = await asyncio.to_thread(self._engine)
        try:
            prompt, stop = engine.prompt_tokens(messages)
        except Exception as exc:  # e.g. a message the chat template cannot render
            raise FatalBackendError(f"The local model refused the request: {exc}") from None
        if not engine.fits(len(prompt), params):  # longer than a batched slot: the big context
            return await asyncio.to_thread(self._chat_sync, messages, params)
        try:
            completion = await asyncio.wrap_future(engine.submit(prompt, stop, params))
        except RuntimeError as exc:  # llama_decode failed (e.g. no room): the engine retries
            raise RetryableError(f"The local model failed this step: {exc}") from None
        completion.model = self.model
        return completion

    async def aclose(self) -> None:
        if self._batched is not None:
            engine, self._batched = self._batched, None
            await asyncio.to_thread(engine.close)

    @staticmethod
    def _kwargs(params: GenParams) -> dict[str, Any]:
        return {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "stop": list(params.stop) or None,
            # No seed: a fresh draw, as providers do (llama-cpp-python would chain its own seed).
            "seed": params.seed if params.seed is not None else random.randrange(2**31),
        }

    def _chat_sync(self, messages: ChatMessages, params: GenParams) -> Completion:
        want_lp = params.top_logprobs > 0
        kwargs = self._kwargs(params)
        if want_lp:
            kwargs.update(logprobs=True, top_logprobs=min(params.top_logprobs, 20))
        with self._lock:
            try:
                llm = self._llm(want_lp)
                # The whole prompt is evaluated afresh: llama.cpp would reuse the KV cache of
                # a shared prefix and evaluate only the rest, whose logits can differ in the
                # last bits (other kernels for other batch sizes), so the same seed would give
                # another sample depending on what was asked before.
                llm.reset()
                r = llm.create_chat_completion(messages=messages, **kwargs)
            except ValueError as exc:  # e.g. the prompt exceeds the context window
                raise FatalBackendError(f"The local model refused the request: {exc}") from None
        choice = r["choices"][0]
        return Completion(
            text=choice["message"]["content"] or "",
            logprobs=parse_openai_logprobs(choice.get("logprobs")) if want_lp else None,
            usage=Usage(r["usage"]["prompt_tokens"], r["usage"]["completion_tokens"]),
            cost=0.0,
            model=self.model,
            finish_reason=choice.get("finish_reason"),
        )

    async def chat_stream(
        self, messages: ChatMessages, params: GenParams
    ) -> AsyncIterator[str | Completion]:
        """Text deltas as llama.cpp makes them, then the whole Completion (used by `serve`).

        Closing the iterator early (the client left) stops generation at the next token. The
        Completion's usage counts the reply's tokens; llama.cpp's stream does not report the
        prompt's, so `prompt_tokens` is 0.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | Completion | BaseException] = asyncio.Queue()
        stop = threading.Event()

        def put(item: str | Completion | BaseException) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            parts: list[str] = []
            finish = None
            try:
                with self._lock:
                    llm = self._llm(False)
                    llm.reset()  # the whole prompt evaluated afresh, as in _chat_sync
                    chunks = llm.create_chat_completion(
                        messages=messages, stream=True, **self._kwargs(params)
                    )
                    for chunk in chunks:
                        if stop.is_set():
                            chunks.close()  # the client left: stop decoding now
                            break
                        choice = chunk["choices"][0]
                        if delta := choice["delta"].get("content"):
                            parts.append(delta)
                            put(delta)
                        finish = choice.get("finish_reason") or finish
                    text = "".join(parts)
                    n_out = len(llm.tokenize(text.encode(), add_bos=False)) if text else 0
                put(Completion(text=text, usage=Usage(0, n_out), cost=0.0, model=self.model,
                               finish_reason=finish))  # fmt: skip
            except ValueError as exc:  # e.g. the prompt exceeds the context window
                put(FatalBackendError(f"The local model refused the request: {exc}"))
            except BaseException as exc:  # handed to the awaiting side, which re-raises it
                put(exc)

        worker = loop.run_in_executor(None, work)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Completion):
                    break
        finally:
            stop.set()
            await asyncio.shield(worker)


def _threads() -> int:
    """llama.cpp threads: CAI_KIT_LLAMA_THREADS, else every core up to 8."""
    env = os.environ.get("CAI_KIT_LLAMA_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else max(1, min(8, os.cpu_count() or 1))


@dataclass
class _Pending:
    messages: ChatMessages
    params: GenParams
    future: asyncio.Future[Completion]


class TransformersBackend(Backend):
    kind = "hf"
    default_concurrency = 16
    supports_logprobs = True

    def __init__(
        self, path: Path, name: str, max_batch: int = 16, window_s: float = 0.02, **_: Any
    ) -> None:
        super().__init__(name)
        self.path = path
        self.max_batch = max_batch
        self.window_s = window_s
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._load_lock = threading.Lock()

    def identity(self) -> dict[str, Any]:
        # A fingerprint of the files' contents (weights, adapter, configs, tokenizer): new
        # weights in the same directory never reuse old results, whatever their mtime or size.
        from cai_kit.llm.fingerprint import Fingerprinter

        fp = self.__dict__.setdefault("_fingerprinter", Fingerprinter())
        return {"kind": self.kind, "weights": fp(self.path)}

    def _load(self) -> None:
        # One load or generate at a time in the process. Two backends (a model and its
        # baseline) in two threads raced: loading both, in transformers' lazy import ("cannot
        # import name 'AutoModelForCausalLM'"); one loading while the other generated, into
        # garbage text for that batch (`eval safety hf:A --baseline local:transformers`).
        with _TRANSFORMERS, self._load_lock:
            if self._model is not None:
                return
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            trust = os.environ.get("CAI_KIT_TRUST_REMOTE_CODE") == "1"
            adapter_cfg = self.path / "adapter_config.json"
            if adapter_cfg.is_file():
                from peft import PeftModel

                base = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
                model = AutoModelForCausalLM.from_pretrained(
                    base, trust_remote_code=trust, use_safetensors=True
                )
                model = PeftModel.from_pretrained(model, self.path).merge_and_unload()
                tok_src = self.path if (self.path / "tokenizer_config.json").is_file() else base
            else:
                model = AutoModelForCausalLM.from_pretrained(
                    self.path,
                    trust_remote_code=trust,
                    use_safetensors=True,
                    dtype=torch.float32,
                )
                tok_src = self.path
            tokenizer = AutoTokenizer.from_pretrained(tok_src, trust_remote_code=trust)
            tokenizer.padding_side = "left"
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            self._model, self._tokenizer = model.eval(), tokenizer

    async def chat(self, messages: ChatMessages, params: GenParams) -> Completion:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._batch_loop())
        fut: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(messages, params, fut))
        return await fut

    async def _batch_loop(self) -> None:
        assert self._queue is not None
        while True:
            first = await self._queue.get()
            batch = [first]
            deadline = asyncio.get_running_loop().time() + self.window_s
            while len(batch) < self.max_batch:
                timeout = deadline - asyncio.get_running_loop().time()
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), max(timeout, 0)))
                except asyncio.TimeoutError:
                    break
            groups: dict[GenParams, list[_Pending]] = {}
            for p in batch:  # one generate per distinct parameter set
                if not p.future.done():  # a caller that timed out while queued: skip it
                    groups.setdefault(p.params.replace(seed=None), []).append(p)
            for group in groups.values():
                try:
                    results = await asyncio.to_thread(self._generate, group)
                except Exception as exc:  # hand the error to every caller still waiting
                    for p in group:
                        if not p.future.done():
                            p.future.set_exception(exc)
                    continue
                for p, r in zip(group, results, strict=True):
                    if not p.future.done():  # a caller that timed out mid-batch is gone
                        p.future.set_result(r)

    def _generate(self, group: list[_Pending]) -> list[Completion]:
        import torch

        self._load()
        tok, model = self._tokenizer, self._model
        params = group[0].params
        prompts = [
            tok.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True)
            for p in group
        ]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        sample = params.temperature > 0
        processors = None
        if sample:  # each row draws from its own seed, whatever else shares the batch
            with _TRANSFORMERS:  # (transformers' lazy import is not thread-safe)
                from transformers import LogitsProcessorList

                from cai_kit.llm.row_sampling import RowSampler

            seeds = [p.params.seed for p in group]
            processors = LogitsProcessorList([RowSampler(seeds, params.temperature, params.top_p)])
        with _TRANSFORMERS, torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=params.max_tokens,
                do_sample=False,  # greedy over RowSampler's one-hot choice when sampling
                temperature=None,
                top_p=None,
                top_k=None,
                logits_processor=processors,
                pad_token_id=tok.pad_token_id,
                return_dict_in_generate=True,
                output_scores=params.top_logprobs > 0 and not sample,
                output_logits=params.top_logprobs > 0 and sample,  # scores are one-hot then
                stop_strings=list(params.stop) or None,
                tokenizer=tok if params.stop else None,
            )
        new = out.sequences[:, enc["input_ids"].shape[1] :]
        results = []
        for i in range(len(group)):
            ids = new[i].tolist()
            eos = tok.eos_token_id
            n = next((j for j, t in enumerate(ids) if t in (eos, tok.pad_token_id)), len(ids))
            text = tok.decode(ids[:n], skip_special_tokens=True)
            lps = None
            if params.top_logprobs > 0:
                lps = []
                for step in range(n):
                    step_scores = out.logits if sample else out.scores
                    logp = torch.log_softmax(step_scores[step][i].float(), dim=-1)
                    top = torch.topk(logp, min(params.top_logprobs, 20))
                    lps.append(
                        TokenLogprob(
                            token=tok.decode([ids[step]]),
                            logprob=float(logp[ids[step]]),
                            top={
                                tok.decode([int(t)]): float(v)
                                for v, t in zip(top.values, top.indices, strict=True)
                                if math.isfinite(float(v))
                            },
                        )
                    )
            results.append(
                Completion(
                    text=text,
                    logprobs=lps,
                    usage=Usage(int(enc["attention_mask"][i].sum()), n),
                    cost=0.0,
                    model=self.model,
                    finish_reason="stop" if n < len(ids) else "length",
                )
            )
        return results

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
            self._queue = None
