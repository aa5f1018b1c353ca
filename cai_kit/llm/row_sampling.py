"""Per-row seeded sampling for a batched transformers `generate` (local:transformers, hf:).

`generate(do_sample=True)` draws every row of a batch from torch's one global generator: a
row's text then depends on which other requests share its micro-batch, and the per-request
`seed` can't be honoured. `RowSampler` is a logits processor that draws each row's next token
from that row's own generator (seeded by the request's seed, or fresh when it has none), after
temperature and top-p, and hands greedy decoding a one-hot choice. So the same seed gives the
same text whatever the batch, and k samples with k seeds are k draws. Use it with greedy
decoding (the model's default processors, e.g. a repetition penalty, still apply first):

    sampler = RowSampler([p.params.seed for p in group], temperature=0.8, top_p=0.95)
    model.generate(**enc, do_sample=False, logits_processor=LogitsProcessorList([sampler]))

Imports torch: import it only where a transformers model runs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor


class RowSampler(LogitsProcessor):
    def __init__(self, seeds: Sequence[int | None], temperature: float, top_p: float = 1.0) -> None:
        # No seed: a fresh draw on every call, as providers do without one.
        self.seeds = [s if s is not None else random.SystemRandom().getrandbits(63) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p
        self._generators: list[torch.Generator] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self._generators:  # on the device of the scores, created at the first step
            self._generators = [
                torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds
            ]
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:  # nucleus: keep the most likely tokens up to top_p of the mass
            sorted_p, order = probs.sort(dim=-1, descending=True)
            sorted_p[sorted_p.cumsum(dim=-1) - sorted_p > self.top_p] = 0.0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        chosen = torch.stack(
            [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self._generators)]
        )  # (batch, 1)
        onehot = torch.full_like(scores, float("-inf"))
        return onehot.scatter(-1, chosen, 0.0)  # type: ignore[return-value]
