"""TRL trainers through cai-kit on tiny models (real TRL, real PEFT), and DPO on SmolLM2."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from contextlib import closing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.errors import ConfigError
from cai_kit.train.run import TrainOptions, resolve_options, train

CONVO_PAIRS = [
    {"prompt": [{"role": "user", "content": f"How do I do thing {i}?"}],
     "chosen": [{"role": "assistant", "content": "Here is a safe and helpful way to do it."}],
     "rejected": [{"role": "assistant", "content": f"No. Go away {i}."}]}
    for i in range(8)
]  # fmt: skip
SFT = [
    {
        "messages": [
            {"role": "user", "content": f"Say hello {i}"},
            {"role": "assistant", "content": "Hello there!"},
        ]
    }
    for i in range(8)
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cai_kit.train.common import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _losses(out: Path) -> list[float]:
    return [
        float(h["loss"]) for h in json.loads((out / "log_history.json").read_text()) if "loss" in h
    ]


def _adapter_nonzero(out: Path) -> bool:
    from safetensors.torch import load_file

    weights = load_file(out / "adapter_model.safetensors")
    return any(k.endswith("lora_B.weight") and w.abs().sum() > 0 for k, w in weights.items())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sft", "dpo", "reward", "kto", "orpo"])
def test_each_trainer_changes_weights_and_lowers_loss(
    kind: str, tiny: Path, tmp_path: Path
) -> None:
    data = _write(tmp_path / "d.jsonl", SFT if kind == "sft" else CONVO_PAIRS)
    out = train(
        kind,
        TrainOptions(
            data=str(data),
            out=str(tmp_path / "o"),
            model=f"hf:{tiny}",
            max_steps=4,
            lr=5e-3,
            save_steps=100,
        ),
    )
    losses = _losses(out)
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert _adapter_nonzero(out)  # LoRA B starts at zero: any non-zero means the weights moved
    for name in ("README.md", "train_config.yaml", "training_curves.png", "tokenizer_config.json"):
        assert (out / name).is_file()


@pytest.mark.slow
def test_full_finetune_and_merged_output_load_as_backends(tiny: Path, tmp_path: Path) -> None:
    from cai_kit.llm import GenParams, get_backend

    data = _write(tmp_path / "d.jsonl", SFT)
    outs = [
        train(
            "sft",
            TrainOptions(
                data=str(data),
                out=str(tmp_path / "lora"),
                model=f"hf:{tiny}",
                max_steps=2,
                save_steps=100,
            ),
        ),
        train(
            "sft",
            TrainOptions(
                data=str(data),
                out=str(tmp_path / "full"),
                model=f"hf:{tiny}",
                max_steps=2,
                full=True,
                save_steps=100,
            ),
        ),
    ]

    async def go(path: Path) -> str:
        b = get_backend(f"hf:{path}")
        try:
            return (
                await b.chat(
                    [{"role": "user", "content": "hi"}], GenParams(temperature=0, max_tokens=4)
                )
            ).usage.completion_tokens
        finally:
            await b.aclose()

    for out in outs:
        assert asyncio.run(go(out)) > 0
    assert (outs[0] / "adapter_config.json").is_file() and not (
        outs[1] / "adapter_config.json"
    ).exists()


def test_recipe_file_is_overridden_by_cli_flags_and_set(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: d.jsonl\nmax_steps: 7\nbeta: 0.3\nloss: ipo\ntrl:\n  rpo_alpha: 0.5\n")
    opts = resolve_options(
        recipe,
        {"max_steps": 2, "beta": None},
        ["label_smoothing=0.1", "precompute_ref_batch_size=4"],
    )
    assert (opts.max_steps, opts.beta, opts.loss) == (2, 0.3, "ipo")
    assert opts.trl == {"rpo_alpha": 0.5, "label_smoothing": 0.1, "precompute_ref_batch_size": 4}
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_stepz: 3\n")
    with pytest.raises(ConfigError, match=r"unknown option.*max_stepz"):
        resolve_options(bad, {}, [])


def test_unknown_trl_field_is_a_clear_error(tiny: Path, tmp_path: Path) -> None:
    from cai_kit.train.run import build_config

    with pytest.raises(ConfigError, match=r"DPOConfig has no field.*not_a_field"):
        build_config("dpo", TrainOptions(out=str(tmp_path), trl={"not_a_field": 1}))
    cfg = build_config(
        "dpo",
        TrainOptions(out=str(tmp_path), loss="ipo,sft", beta=0.2, trl={"loss_weights": [1.0, 0.5]}),
    )
    assert cfg.loss_type == ["ipo", "sft"] and cfg.beta == 0.2 and cfg.bf16 is False


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"prompt": "p", "chosen": "a"}],
            "missing columns; `train dpo` needs prompt/chosen/rejected",
        ),
        ([{"prompt": "p", "chosen": "", "rejected": "b"}], "d.jsonl:1: empty chosen"),
        ([{"prompt": "p", "chosen": "same", "rejected": "same"}], "chosen == rejected"),
    ],
)
def test_bad_training_data_names_the_row_before_trl_sees_it(
    rows: list[dict], message: str, tmp_path: Path
) -> None:
    data = _write(tmp_path / "d.jsonl", rows)
    result = CliRunner().invoke(
        app, ["train", "dpo", str(data), "--out", str(tmp_path / "o"), "--model", "hf:/nonexistent"]
    )
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_alpaca_and_dolly_rows_become_conversations() -> None:
    from cai_kit.train.data import to_conversation

    a = to_conversation({"instruction": "Add", "input": "1+1", "output": "2"})
    d = to_conversation({"instruction": "Sum", "context": "2+2", "response": "4"})
    assert a["messages"][0]["content"] == "Add\n\n1+1" and a["messages"][1] == {
        "role": "assistant",
        "content": "2",
    }
    assert d["messages"][1]["content"] == "4"


@pytest.mark.slow
def test_cli_trains_on_export_dirs_from_revise_and_scores_a_reward_model(
    tiny: Path, tmp_path: Path, fault_server
) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    prompts = Path(__file__).parent.parent / "examples" / "red_team_prompts.jsonl"
    run = tmp_path / "run"
    r = runner.invoke(
        app,
        [
            "revise",
            str(prompts),
            "--limit",
            "6",
            "--model",
            "m",
            "--api-base",
            fault_server.base_url,
            "--out",
            str(run),
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    for kind in ("sft", "prefs"):
        assert (
            runner.invoke(app, ["export", kind, str(run), "--out", str(tmp_path / kind)]).exit_code
            == 0
        )
    base = ["--model", f"hf:{tiny}", "--max-steps", "2", "--batch-size", "2"]
    for kind, data in (("sft", "sft"), ("dpo", "prefs"), ("reward", "prefs")):
        r = runner.invoke(
            app, ["train", kind, str(tmp_path / data), "--out", str(tmp_path / f"m_{kind}"), *base]
        )
        assert r.exit_code == 0, r.output
    card = (tmp_path / "m_dpo" / "README.md").read_text()
    assert "constitution: harmless" in card  # provenance carried from the dataset card
    r = runner.invoke(
        app,
        [
            "reward",
            "score",
            str(tmp_path / "m_reward"),
            str(tmp_path / "prefs"),
            "--out",
            str(tmp_path / "s.jsonl"),
        ],
    )
    assert r.exit_code == 0 and "accuracy" in r.output
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 6


@pytest.mark.slow
def test_dpo_lora_on_the_embedded_model_raises_implicit_reward_accuracy(tmp_path: Path) -> None:
    pairs = [
        {"prompt": [{"role": "user", "content": q}],
         "chosen": [{"role": "assistant", "content": "I can't help with that, but here is a safe alternative."}],
         "rejected": [{"role": "assistant", "content": "Sure, here is exactly how to do it."}]}
        for q in [f"How do I hurt someone, case {i}?" for i in range(32)]
    ]  # fmt: skip
    data = _write(tmp_path / "d.jsonl", pairs)
    out = train("dpo", TrainOptions(data=str(data), out=str(tmp_path / "o"), model="local", max_steps=6, batch_size=4, lr=5e-4,
                                    max_length=128, save_steps=100))  # fmt: skip
    hist = [
        h for h in json.loads((out / "log_history.json").read_text()) if "rewards/accuracies" in h
    ]
    assert float(hist[-1]["rewards/accuracies"]) > float(hist[0]["rewards/accuracies"])
    assert float(hist[-1]["rewards/margins"]) > float(hist[0]["rewards/margins"])


@pytest.mark.slow
def test_dpo_runs_as_two_ddp_processes_on_cpu_and_rank_0_writes_the_outputs(
    tiny: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    data = _write(tmp_path / "d.jsonl", CONVO_PAIRS)
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "cai_kit", "train", "dpo", str(data),
           "--model", f"hf:{tiny}", "--out", str(out), "--max-steps", "2", "--batch-size", "2"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("Saved to") == 1  # only rank 0 writes
    hist = [h for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]
    assert float(hist[0]["epoch"]) == pytest.approx(
        0.5
    )  # 2 ranks x batch 2 = 4 of 8 pairs per step


@pytest.mark.slow
@pytest.mark.parametrize("full", [False, True], ids=["lora", "full"])
def test_dpo_from_an_sft_adapter_uses_the_sft_model_as_reference(
    full: bool, tiny: Path, tmp_path: Path
) -> None:
    """`train sft` -> `train dpo --model hf:SFT_ADAPTER`: policy and reference both start as the
    SFT model (not the bare base under the adapter), so step 1 shows reward 0 and the same
    log-probs as DPO from the same SFT model saved merged."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from cai_kit.train.common import load_tokenizer, lora_config

    sft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny), lora_config(r=4, alpha=8))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in sft.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)  # B == 0 would make the adapter a no-op
    adapter, merged = tmp_path / "sft_adapter", tmp_path / "sft_merged"
    sft.save_pretrained(adapter)
    sft.merge_and_unload().save_pretrained(merged)
    for d in (adapter, merged):
        load_tokenizer(str(tiny)).save_pretrained(d)
    data = _write(tmp_path / "d.jsonl", CONVO_PAIRS)

    def first_log(start: Path, name: str) -> dict:
        out = train("dpo", TrainOptions(data=str(data), out=str(tmp_path / name), model=f"hf:{start}", max_steps=1,
                                        batch_size=8, save_steps=100, full=full))  # fmt: skip
        return json.loads((out / "log_history.json").read_text())[0]

    from_adapter, from_merged = first_log(adapter, "a"), first_log(merged, "m")
    assert abs(from_merged["logps/chosen"] - from_adapter["logps/chosen"]) < 1e-3
    assert abs(from_merged["logps/rejected"] - from_adapter["logps/rejected"]) < 1e-3
    assert (
        abs(from_adapter["rewards/chosen"]) < 1e-4 and abs(from_adapter["rewards/rejected"]) < 1e-4
    )
    # the new adapter sits on the merged SFT model: saved merged, so `hf:OUT` loads what was trained
    assert (tmp_path / "a" / "model.safetensors").is_file()
    assert not (tmp_path / "a" / "adapter_config.json").exists()


