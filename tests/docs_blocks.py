"""The command blocks of README.md and docs/*.md, parsed so a test can run them.

A block is a fenced ```bash, ```console, ```shell or bare ``` block. Its commands are the
lines starting with `$ ` (a console transcript; the other lines are output) or, in a bash or
shell block without any `$ ` line, every line that is not a comment (`\\` continues a line; `&&` and `;`
join commands). Of those, `cai-kit ...` and `python -m cai_kit ...` are cai-kit commands: the
test runs them. Others (`pip`, `pytest`, `jq`, `vllm serve`) are not run, except that a
launcher (`torchrun`, `accelerate launch`) running `-m cai_kit` needs the block to be marked.

A ```python block is a script: the test runs each one (`python -c`, in the same fresh directory
as the commands, in order; `server`: hosted providers go to the scripted server) and compiles
the skipped ones.

An HTML comment on the line before the block says how the test treats it (no comment: run):

    <!-- docs-test: skip (needs GPUs) -->   not run; every cai-kit command is still parsed
    <!-- docs-test: dry-run -->             each cai-kit command runs with --dry-run
    <!-- docs-test: server -->              hosted providers and `--api-base` URLs on loopback
                                            go to the scripted server (tests/fixtures)

`# exits N` at the end of a command says it must exit with N (default: 0).

Commands run shortened (`shorten`): training stops after one step (PPO, GRPO and SPIN also
with the smallest batch), `--limit` is at most 4 (2 where a job command gives none; a `--dry-run` keeps its rows), `chat`
answers in 16 tokens. Everything else runs as written.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC_FILES = ["README.md", *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))]

COMMAND_LANGS = {"", "bash", "console", "shell", "sh"}
MODES = ("run", "skip", "dry-run", "server")
LAUNCHERS = ("torchrun", "accelerate")

_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*([a-z-]+)\s*(?:\((.+)\))?\s*-->\s*$")
_EXITS = re.compile(r"#\s*exits\s+(\d+)\b")


@dataclass
class Command:
    line: int  # 1-based line in the doc file
    text: str  # the command as written (continuations joined)
    argv: list[str] | None  # cai-kit's arguments; None: not a cai-kit command
    launcher: bool = False  # torchrun / accelerate launch ... -m cai_kit
    exits: int = 0


@dataclass
class Block:
    file: str
    line: int  # line of the opening fence
    lang: str
    mode: str = "run"
    reason: str = ""
    commands: list[Command] = field(default_factory=list)
    code: str = ""  # a python block's source

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def cai_kit(self) -> list[Command]:
        return [c for c in self.commands if c.argv is not None]


class MarkerError(ValueError):
    pass


def _cai_kit_argv(tokens: list[str]) -> tuple[list[str] | None, bool]:
    """(cai-kit's arguments, run by a launcher?) of one simple command, or (None, False)."""
    if tokens and tokens[0] == "cai-kit":
        return tokens[1:], False
    for i in range(len(tokens) - 1):
        if tokens[i] == "-m" and tokens[i + 1] == "cai_kit":
            launcher = tokens[0] in LAUNCHERS
            return tokens[i + 2 :], launcher
    return None, False


def _split(text: str) -> list[list[str]]:
    """The simple commands of a shell line (`&&`, `;` and `|` separate them; comments dropped)."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    out: list[list[str]] = [[]]
    for tok in lexer:
        if set(tok) <= set(";&|"):
            out.append([])
        else:
            out[-1].append(tok)
    return [c for c in out if c]


def _commands(lang: str, body: list[tuple[int, str]]) -> list[Command]:
    console = any(text.startswith("$ ") for _, text in body)
    if not console and lang == "":
        return []  # a bare block without `$ ` lines is text (a diagram, a listing, output)
    logical: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for n, raw in body:
        text = raw.rstrip()
        if pending is not None:
            start, acc = pending
            text = acc + " " + text.strip()
            n = start
        elif console:
            if not text.startswith("$ "):
                continue  # output
            text = text[2:]
        elif not text.strip() or text.lstrip().startswith("#"):
            continue
        if text.endswith("\\"):
            pending = (n, text[:-1])
            continue
        pending = None
        logical.append((n, text.strip()))
    out = []
    for n, text in logical:
        m = _EXITS.search(text)
        for tokens in _split(text):
            argv, launcher = _cai_kit_argv(tokens)
            out.append(Command(n, text, argv, launcher, int(m.group(1)) if m else 0))
    return out


def parse_blocks(rel: str) -> list[Block]:
    """Every fenced block of a doc file with its commands and marker."""
    lines = (REPO / rel).read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(2).lower()
        body: list[tuple[int, str]] = []
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append((i + 1, lines[i]))
            i += 1
        i += 1
        block = Block(rel, start + 1, lang)
        prev = lines[start - 1] if start > 0 else ""
        mk = _MARKER.match(prev)
        if mk:
            block.mode, block.reason = mk.group(1), (mk.group(2) or "").strip()
            if block.mode not in MODES[1:]:
                raise MarkerError(f"{block.where}: unknown docs-test marker {block.mode!r}")
            if block.mode == "skip" and not block.reason:
                raise MarkerError(f"{block.where}: `docs-test: skip` needs a (reason)")
        elif "docs-test" in prev:
            raise MarkerError(f"{block.where}: malformed docs-test marker: {prev.strip()}")
        if lang in COMMAND_LANGS:
            block.commands = _commands(lang, body)
        elif lang == "python":
            block.code = "\n".join(text for _, text in body) + "\n"
        blocks.append(block)
    return blocks


def _set(argv: list[str], flag: str, value: str, add: bool = True) -> list[str]:
    """argv with `flag value` replaced (or appended when absent and `add`)."""
    out = list(argv)
    for i, tok in enumerate(out):
        if tok == flag and i + 1 < len(out):
            out[i + 1] = value
            return out
        if tok.startswith(flag + "="):
            out[i] = f"{flag}={value}"
            return out
    return [*out, flag, value] if add else out


def _get(argv: list[str], flag: str) -> str | None:
    for i, tok in enumerate(argv):
        if tok == flag and i + 1 < len(argv):
            return argv[i + 1]
        if tok.startswith(flag + "="):
            return tok.split("=", 1)[1]
    return None


# commands that take --limit and run a model once per prompt: without --limit, 2 prompts
JOBS = [["revise"], ["generate"], ["prefs"], ["eval", "winrate"], ["eval", "harmlessness"]]


def shorten(argv: list[str]) -> list[str]:
    """The command as the test runs it: the same work, at the smallest size that shows it."""
    head = argv[:2]
    limit = _get(argv, "--limit")
    if "--dry-run" in argv:
        pass  # calls nothing: the plan for every row, as written
    elif limit is not None and limit.isdigit() and int(limit) > 4:
        argv = _set(argv, "--limit", "4")
    elif limit is None and (head[:1] in JOBS or head in JOBS):
        argv = _set(argv, "--limit", "2")
    if head[:1] == ["chat"]:
        argv = _set(argv, "--max-tokens", "16")
    if head[:1] == ["train"] and len(head) == 2:
        kind = head[1]
        if kind == "ppo":
            for flag, value in [("--steps", "1"), ("--batch-size", "2"), ("--mini-batch-size", "1"),
                                ("--ppo-epochs", "1"), ("--max-new-tokens", "16")]:  # fmt: skip
                argv = _set(argv, flag, value)
        elif kind == "grpo":
            for flag, value in [("--max-steps", "1"), ("--num-generations", "2"), ("--batch-size", "2"),
                                ("--max-completion-length", "16")]:  # fmt: skip
                argv = _set(argv, flag, value)
        elif kind == "online-dpo":
            for flag, value in [("--steps", "1"), ("--batch-size", "1"), ("--max-new-tokens", "16")]:  # fmt: skip
                argv = _set(argv, flag, value)
        elif kind == "spin":
            for flag, value in [("--iterations", "1"), ("--max-steps", "1"), ("--max-new-tokens", "16")]:  # fmt: skip
                argv = _set(argv, flag, value)
        else:
            argv = _set(argv, "--max-steps", "1")
    return argv


def with_dry_run(argv: list[str]) -> list[str]:
    return argv if "--dry-run" in argv else [*argv, "--dry-run"]


_LOOPBACK_API = re.compile(r"^https?://(127\.0\.0\.1|localhost):\d+/v1/?$")


def to_server(argv: list[str], base_url: str) -> list[str]:
    """`--api-base` URLs on loopback (a llama.cpp / vLLM / Ollama server) -> the scripted one."""
    return [base_url if _LOOPBACK_API.match(tok) else tok for tok in argv]
