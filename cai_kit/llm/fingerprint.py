"""A content fingerprint of a checkpoint directory: what `hf:PATH` backends use as identity.

Record ids and call-cache keys hash a backend's identity, so for weights on disk that
identity must change whenever the weights change, also when new weights are written into
the same directory within the same second or with the same size. `fingerprint(path)`
hashes the contents of every top-level file that shapes the model's answers (weights,
adapters, configs, tokenizer files; not READMEs or checkpoint-*/ subfolders) and, for a
PEFT adapter whose base is a local directory, that base too.

`Fingerprinter` remembers the digest per file until its (size, mtime_ns, inode) changes, so
a backend that asks on every call hashes each file once.

    fp = Fingerprinter(); fp(Path("runs/dpo_model"))  # -> "3f2a..." (sha256 hex)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

_SKIP_SUFFIXES = (".md", ".lock", ".log", ".png")


def _files(path: Path) -> list[Path]:
    if not path.is_dir():
        return []
    return sorted(
        p
        for p in path.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix not in _SKIP_SUFFIXES
    )


def _local_base(path: Path) -> Path | None:
    """The base model directory of a PEFT adapter, when it is a local directory."""
    cfg = path / "adapter_config.json"
    try:
        base = json.loads(cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None
    if not isinstance(base, str):
        return None
    candidate = Path(base).expanduser()
    if not candidate.is_absolute():
        candidate = (path / candidate) if (path / candidate).is_dir() else candidate
    return candidate.resolve() if candidate.is_dir() and candidate.resolve() != path else None


class Fingerprinter:
    """sha256 over (name, content digest) of a checkpoint's files; see the module docstring."""

    def __init__(self) -> None:
        self._digests: dict[Path, tuple[tuple[int, int, int], str]] = {}

    def _digest(self, file: Path) -> str:
        st = file.stat()
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        known = self._digests.get(file)
        if known is not None and known[0] == stamp:
            return known[1]
        h = hashlib.sha256()
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        self._digests[file] = (stamp, h.hexdigest())
        return h.hexdigest()

    def __call__(self, path: Path) -> str:
        path = path.resolve()
        h = hashlib.sha256()
        for label, root in (("model", path), ("base", _local_base(path))):
            if root is None:
                continue
            h.update(f"[{label}]\n".encode())
            for file in _files(root):
                try:
                    digest = self._digest(file)
                except OSError:  # vanished between listing and reading: part of the state
                    digest = "missing"
                h.update(os.fsencode(file.name) + f"\0{digest}\n".encode())
        return h.hexdigest()[:32]