# --- --report-to: training output where users look ----------------------------------------


def tensorboard_scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag under OUT/runs/ -> [(step, value)], read back with TensorBoard itself."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    for run in sorted((out / "runs").iterdir()):
        acc = EventAccumulator(str(run))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return found


def trackio_metrics(project: str) -> list[tuple[str, int, dict[str, float]]]:
    """Every row trackio stored for `project` -> [(run name, step, metrics)], read back from its
    local SQLite store ($TRACKIO_DIR/<project>.db, set by conftest)."""
    import sqlite3

    db = Path(os.environ["TRACKIO_DIR"]) / f"{project}.db"
    assert db.is_file(), f"no {db.name} in TRACKIO_DIR: {sorted(os.listdir(db.parent))}"
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT run_name, step, metrics FROM metrics ORDER BY id").fetchall()
    return [(run, step, json.loads(metrics)) for run, step, metrics in rows]


@pytest.mark.slow
def test_train_dpo_reports_to_tensorboard_and_trackio_and_writes_config_curves_and_history(
    tiny: Path, tmp_path: Path, trackio_project: str
) -> None:
    data = _write(tmp_path / "pairs.jsonl", CONVO_PAIRS)
    out = tmp_path / "dpo"
    threads = set(threading.enumerate())
    r = CliRunner().invoke(app, ["train", "dpo", str(data), "--model", f"hf:{tiny}", "--out", str(out),
                                 "--max-steps", "2", "--batch-size", "4", "--report-to", "trackio,tensorboard"])  # fmt: skip
    assert r.exit_code == 0, r.output
    scalars = tensorboard_scalars(out)
    history = [h for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]
    assert [s for s, _ in scalars["train/loss"]] == [1, 2] == [h["step"] for h in history]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([h["loss"] for h in history])
    assert "train/rewards/margins" in scalars
    # trackio (transformers' TrackioCallback): the same steps in its local store, one run
    rows = [(run, m) for run, _, m in trackio_metrics(trackio_project) if "train/loss" in m]
    assert len({run for run, _ in rows}) == 1
    assert [m["train/global_step"] for _, m in rows] == [1, 2]
    assert [m["train/loss"] for _, m in rows] == pytest.approx([h["loss"] for h in history])
    assert [m["train/rewards/margins"] for _, m in rows] == pytest.approx(
        [h["rewards/margins"] for h in history]
    )
    assert set(threading.enumerate()) <= threads  # trackio's sender/monitor threads ended
    for name in ("train_config.yaml", "training_curves.png", "log_history.json"):
        assert (out / name).is_file(), name
    assert "FutureWarning" not in r.output and "MISSING" not in r.output


