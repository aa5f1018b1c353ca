"""Served 👍/👎 feedback -> `cai-kit export kto|prefs FEEDBACK_DB` -> `cai-kit train kto|dpo`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.serve.feedback import kto_weights
from cai_kit.serve.store import FeedbackStore
from tests.fixtures.serve_server import ServeHandle, start_serve


@pytest.mark.parametrize(("n_d", "n_u"), [(1, 10), (10, 1), (3, 2), (2, 3), (7, 7), (640, 13)])
def test_kto_weights_balance_classes_as_the_kto_paper_advises(n_d: int, n_u: int) -> None:
    w_d, w_u = kto_weights(n_d, n_u)
    assert 1.0 <= (w_d * n_d) / (w_u * n_u) <= 4 / 3
    assert 1.0 in (w_d, w_u)  # only one weight moves (TRL: "EITHER ... or ..., but NOT BOTH")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _served_and_rated(serve: ServeHandle) -> dict[str, list[tuple[str, str, int | None]]]:
    """Through the real API: question -> [(completion id, text, rating)]."""
    import openai

    client = openai.OpenAI(base_url=serve.url + "/v1", api_key="unused")
    plan = {"q-regen": [1, -1], "q-up": [1], "q-down": [-1], "q-up2": [1], "q-unrated": [None]}
    served: dict[str, list[tuple[str, str, int | None]]] = {}
    for question, ratings in plan.items():
        for rating in ratings:
            r = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": question}]
            )
            if rating is not None:
                client.post(
                    "/feedback", body={"completion_id": r.id, "rating": rating}, cast_to=object
                )
            served.setdefault(question, []).append((r.id, r.choices[0].message.content, rating))
    return served


def test_export_kto_from_feedback_db_counts_and_weights(
    serve_upstream: ServeHandle, tmp_path: Path
) -> None:
    served = _served_and_rated(serve_upstream)
    out = tmp_path / "kto"
    res = CliRunner().invoke(app, ["export", "kto", str(serve_upstream.db), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "Wrote 5 train / 0 test rows" in res.output
    assert "3 desirable, 2 undesirable" in res.output
    rows = _read(out / "train.jsonl")
    got = sorted(
        (r["prompt"][0]["content"], r["completion"][0]["content"], r["label"]) for r in rows
    )
    want = sorted((q, text, rating == 1) for q, replies in served.items()
                  for _, text, rating in replies if rating is not None)  # fmt: skip
    assert got == want
    assert all(
        r["prompt"][0]["role"] == "user" and r["completion"][0]["role"] == "assistant" for r in rows
    )
    w_d, w_u = kto_weights(3, 2)
    card = (out / "README.md").read_text()
    assert "desirable (👍): 3" in card and "undesirable (👎): 2" in card
    assert f"desirable_weight={w_d}, undesirable_weight={w_u}" in card
    assert (w_d, w_u) == (1.0, 1.3)  # the minority (👎) is up-weighted: 3 / (2 * 1.3) = 1.15


def test_export_prefs_from_feedback_db_pairs_a_regenerated_turn(
    serve_upstream: ServeHandle, tmp_path: Path
) -> None:
    served = _served_and_rated(serve_upstream)
    out = tmp_path / "pairs"
    res = CliRunner().invoke(
        app, ["export", "prefs", str(serve_upstream.db), "--out", str(out), "--format", "standard"]
    )
    assert res.exit_code == 0, res.output
    [(_, good, _), (_, bad, _)] = served["q-regen"]
    assert _read(out / "train.jsonl") == [{"prompt": "q-regen", "chosen": good, "rejected": bad}]
    assert "3 turns without both a 👍 and a 👎" in res.output


def test_export_prefs_without_any_pair_says_why(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "f.db")
    cid = store.add_completion(
        [{"role": "user", "content": "q"}], "a", model="m", identity={}, params={}
    )
    store.rate(cid, 1)
    store.close()
    res = CliRunner().invoke(
        app, ["export", "prefs", str(tmp_path / "f.db"), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 1
    assert (
        "Nothing to export" in res.output
        and "1 👍 and 0 👎" in res.output
        and "regenerate" in res.output
    )


def _feedback_db(path: Path) -> Path:
    """8 regenerated turns (one 👍, one 👎 each) plus 3 extra 👍: imbalanced, like real feedback."""
    store = FeedbackStore(path)
    for i in range(8):
        msgs = [{"role": "user", "content": f"How do I do thing {i}?"}]
        good = store.add_completion(msgs, "Here is a safe and helpful way to do it.", model="m",
                                    identity={}, params={})  # fmt: skip
        bad = store.add_completion(msgs, f"No. Go away {i}.", model="m", identity={}, params={},
                                   regenerate_of=good)  # fmt: skip
        store.rate(good, 1)
        store.rate(bad, -1)
    for i in range(3):
        cid = store.add_completion([{"role": "user", "content": f"Say hello {i}"}], "Hello there!",
                                   model="m", identity={}, params={})  # fmt: skip
        store.rate(cid, 1)
    store.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cai_kit.train.common import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.slow
def test_feedback_exports_train_with_train_kto_and_dpo_unchanged(
    tiny: Path, tmp_path: Path
) -> None:
    db = _feedback_db(tmp_path / "feedback.db")
    runner = CliRunner()
    res = runner.invoke(app, ["export", "kto", str(db), "--out", str(tmp_path / "kto")])
    assert res.exit_code == 0, res.output
    balance = res.output.split("balance with: ")[1].split()  # the command the export suggests
    assert balance[:4] == ["cai-kit", "train", "kto", str(tmp_path / "kto")]
    res = runner.invoke(app, [*balance[1:], "--model", f"hf:{tiny}", "--out", str(tmp_path / "kto_model"),
                              "--max-steps", "2", "--batch-size", "4"])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export", "prefs", str(db), "--out", str(tmp_path / "pairs")])
    assert res.exit_code == 0 and "Wrote 8 train" in res.output, res.output
    res = runner.invoke(app, ["train", "dpo", str(tmp_path / "pairs"), "--model", f"hf:{tiny}",
                              "--out", str(tmp_path / "dpo_model"), "--max-steps", "2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    for name in ("kto_model", "dpo_model"):
        assert (tmp_path / name / "adapter_model.safetensors").is_file()
        steps = [
            h for h in json.loads((tmp_path / name / "log_history.json").read_text()) if "loss" in h
        ]
        assert len(steps) == 2
    # The loop closes: the trained adapter is served again (hf:DIR with adapter_config.json).
    import openai

    h = start_serve(f"hf:{tmp_path / 'kto_model'}", db=db)
    try:
        client = openai.OpenAI(base_url=h.url + "/v1", api_key="unused")
        msgs = [{"role": "user", "content": "How do I do thing 1?"}]
        r = client.chat.completions.create(model="x", messages=msgs, max_tokens=8, seed=1)
        chunks = list(client.chat.completions.create(model="x", messages=msgs, max_tokens=8,
                                                     seed=1, stream=True))  # fmt: skip
    finally:
        h.stop()
    assert r.model == f"hf:{tmp_path / 'kto_model'}" and r.usage.completion_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content
    assert FeedbackStore(db).counts()["completions"] == 8 * 2 + 3 + 2
