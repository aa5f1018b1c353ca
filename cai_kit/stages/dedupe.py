"""Exact and near-duplicate text detection: normalised text, then MinHash (`datasketch`).

Used by `prompts expand` (new prompts against each other and the seed file) and `constitution
infer` (candidate principles that say the same thing). Two texts are *exact* duplicates when
their normalised forms (lower case, punctuation dropped, whitespace collapsed) are equal, and
*near* duplicates when the Jaccard similarity of their shingle sets (the words and word pairs
of the normalised text) reaches `threshold`. MinHash LSH finds the candidates in sub-linear
time, tuned to a lower threshold (`threshold - LSH_SLACK`) so that true near-duplicates are
rarely missed; each candidate is then checked by its exact Jaccard, so a bucket collision never
drops a text and the decision at the threshold is exact. Hashing is seeded: the same texts give
the same answer every run.

    seen = NearDuplicates(threshold=0.7)
    seen.add("seed-1", "How do I pick a lock?")
    seen.check("how do I pick a lock")   # ("exact", "seed-1")
    seen.check("Tell me how to pick a lock, please")  # ("near", "seed-1") or None by Jaccard
"""

from __future__ import annotations

import re
import unicodedata
from itertools import pairwise
from typing import Literal

_PUNCT = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")
NUM_PERM = 128
LSH_SLACK = 0.2  # LSH finds candidates from this far below the threshold (fewer misses)
Kind = Literal["exact", "near"]


def normalise(text: str) -> str:
    """Lower case, accents folded (NFKC), punctuation dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def shingles(text: str) -> set[str]:
    """The words and adjacent word pairs of the normalised text."""
    words = normalise(text).split()
    return set(words) | {f"{a} {b}" for a, b in pairwise(words)}


def jaccard(a: str, b: str) -> float:
    """Exact Jaccard similarity of two texts' shingle sets (for small sets: no MinHash)."""
    sa, sb = shingles(a), shingles(b)
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


class NearDuplicates:
    """An index of texts; `check` says whether a new text duplicates one already added."""

    def __init__(self, threshold: float = 0.7, num_perm: int = NUM_PERM, seed: int = 1) -> None:
        from datasketch import MinHashLSH

        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"the near-duplicate threshold must be in (0, 1], not {threshold}")
        self.threshold, self.num_perm, self.seed = threshold, num_perm, seed
        self._lsh = MinHashLSH(threshold=max(0.05, threshold - LSH_SLACK), num_perm=num_perm)
        self._exact: dict[str, str] = {}  # normalised text -> key
        self._sets: dict[str, set[str]] = {}  # key -> shingles

    def _minhash(self, sh: set[str]):  # type: ignore[no-untyped-def]
        from datasketch import MinHash

        m = MinHash(num_perm=self.num_perm, seed=self.seed)
        m.update_batch([s.encode("utf-8") for s in sorted(sh)])
        return m

    def check(self, text: str) -> tuple[Kind, str] | None:
        """("exact" | "near", the key it duplicates), or None for a new text."""
        norm = normalise(text)
        if norm in self._exact:
            return "exact", self._exact[norm]
        if not norm:
            return None
        sh = shingles(text)
        best: tuple[float, str] | None = None
        for key in self._lsh.query(self._minhash(sh)):
            other = self._sets[key]
            j = len(sh & other) / len(sh | other)
            if j >= self.threshold and (best is None or (j, key) > best):
                best = (j, key)
        return ("near", best[1]) if best else None

    def add(self, key: str, text: str) -> None:
        """Index `text` under `key` (a key already indexed is left as it is)."""
        if key in self._sets:
            return
        norm = normalise(text)
        self._exact.setdefault(norm, key)
        if not norm:
            return
        sh = shingles(text)
        self._sets[key] = sh
        self._lsh.insert(key, self._minhash(sh))

    def add_if_new(self, key: str, text: str) -> tuple[Kind, str] | None:
        """`check`, then `add` when the text is new; returns what `check` found."""
        found = self.check(text)
        if found is None:
            self.add(key, text)
        return found