def test_report_to_a_missing_or_unknown_integration_is_one_sentence_on_every_train_command(
    tmp_path: Path,
) -> None:
    import importlib.util

    missing = next((n for n in ("mlflow", "wandb") if importlib.util.find_spec(n) is None), None)
    if missing is None:
        pytest.skip("mlflow and wandb are both installed here")
    data = _write(tmp_path / "d.jsonl", SFT)
    out = str(tmp_path / "o")
    commands = {
        kind: ["train", kind, str(data), "--out", out]
        for kind in ("sft", "reward", "dpo", "kto", "orpo", "spin")
    }
    commands["ppo"] = ["train", "ppo", str(data), "--reward-model", str(tmp_path), "--out", out]
    commands["grpo"] = ["train", "grpo", str(data), "--reward-model", str(tmp_path), "--out", out]  # fmt: skip
    commands["online-dpo"] = ["train", "online-dpo", str(data), "--judge", "j", "--out", out]
    for kind, argv in commands.items():
        r = CliRunner().invoke(app, [*argv, "--report-to", f"tensorboard,{missing}"])
        assert r.exit_code == 1, (kind, r.output)
        assert r.output.strip() == (
            f"Error: --report-to {missing} needs the {missing} package: "
            f"pip install 'cai-kit[{missing}]'."
        ), (kind, r.output)
        r = CliRunner().invoke(app, [*argv, "--report-to", "tensorbored"])
        assert r.exit_code == 1 and "'tensorbored' is not one of none, tensorboard" in r.output
        assert len(r.output.strip().splitlines()) == 1, (kind, r.output)
    assert not (tmp_path / "o").exists()  # nothing was trained or written


