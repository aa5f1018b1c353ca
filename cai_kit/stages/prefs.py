"""RLAIF preference data: sample k responses per prompt, judge pairs, write prefs.jsonl.

Two resumable phases in one run directory:
  1. sampling: k responses per prompt from the policy -> OUT/samples/generations.jsonl
  2. judging: pairs chosen per prompt (`all`, `random:N`, or `best-worst`: judge all pairs,
     keep the most-preferred vs the least-preferred response) -> OUT/prefs.jsonl
With `label="rubric"` (`--label rubric`) phase 2 scores each response once by the
constitution's rubric (`judges.rubric`) instead of judging pairs, and labels a pair from the
score difference (`rubric_verdict`); pairs are formed as `--pairs` says (best-worst: highest
vs lowest combined score). Both phases shard by prompt (`--shard I/N`): a prompt's k samples
and all its pairs are in one shard, so the union of the N shards' records is exactly the unsharded run's. Record ids
hash the policy's and the judge's backend identities, not only their model strings. A pair is
two sample indices, judged once both samples exist; its id hashes those two samples only, so
a run resumed after partial sampling judges the pairs still missing and never writes a pair
twice (best-worst, a function of all k samples, waits until all k are in).
`run_judge_file` judges pairs that already exist (a pairs JSONL with response_a/response_b or
chosen/rejected, or a revisions.jsonl from `cai-kit revise`: final revision vs initial).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, replace
from pathlib import Path

from cai_kit.constitution import Constitution
from cai_kit.engine import Engine, EngineConfig, JobSpec, JobSummary, run_job
from cai_kit.engine.budget import with_budget
from cai_kit.engine.cost_preview import stand_in
from cai_kit.engine.gather import in_order
from cai_kit.errors import ConfigError, DataError
from cai_kit.io import latest_by_id, latest_status, read_jsonl
from cai_kit.judges.pairwise import JudgeConfig, PairInput, judge_calls, judge_pair
from cai_kit.judges.rubric import Rubric, RubricScore
from cai_kit.llm.base import Backend, GenParams
from cai_kit.records import (
    GenerationRecord,
    JudgeVerdict,
    Message,
    PreferenceRecord,
    PromptRecord,
    Provenance,
    RevisionRecord,
    stable_hash,
)
from cai_kit.stages.generate import run_generate

LABELS = ("pairwise", "rubric")


def rubric_verdict(
    a: RubricScore, b: RubricScore, tie_margin: float, principle_ids: list[str]
) -> JudgeVerdict:
    """A pair's verdict from two rubric scores: p_a = 0.5 + (score_a - score_b) / 2 (so the
    margin, |p_a - 0.5| * 2, is |score_a - score_b|); a tie when that difference is below
    `tie_margin`; `failed` when either response has a principle that could not be scored."""
    if a.score is None or b.score is None:
        errs = [
            f"response {side}: {pid}: {e}"
            for side, s in (("A", a), ("B", b))
            for pid, e in s.errors.items()
        ]
        return JudgeVerdict(
            label="failed",
            principle_ids=principle_ids,
            error=f"{len(errs)} rubric score(s) failed: {errs[0] if errs else 'no score'}",
        )
    diff = a.score - b.score
    label = "tie" if abs(diff) < tie_margin else ("A" if diff > 0 else "B")
    return JudgeVerdict(p_a=round(0.5 + diff / 2, 6), label=label, margin=round(abs(diff), 6),  # type: ignore[arg-type]
                        position_consistent=True, principle_ids=principle_ids)  # fmt: skip


def _provenance(constitution: Constitution, cfg: JudgeConfig, models: dict[str, str]) -> Provenance:
    return Provenance(constitution=constitution.name, constitution_hash=constitution.content_hash, models=models,
                      params={"judge": cfg.__dict__ | {"cot_clamp": list(cfg.cot_clamp)}}, seed=cfg.seed)  # fmt: skip


def preference_record(
    pair: PairInput,
    verdict,
    constitution: Constitution,
    cfg: JudgeConfig,
    models: dict[str, str],
    rid: str,
) -> PreferenceRecord:  # type: ignore[no-untyped-def]
    chosen = rejected = None
    if verdict.label == "A":
        chosen, rejected = pair.response_a, pair.response_b
    elif verdict.label == "B":
        chosen, rejected = pair.response_b, pair.response_a
    prov = _provenance(constitution, cfg, models)
    prov.principle_ids = verdict.principle_ids
    return PreferenceRecord(
        id=rid, prompt_id=pair.prompt_id, messages=[Message(**m) for m in pair.messages],  # type: ignore[arg-type]
        chosen=chosen, rejected=rejected, response_a=pair.response_a, response_b=pair.response_b,
        verdict=verdict, provenance=prov, metadata=pair.metadata,
    )  # fmt: skip


def _judge_job(
    name: str, items: list, item_id, process, out_dir: Path, engine_config: EngineConfig, manifest: dict,  # type: ignore[no-untyped-def]
    estimate_tokens, judge: Backend, shard: tuple[int, int] | None, shard_key,  # type: ignore[no-untyped-def]
) -> JobSummary:  # fmt: skip
    spec = JobSpec(name=name, items=items, item_id=item_id, process=process, output=out_dir / "prefs.jsonl",
                   record_type=PreferenceRecord, run_dir=out_dir, manifest=manifest,
                   estimate_tokens=estimate_tokens, shard=shard, shard_key=shard_key,
                   backends=[judge])  # fmt: skip
    return run_job(spec, engine_config)


@dataclass(frozen=True)
class PrefsDefaults:
    """The defaults of `cai-kit prefs` and `cai_kit.prefs`, defined once (the CLI reads them)."""

    k: int = 2  # responses sampled per prompt
    pairs: str = "best-worst"
    label: str = "pairwise"
    temperature: float = 0.9  # the policy's sampling
    max_tokens: int = 256
    seed: int = 0


PREFS_DEFAULTS = PrefsDefaults()


def pair_count(spec: str) -> int | None:
    """Check a `--pairs` value: None for `best-worst` or `all`, N for `random:N` (N >= 1)."""
    if spec in ("best-worst", "all"):
        return None
    n = spec.split(":", 1)[1].strip() if spec.startswith("random:") else ""
    if not n.isdigit() or int(n) < 1:
        raise ConfigError(
            f"--pairs must be best-worst, all or random:N with N a whole number of at least 1, not {spec!r}."
        )
    return int(n)


def prompts_without_pair(out_dir: Path, prompts: list[PromptRecord]) -> list[PromptRecord]:
    """The prompts whose judged pairs in OUT/prefs.jsonl are all ties: every record of the
    prompt is `ok` and none prefers a side (its samples were judged alike). A prompt with a
    failed record is not among them (a re-run retries it), nor one not judged yet."""
    by_prompt: dict[str, list[PreferenceRecord]] = {}
    for r in latest_by_id(out_dir / "prefs.jsonl", PreferenceRecord).values():
        by_prompt.setdefault(r.prompt_id, []).append(r)
    return [
        p
        for p in prompts
        if (recs := by_prompt.get(p.id))
        and all(r.status == "ok" and r.verdict.label == "tie" for r in recs)
    ]


def _add(a: JobSummary, b: JobSummary) -> JobSummary:
    """Two rounds of one job as one summary: counts and numeric stats added."""
    stats = dict(a.stats)
    for key, v in b.stats.items():
        both = isinstance(v, int | float) and isinstance(stats.get(key, 0), int | float)
        stats[key] = stats.get(key, 0) + v if both else v
    return replace(a, total=a.total + b.total, already_done=a.already_done + b.already_done,
                   done=a.done + b.done, failed=a.failed + b.failed, stopped=a.stopped or b.stopped,
                   stats=stats)  # fmt: skip


def run_prefs(
    prompts: list[PromptRecord], *, policy: Backend, judge: Backend, models: dict[str, str], constitution: Constitution,
    cfg: JudgeConfig, k: int, pairs: str, policy_params: GenParams, out_dir: Path, engine_config: EngineConfig,
    shard: tuple[int, int] | None = None, argv: list[str] | None = None,
    label: str = "pairwise", rubric: Rubric | None = None, k_max: int | None = None,
) -> tuple[JobSummary, JobSummary]:  # fmt: skip
    """Phase 1 (sampling) then phase 2 (judging); returns both summaries. A dry run previews
    the judging of samples not drawn yet as k answers of `max_tokens` each.

    With `k_max`, a prompt whose k samples were all judged alike (`prompts_without_pair`)
    draws more, 2k, 4k, ... up to k_max samples (that prompt only: samples 0..k-1 are kept,
    its pairs judged again over all of them), until it gives a decisive pair. The summaries
    add up every round. A dry run previews the first round only."""
    if k_max is not None and k_max < k:
        raise ConfigError(f"--k-max must be at least --k ({k}), not {k_max}.")
    engine_config = with_budget(engine_config)  # one --max-cost for every round
    args = dict(policy=policy, judge=judge, models=models, constitution=constitution, cfg=cfg,
                pairs=pairs, policy_params=policy_params, out_dir=out_dir,
                engine_config=engine_config, shard=shard, argv=argv, label=label, rubric=rubric)  # fmt: skip
    sampled, judged = _prefs_round(prompts, k=k, **args)  # type: ignore[arg-type]
    k_now, todo = k, prompts
    while k_max is not None and k_now < k_max and not engine_config.dry_run:
        todo = prompts_without_pair(out_dir, todo)
        if not todo or sampled.stopped or judged.stopped:
            break
        k_now = min(2 * k_now, k_max)
        s, j = _prefs_round(todo, k=k_now, **args)  # type: ignore[arg-type]
        sampled, judged = _add(sampled, s), _add(judged, j)
    return sampled, judged


def _prefs_round(
    prompts: list[PromptRecord], *, policy: Backend, judge: Backend, models: dict[str, str], constitution: Constitution,
    cfg: JudgeConfig, k: int, pairs: str, policy_params: GenParams, out_dir: Path, engine_config: EngineConfig,
    shard: tuple[int, int] | None = None, argv: list[str] | None = None,
    label: str = "pairwise", rubric: Rubric | None = None,
) -> tuple[JobSummary, JobSummary]:  # fmt: skip
    """One round: k samples of each prompt, then its pairs judged."""
    if k < 2:
        raise DataError("--k must be at least 2 to make pairs.")
    if label not in LABELS:
        raise ConfigError(f"--label must be pairwise or rubric, not {label!r}.")
    if label == "rubric" and rubric is None:
        rubric = Rubric(constitution, seed=cfg.seed)
    n_random = pair_count(pairs)  # a bad --pairs is refused before anything is sampled
    sampled = run_generate(prompts, backend=policy, model=models["policy"], params=policy_params, samples=k,
                           out_dir=out_dir / "samples", engine_config=engine_config, shard=shard, argv=argv)  # fmt: skip
    # A prompt's responses by sample index (only indices below k: `--k` says how many count).
    texts: dict[str, dict[int, str]] = {p.id: {} for p in prompts}
    for g in latest_by_id(out_dir / "samples" / "generations.jsonl", GenerationRecord).values():
        if g.status == "ok" and g.response and g.prompt_id in texts and g.sample_index < k:
            texts[g.prompt_id][g.sample_index] = g.response
    if engine_config.dry_run:  # what sampling has still to draw, as answers of max_tokens
        unseen = stand_in(policy_params.max_tokens)
        texts = {
            pid: t if len(t) >= k else dict.fromkeys(range(k), unseen) for pid, t in texts.items()
        }
    items: list[tuple[PromptRecord, tuple[int, int] | None]] = []
    for p in prompts:
        have = texts[p.id]
        if len(have) < 2:
            continue
        if pairs == "best-worst":  # the best and worst of k: judged once all k are in
            if len(have) == k:  # (a partial best-worst would be another pair, not a subset)
                items.append((p, None))
            continue
        # Pairs are sample indices; a pair is judged once both its samples exist. random:N
        # draws from all k samples' pairs, so a partial run judges a subset of what the
        # finished run will judge, never a pair the finished run would not.
        all_pairs = list(itertools.combinations(range(k), 2))
        if pairs != "all":  # random:N
            rng = random.Random(int(stable_hash("pairs", cfg.seed, p.id), 16))
            all_pairs = rng.sample(all_pairs, min(n_random or 0, len(all_pairs)))
        items += [(p, (i, j)) for i, j in all_pairs if i in have and j in have]

    identities = {"policy": policy.identity(), "judge": judge.identity()}
    # Records written before pair ids were the pair's own hash (they hashed every sample of the
    # prompt): such an id, when the file holds it for a prompt with all k samples, is kept.
    written = set(latest_status(out_dir / "prefs.jsonl", PreferenceRecord))

    def item_id(item: tuple[PromptRecord, tuple[int, int] | None]) -> str:
        """A pair's id hashes the pair's own two samples (index and text), never which other
        samples of the prompt existed when it was judged, so a resumed run judges the same pair
        under the same id. Best-worst (all k samples) hashes every sample."""
        p, ij = item
        have = texts[p.id]
        if rubric is not None:  # what a rubric label depends on
            how = {"combine": rubric.combine, "threshold": rubric.threshold, "seed": cfg.seed,
                   "tie_margin": cfg.tie_margin}  # fmt: skip
            tag, rest = "pref-rubric", [constitution.content_hash, identities, how]
        else:
            tag, rest = "pref", [constitution.content_hash, identities, cfg.__dict__]
        every = [have[n] for n in sorted(have)]
        legacy = stable_hash(tag, p.id, ij, pairs, every, *rest)
        if ij is None or (len(have) == k and legacy in written):
            return legacy
        return stable_hash(tag + "-pair", p.id, ij, pairs, [have[ij[0]], have[ij[1]]], *rest)

    def prompt_text(p: PromptRecord) -> str:
        return next((m.content for m in reversed(p.messages) if m.role == "user"), "")

    async def rubric_process(
        item: tuple[PromptRecord, tuple[int, int] | None], engine: Engine
    ) -> PreferenceRecord:
        assert rubric is not None
        p, ij = item
        msgs, resp = [m.model_dump() for m in p.messages], texts[p.id]
        which = list(ij) if ij is not None else list(range(len(resp)))
        scored = await in_order(
            rubric.score(prompt_text(p), resp[n], engine, judge) for n in which
        )  # one wave
        by_n = dict(zip(which, scored, strict=True))
        if ij is not None:
            i, j = ij
            meta = {**p.metadata, "samples": [i, j]}
        else:  # best-worst: the highest vs the lowest combined score
            vals = {n: s.score for n, s in by_n.items() if s.score is not None}
            best = max(vals, key=vals.__getitem__) if vals else 0
            worst = min(vals, key=vals.__getitem__) if vals else 1
            if best == worst:
                best, worst = 0, 1
            i, j = min(best, worst), max(best, worst)
            meta = {**p.metadata, "samples": [i, j], "scores": [by_n[n].score for n in which]}
        ids = [pr.id for pr in rubric.principles]
        v = rubric_verdict(by_n[i], by_n[j], cfg.tie_margin, ids)
        rec = preference_record(
            PairInput(p.id, msgs, resp[i], resp[j], meta),
            v,
            constitution,
            cfg,
            models,
            item_id(item),
        )
        rec.rubric = {"a": by_n[i].to_dict(), "b": by_n[j].to_dict()}
        rec.provenance.params["label"] = "rubric"
        rec.provenance.params["rubric"] = {"combine": rubric.combine, "threshold": rubric.threshold}
        if ij is None and (bad := [n for n, s in by_n.items() if s.score is None]):
            rec.status = "failed"
            rec.error = f"{len(bad)} of {len(which)} responses could not be scored: " + (
                next(iter(by_n[bad[0]].errors.values()), "no score")
            )
        return rec

    async def process(
        item: tuple[PromptRecord, tuple[int, int] | None], engine: Engine
    ) -> PreferenceRecord:
        p, ij = item
        msgs = [m.model_dump() for m in p.messages]
        resp = texts[p.id]
        if ij is not None:
            i, j = ij
            pair = PairInput(p.id, msgs, resp[i], resp[j], {**p.metadata, "samples": [i, j]})
            v = await judge_pair(msgs, resp[i], resp[j], constitution, cfg, engine, judge)
            return preference_record(pair, v, constitution, cfg, models, item_id(item))
        # best-worst: judge every pair, score each response by its mean P(better)
        score = [0.0] * len(resp)
        ijs = list(itertools.combinations(range(len(resp)), 2))
        judged = await in_order(  # every pair together: one wave under --batch-api
            judge_pair(msgs, resp[i], resp[j], constitution, cfg, engine, judge) for i, j in ijs
        )
        verdicts = dict(zip(ijs, judged, strict=True))
        for (i, j), v in verdicts.items():
            if v.p_a is not None:
                score[i] += v.p_a
                score[j] += 1 - v.p_a
        best, worst = (
            max(range(len(resp)), key=score.__getitem__),
            min(range(len(resp)), key=score.__getitem__),
        )
        if best == worst:
            best, worst = 0, 1
        i, j = min(best, worst), max(best, worst)
        pair = PairInput(
            p.id,
            msgs,
            resp[i],
            resp[j],
            {**p.metadata, "samples": [i, j], "scores": [round(s, 4) for s in score]},
        )
        rec = preference_record(pair, verdicts[(i, j)], constitution, cfg, models, item_id(item))
        if failed := [v.error or "failed" for v in verdicts.values() if v.label == "failed"]:
            rec.status, rec.error = (
                "failed",
                f"{len(failed)} of {len(verdicts)} judgements failed: {failed[0]}",
            )
        return rec

    # rubric: each response is scored once; a preview charges it to the first item that shows it
    charged: dict[tuple[str, tuple[int, int] | None], list[int]] = {}
    seen: set[tuple[str, int]] = set()
    for p, ij in items:
        fresh = [n for n in (ij or range(len(texts[p.id]))) if (p.id, n) not in seen]
        seen.update((p.id, n) for n in fresh)
        charged[(p.id, ij)] = fresh

    def calls(item: tuple[PromptRecord, tuple[int, int] | None]) -> list[tuple[Backend, int, int]]:
        p, ij = item  # best-worst (ij None) judges every pair of the prompt's responses
        if rubric is not None:
            return [
                c
                for n in charged[(p.id, ij)]
                for c in rubric.calls(prompt_text(p), texts[p.id][n], judge)
            ]
        msgs, resp = [m.model_dump() for m in p.messages], texts[p.id]
        pairs_ = [ij] if ij is not None else itertools.combinations(range(len(resp)), 2)
        return [
            c
            for i, j in pairs_
            for c in judge_calls(msgs, resp[i], resp[j], constitution, cfg, judge)
        ]

    manifest = {"command": "prefs", "argv": argv or [], "provenance": _provenance(constitution, cfg, models).model_dump(),
                "inputs": {"k": k, "pairs": pairs, "label": label}}  # fmt: skip
    judged = _judge_job(
        "judge", items, item_id, process if rubric is None else rubric_process, out_dir, engine_config, manifest, calls, judge, shard,
        lambda item: item[0].id,
    )  # fmt: skip
    return sampled, judged


def load_pairs(path: Path) -> list[PairInput]:
    """Pairs from a JSONL: response_a/response_b, chosen/rejected, or revise's revisions.jsonl."""
    out: list[PairInput] = []
    for line, row in read_jsonl(path):
        if "steps" in row and "initial_response" in row:  # a RevisionRecord
            r = RevisionRecord.model_validate(row)
            if r.status != "ok" or not r.final_response or r.final_response == r.initial_response:
                continue
            msgs = [m.model_dump() for m in r.messages]
            out.append(
                PairInput(
                    r.prompt_id,
                    msgs,
                    r.final_response,
                    r.initial_response or "",
                    {"source": "revision-vs-initial"},
                )
            )
            continue
        a, b = row.get("response_a", row.get("chosen")), row.get("response_b", row.get("rejected"))
        msgs = row.get("messages") or (
            [{"role": "user", "content": row["prompt"]}]
            if isinstance(row.get("prompt"), str)
            else row.get("prompt")
        )
        if not isinstance(a, str) or not isinstance(b, str) or not msgs:
            raise DataError(
                f"{path}:{line}: needs prompt (or messages) and response_a/response_b (or chosen/rejected) as strings."
            )
        meta = {
            k: v
            for k, v in row.items()
            if k not in ("prompt", "messages", "response_a", "response_b", "chosen", "rejected")
        }
        out.append(PairInput(PromptRecord.make_id(msgs), msgs, a, b, meta))
    if not out:
        raise DataError(f"No pairs to judge in {path}.")
    return out


