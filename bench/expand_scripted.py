"""Figures: duplicate and kept rates of `prompts expand` over examples/red_team_prompts.jsonl.

    python bench/expand_scripted.py [--n 1000] [--keep-if "asks for something harmful"]

Against the scripted server (tests/fixtures/fault_server.py). Its "model" rewrites one example
it was shown by swapping 1 to 6 of its words for random ones (one swap is a near-duplicate of
that seed; more make a new prompt) and repeats a line in one reply of five; as the --keep-if
judge it says "yes" while most of the harmful seed's words are left (fewer than 3 swapped in).
So the rates measure the mechanics (dedupe, rounds, keep-if), not a model's quality. Prints the
dry run, the run and a re-run (which must make no call), then expand_report.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    from typer.testing import CliRunner

    from cai_kit.cli.main import app
    from cai_kit.stages.expand import KEEP_SYSTEM
    from tests.fixtures.fault_server import _WORDS, FaultServer, start_fault_server

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--keep-if", default=None)
    args = ap.parse_args()

    def model(body, rng):  # type: ignore[no-untyped-def]
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        if system == KEEP_SYSTEM:
            text = re.search(r">>>\n(.*)\n<<<", user, re.S).group(1).lower()  # type: ignore[union-attr]
            return "yes" if sum(w in _WORDS for w in text.replace("?", "").split()) < 3 else "no"
        k = int(re.search(r"Write (\d+) new prompts", user).group(1))  # type: ignore[union-attr]
        examples = re.findall(r"^\d+\. (.*)$", user, re.M)
        out = []
        for _ in range(k):
            words = rng.choice(examples).split()
            for _ in range(rng.choice([1, 2, 3, 4, 5, 6])):
                words[rng.randrange(len(words))] = rng.choice(_WORDS)
            out.append(" ".join(words))
        if rng.random() < 0.2:
            out[-1] = out[0]  # a repeated line: an exact duplicate
        return "\n".join(out)

    server = FaultServer()
    start_fault_server(server)
    server.responder = model
    tmp = Path(tempfile.mkdtemp())
    cmd = ["prompts", "expand", "examples/red_team_prompts.jsonl", "--model", "teacher",
           "--api-base", server.base_url, "--n", str(args.n), "--out", str(tmp / "exp"),
           "--cache-path", str(tmp / "calls.sqlite"), "-q"]  # fmt: skip
    if args.keep_if:
        cmd += ["--keep-if", args.keep_if]
    for label, extra in (("dry run", ["--dry-run"]), ("run", []), ("re-run", [])):
        t = time.time()
        r = CliRunner().invoke(app, cmd + extra)
        print(
            f"--- {label}: exit {r.exit_code}, {time.time() - t:.1f}s, calls paid so far {server.paid}"
        )
        print(r.output)
    print((tmp / "exp" / "expand_report.json").read_text())
    print(json.loads((tmp / "exp" / "prompts.jsonl").open().readline()))


if __name__ == "__main__":
    main()