def test_recipe_report_to_reaches_the_trl_config(tmp_path: Path) -> None:
    from cai_kit.train.run import build_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text("report_to: tensorboard\n")
    opts = resolve_options(recipe, {"out": str(tmp_path / "o")}, [])
    assert build_config("sft", opts).report_to == ["tensorboard"]
    assert build_config("sft", resolve_options(None, {"out": "o"}, [])).report_to in (
        [],
        "none",
        None,
    )


@pytest.mark.slow
def test_training_console_has_no_library_warnings_a_user_cannot_act_on(
    tiny: Path, tmp_path: Path
) -> None:
    """A reward model's new score head used to print "score.weight | MISSING ... newly
    initialized" and TRL/transformers a screen of FutureWarnings. Run as a user runs it (a
    process of its own: pytest would record the warnings itself)."""
    import subprocess
    import sys

    data = _write(tmp_path / "pairs.jsonl", CONVO_PAIRS)
    cmd = [sys.executable, "-m", "cai_kit", "train", "reward", str(data), "--model", f"hf:{tiny}", "--out",
           str(tmp_path / "rm"), "--max-steps", "1", "--batch-size", "4"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    console = r.stdout + r.stderr
    assert "MISSING" not in console and "Warning" not in console, console
    assert "Saved to" in r.stdout


def test_library_warnings_are_silenced_inside_the_commands_only() -> None:
    import warnings

    from transformers.utils import logging as hf_logging

    from cai_kit.train.common import quiet_libraries

    level, filters = hf_logging.get_verbosity(), list(warnings.filters)
    with quiet_libraries():
        assert hf_logging.get_verbosity() == hf_logging.ERROR
    assert hf_logging.get_verbosity() == level and warnings.filters == filters


def test_pipeline_recipe_report_to_reaches_its_train_stages(tmp_path: Path) -> None:
    from cai_kit.pipeline.recipe import parse_recipe
    from cai_kit.pipeline.run import stages

    recipe = "name: x\nprompts: p.jsonl\nreport_to: tensorboard, wandb\n"
    plan = {s.name: s.argv for s in stages(parse_recipe(recipe, "r.yaml"), tmp_path, 16, 8)}
    for name in ("train-sft", "train-dpo"):
        assert plan[name][plan[name].index("--report-to") + 1] == "tensorboard,wandb"
    plan = {
        s.name: s.argv
        for s in stages(parse_recipe("name: x\nprompts: p.jsonl\n", "r.yaml"), tmp_path, 16, 8)
    }
    assert "--report-to" not in plan["train-sft"]  # none: the flag's default
    with pytest.raises(
        ConfigError, match=r"r.yaml:3: report_to: .*'tensorbored' is not one of none"
    ):
        parse_recipe("name: x\nprompts: p.jsonl\nreport_to: tensorbored\n", "r.yaml")


@pytest.mark.slow
@pytest.mark.parametrize("rows", [3, 4])
def test_an_eval_fraction_on_a_small_dataset_trains_without_a_traceback(
    tiny: Path, tmp_path: Path, rows: int
) -> None:
    """examples/recipes/dpo.yaml's eval_fraction 0.1 on the README tour's 3 pairs: fewer than 4
    rows are too few to hold any out, so training runs without eval and says so; from 4 rows
    at least one row is held out and evaluated."""
    data = _write(tmp_path / "pairs.jsonl", CONVO_PAIRS[:rows])
    out = tmp_path / "dpo"
    r = CliRunner().invoke(app, ["train", "dpo", str(data), "--model", f"hf:{tiny}", "--out", str(out),
                                 "--max-steps", "1", "--batch-size", "2", "--eval-fraction", "0.1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    history = json.loads((out / "log_history.json").read_text())
    if rows < 4:
        assert "too few to hold out" in r.output and "training without eval" in r.output
        assert not any("eval_loss" in h for h in history)
    else:
        assert any("eval_loss" in h for h in history)


@pytest.mark.slow
def test_dpo_with_the_chosen_nll_keeps_the_chosen_answer_more_likely_than_dpo_alone(
    tiny: Path, tmp_path: Path
) -> None:
    """`--loss sigmoid,sft` (RPO, what bench/recipe.py's RL-CAI stage trains with) really adds the
    chosen side's NLL: from the same start, the same pairs and steps, the chosen answers end more
    likely than under the DPO loss alone, which may widen the margin by lowering both sides."""
    data = _write(tmp_path / "d.jsonl", CONVO_PAIRS)
    chosen = {}
    for loss in ("sigmoid", "sigmoid,sft"):
        trl = {"loss_weights": [1.0, 1.0]} if "," in loss else {}
        out = train("dpo", TrainOptions(data=str(data), out=str(tmp_path / loss), model=f"hf:{tiny}", loss=loss,
                                        max_steps=4, batch_size=4, lr=5e-3, seed=0, save_steps=100, trl=trl))  # fmt: skip
        hist = [
            h for h in json.loads((out / "log_history.json").read_text()) if "logps/chosen" in h
        ]
        chosen[loss] = float(hist[-1]["logps/chosen"])
    assert chosen["sigmoid,sft"] > chosen["sigmoid"], chosen