def run_judge_file(
    pairs: list[PairInput], *, judge: Backend, models: dict[str, str], constitution: Constitution, cfg: JudgeConfig,
    out_dir: Path, engine_config: EngineConfig, shard: tuple[int, int] | None = None, argv: list[str] | None = None,
) -> JobSummary:  # fmt: skip
    identity = judge.identity()

    def item_id(pair: PairInput) -> str:
        return stable_hash(
            "judged",
            pair.messages,
            pair.response_a,
            pair.response_b,
            constitution.content_hash,
            identity,
            cfg.__dict__,
        )

    async def process(pair: PairInput, engine: Engine) -> PreferenceRecord:
        v = await judge_pair(
            pair.messages, pair.response_a, pair.response_b, constitution, cfg, engine, judge
        )
        return preference_record(pair, v, constitution, cfg, models, item_id(pair))

    manifest = {
        "command": "judge",
        "argv": argv or [],
        "provenance": _provenance(constitution, cfg, models).model_dump(),
    }
    return _judge_job(
        "judge",
        pairs,
        item_id,
        process,
        out_dir,
        engine_config,
        manifest,
        lambda pair: judge_calls(
            pair.messages, pair.response_a, pair.response_b, constitution, cfg, judge
        ),
        judge,
        shard,
        lambda pair: pair.prompt_id,
    )
