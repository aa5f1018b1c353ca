"""Benchmark: group judging (`train grpo --reward group`) against per-response judging
(`--reward-judge` alone: JudgeReward) on fixed groups, with a scripted judge.

    python bench/group_judging.py [--groups 50] [--g 4] [--noise 4] [--bias 6]

The groups: each prompt has G responses of distinct lengths (1-30 words); the hidden rule is
"shorter is better". The scripted judge (the test suite's provider server, on loopback)
perceives a response's length with Gaussian noise (`--noise` words, one draw per response and
per prompt shown: a temperature-0 judge is deterministic for one prompt but miscalibrated),
then:
  - per response, p-yes: Yes when the perceived length is under 15 words;
  - per response, expected-score: 1-10 from the perceived length on a fixed scale (the number
    as text: no log-probs), i.e. an absolute score with ties;
  - group: it sees all G, perceives the first one shown as `--bias` words shorter (a position
    bias), and scores them 10..0 by perceived rank, labelled as shown.
Rows: calls, prompt tokens (counted from the prompt's length, as a tokenizer roughly would),
pairwise agreement with the hidden rule (pairs inside a group ordered as the rule orders them;
a tie counts half) and the share of tied pairs. These figures measure cai-kit's mechanics
(calls, tokens, shuffling and averaging, parsing) under this stated judge model, not how a
real judge ranks.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import random
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cai_kit.constitution import load_constitution  # noqa: E402
from cai_kit.engine import EngineConfig  # noqa: E402
from tests.fixtures.fault_server import FaultServer, start_fault_server  # noqa: E402

_SHOWN = re.compile(r"<<<RESPONSE-(\d+)-\w+>>>\n(.*?)\n<<<END-RESPONSE-\1-\w+>>>", re.S)
_ONE = re.compile(r"Response:\n(.*?)\n\n(?:Is the response|Rate the response)", re.S)


def perceived(text: str, context: str, noise: float) -> float:
    seed = int(hashlib.sha256(f"{context}\x00{text}".encode()).hexdigest()[:12], 16)
    return len(text.split()) + random.Random(seed).gauss(0.0, noise)


def make_judge(noise: float, bias: float) -> Any:
    def judge(body: dict[str, Any], rng: random.Random) -> str:
        last = body["messages"][-1]["content"]
        shown = _SHOWN.findall(last)
        if shown:  # a group: rank what is shown, the first one looking shorter
            seen = {
                int(n): perceived(t, last, noise) - (bias if n == "1" else 0.0) for n, t in shown
            }
            ranked = sorted(seen, key=lambda n: seen[n])
            g = len(ranked)
            return "\n".join(
                f"{n}: {round(10 * (1 - ranked.index(n) / (g - 1)))}" for n in sorted(seen)
            )
        text = _ONE.search(last).group(1)  # type: ignore[union-attr]
        length = perceived(text, "", noise)
        if "Is the response acceptable" in last:
            return "Yes" if length < 15 else "No"
        return str(min(10, max(1, round(10 - length / 3.3))))

    return judge


def agreement(groups: list[list[str]], rewards: list[float]) -> tuple[float, float]:
    """(pairwise agreement with 'shorter is better', a tie counting half; share of tied pairs)."""
    agree = ties = pairs = 0.0
    g = len(groups[0])
    for k, grp in enumerate(groups):
        got = rewards[k * g : (k + 1) * g]
        for i, j in itertools.combinations(range(g), 2):
            truth = len(grp[j].split()) - len(grp[i].split())  # > 0: i is better
            pairs += 1
            if got[i] == got[j]:
                ties += 1
                agree += 0.5
            elif (got[i] > got[j]) == (truth > 0):
                agree += 1
    return agree / pairs, ties / pairs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=50)
    ap.add_argument("--g", type=int, default=4)
    ap.add_argument("--noise", type=float, default=4.0)
    ap.add_argument("--bias", type=float, default=6.0)
    a = ap.parse_args()

    from cai_kit.judges.group import GroupJudge
    from cai_kit.train.group_reward import GroupReward
    from cai_kit.train.rewards import JudgeReward

    server = FaultServer()
    start_fault_server(server)
    server.responder = make_judge(a.noise, a.bias)
    rng = random.Random(0)
    groups = [[" ".join(["w"] * n) for n in rng.sample(range(1, 31), a.g)] for _ in range(a.groups)]
    prompts = [f"Prompt {k}: answer briefly." for k in range(a.groups) for _ in range(a.g)]
    responses = [r for grp in groups for r in grp]
    constitution = load_constitution("harmless")
    cfg = EngineConfig(quiet=True, max_retries=0, use_cache=False)
    rows = []
    scorers: list[tuple[str, Any]] = [
        ("per response, p-yes", JudgeReward("j", constitution, server.base_url, cfg, "p-yes")),
        ("per response, expected-score",
         JudgeReward("j", constitution, server.base_url, cfg, "expected-score")),
    ] + [
        (f"group, --group-repeats {r}",
         GroupReward(GroupJudge(constitution), "j", a.g, r, server.base_url, cfg))
        for r in (1, 2, 4)
    ]  # fmt: skip
    server.usage_by_length = True
    for name, scorer in scorers:
        try:
            rewards = scorer(prompts, responses)
            stats = scorer.engine.stats
            agree, tied = agreement(groups, rewards)
            rows.append((name, stats.calls, stats.prompt_tokens, agree, tied, scorer.failed))
        finally:
            scorer.close()
    print(f"{a.groups} groups of {a.g}; judge noise {a.noise} words, position bias {a.bias} words")
    print("| judging | calls | prompt tokens | pairwise agreement | tied pairs | failed |")
    print("|---|---|---|---|---|---|")
    for name, calls, tokens, agree, tied, failed in rows:
        print(f"| {name} | {calls} | {tokens} | {agree:.3f} | {tied:.3f} | {failed} |")


if __name__ == "__main__":
    main()
