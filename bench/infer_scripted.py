"""Figures: does `constitution infer` recover a hidden rule from noisy labels?

    python bench/infer_scripted.py [--pairs 200] [--noise 0.1]

Against the scripted server (tests/fixtures/fault_server.py). The labels hide one rule, the
shorter answer is chosen, with a share `--noise` of the labels flipped. Proposing, the scripted
"model" states the rule in one of three wordings, or noise: "mentions apples" (a feature put on
a random side), "is more detailed" (the rule reversed), "uses a formal tone" (no opinion: it
always answers A, a tie over both orders). As a judge it follows the principle it is given.
Prints the per-candidate table (held-out agreement, pairs decided) and the written constitution.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RULES = ["Prefer the response that is shorter.", "Prefer the response that is shorter and more concise.",
         "Prefer the shorter, more concise response."]  # fmt: skip
NOISE = ["Prefer the response that mentions apples.", "Prefer the response that is more detailed.",
         "Prefer the response that uses a formal tone."]  # fmt: skip


def main() -> None:
    from typer.testing import CliRunner

    from cai_kit.cli.main import app
    from cai_kit.stages.infer import PROPOSE_SYSTEM
    from tests.fixtures.fault_server import FaultServer, start_fault_server

    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--noise", type=float, default=0.1)
    args = ap.parse_args()
    rng = random.Random(0)
    rows = []
    for i in range(args.pairs):
        short = f"Answer {i}: yes." + (" apples" if rng.random() < 0.5 else "")
        long = f"Answer {i}: it depends, " + "and more words " * rng.randint(2, 6)
        long += " apples" if rng.random() < 0.5 else ""
        chosen, rejected = (long, short) if rng.random() < args.noise else (short, long)
        rows.append({"prompt": f"Question {i}?", "chosen": chosen, "rejected": rejected})

    def model(body, r):  # type: ignore[no-untyped-def]
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        if system == PROPOSE_SYSTEM:
            return "\n".join([r.choice(RULES), r.choice(NOISE)] if r.random() < 0.6 else r.sample(NOISE, 2))  # fmt: skip
        a, b = re.findall(r"<<<RESPONSE-[AB]-\w+>>>\n(.*?)\n<<<END-RESPONSE", user, re.S)
        q = user.rsplit("Question: ", 1)[1]
        if "shorter" in q:
            return "A" if len(a) < len(b) else "B"
        if "detailed" in q:
            return "A" if len(a) > len(b) else "B"
        if "apples" in q and ("apples" in a) != ("apples" in b):
            return "A" if "apples" in a else "B"
        return "A"

    server = FaultServer()
    start_fault_server(server)
    server.responder = model
    tmp = Path(tempfile.mkdtemp())
    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in rows))
    r = CliRunner().invoke(app, ["constitution", "infer", str(data), "--model", "teacher",
                                 "--api-base", server.base_url, "--mode", "letter", "-q",
                                 "--out", str(tmp / "inferred.yaml"), "--cache-path", str(tmp / "c")])  # fmt: skip
    print(r.output)
    print((tmp / "inferred.yaml").read_text() if (tmp / "inferred.yaml").exists() else "(none)")


if __name__ == "__main__":
    main()
