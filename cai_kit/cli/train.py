"""`cai-kit train sft | reward | dpo | kto | orpo` and `cai-kit reward score`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cai_kit.train.run import TrainOptions

_D = (
    TrainOptions()
)  # the defaults, defined once in the library: help texts say them, unset flags fall back to them

train_app = typer.Typer(
    help="Fine-tune locally with TRL + PEFT (LoRA by default; CPU-safe defaults).",
    no_args_is_help=True,
)
reward_app = typer.Typer(help="Use a trained reward model.", no_args_is_help=True)

Data = Annotated[
    str | None,
    typer.Argument(help="JSONL file or a `cai-kit export` directory (or `data:` in --config)."),
]
Out = Annotated[
    str | None, typer.Option("--out", "-o", help="Output directory for the model, card and curves.")
]
Model = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help=f"local (embedded SmolLM2), hf:PATH, or a Hub id. [default: {_D.model}]",
    ),
]
Config = Annotated[
    Path | None,
    typer.Option("--config", help="Recipe YAML with the same option names; CLI flags override it."),
]
Set = Annotated[
    list[str] | None,
    typer.Option("--set", help="Any TRL config field: --set key=value (repeatable)."),
]
MaxSteps = Annotated[
    int | None, typer.Option("--max-steps", help="Stop after N optimiser steps (-1: use --epochs).")
]
Epochs = Annotated[
    float | None, typer.Option("--epochs", help=f"Training epochs. [default: {_D.epochs:g}]")
]
Batch = Annotated[
    int | None,
    typer.Option("--batch-size", help=f"Per-device batch size. [default: {_D.batch_size}]"),
]
Accum = Annotated[
    int | None,
    typer.Option("--grad-accum", help=f"Gradient accumulation steps. [default: {_D.grad_accum}]"),
]
Lr = Annotated[float | None, typer.Option("--lr", help="Learning rate (default per trainer).")]
MaxLen = Annotated[
    int | None,
    typer.Option("--max-length", help=f"Max tokens per example. [default: {_D.max_length}]"),
]
Seed = Annotated[int | None, typer.Option("--seed", help=f"Random seed. [default: {_D.seed}]")]
EvalFrac = Annotated[
    float | None, typer.Option("--eval-fraction", help="Hold out this share for eval metrics.")
]
Full = Annotated[
    bool | None,
    typer.Option("--full/--lora", help="Full fine-tuning instead of LoRA (LoRA is the default)."),
]
LoraR = Annotated[int | None, typer.Option("--lora-r", help=f"LoRA rank. [default: {_D.lora_r}]")]
LoraAlpha = Annotated[
    int | None, typer.Option("--lora-alpha", help=f"LoRA alpha. [default: {_D.lora_alpha}]")
]
Targets = Annotated[
    str | None,
    typer.Option("--target-modules", help="LoRA targets: all-linear or q_proj,v_proj,..."),
]
Merge = Annotated[
    bool | None, typer.Option("--merge", help="Save the model with the LoRA adapter merged in.")
]
FourBit = Annotated[
    bool | None,
    typer.Option("--load-in-4bit", help="QLoRA: 4-bit base (CUDA + bitsandbytes only)."),
]
Resume = Annotated[
    bool | None, typer.Option("--resume", help="Resume from the last checkpoint in --out.")
]
# every `train` command takes it (ppo, spin and grpo too): defined once, here
ReportTo = Annotated[
    str | None,
    typer.Option(
        "--report-to",
        help="Also log training metrics to: none, tensorboard (OUT/runs/), trackio, wandb, mlflow; "
        "comma-separate several (optional extras: pip install 'cai-kit[tensorboard]'). "
        f"[default: {_D.report_to}]",
    ),
]


def report_names(value: str | None) -> list[str]:
    """--report-to's integrations, checked before anything loads (a missing one: one sentence)."""
    from cai_kit.train.tracking import parse_report_to

    return parse_report_to(value)


def _run(kind: str, data, out, model, config, sets, **flags) -> None:  # type: ignore[no-untyped-def]
    from cai_kit.train.run import resolve_options, train

    opts = resolve_options(config, {"data": data, "out": out, "model": model, **flags}, sets or [])
    from cai_kit.train.common import quiet_libraries

    with quiet_libraries():
        path = train(kind, opts)
    import os

    if os.environ.get("RANK", "0") != "0":  # distributed: rank 0 speaks for the job
        return
    typer.echo(f"Saved to {path} (model card: {path / 'README.md'}, curves: {path / 'training_curves.png'}). "
               f"Try: cai-kit chat \"Hello\" --model hf:{path}")  # fmt: skip


def _common(kind: str):  # type: ignore[no-untyped-def]
    def command(
        data: Data = None, out: Out = None, model: Model = None, config: Config = None, set_: Set = None,
        max_steps: MaxSteps = None, epochs: Epochs = None, batch_size: Batch = None, grad_accum: Accum = None,
        lr: Lr = None, max_length: MaxLen = None, seed: Seed = None, eval_fraction: EvalFrac = None,
        full: Full = None, lora_r: LoraR = None, lora_alpha: LoraAlpha = None, target_modules: Targets = None,
        merge: Merge = None, load_in_4bit: FourBit = None, resume: Resume = None, report_to: ReportTo = None,
    ) -> None:  # fmt: skip
        _run(kind, data, out, model, config, set_, max_steps=max_steps, epochs=epochs, batch_size=batch_size,
             grad_accum=grad_accum, lr=lr, max_length=max_length, seed=seed, eval_fraction=eval_fraction, full=full,
             lora_r=lora_r, lora_alpha=lora_alpha, target_modules=target_modules, merge=merge,
             load_in_4bit=load_in_4bit, resume=resume, report_to=report_to)  # fmt: skip

    return command


_DOCS = {
    "sft": "Supervised fine-tuning on conversations (messages), prompt/completion, Alpaca or Dolly rows.",
    "reward": "Train a reward model on chosen/rejected pairs (uses a margin column when present).",
    "kto": "KTO on unpaired prompt/completion/label rows (paired data is unpaired for you).",
    "orpo": "ORPO on prompt/chosen/rejected (no reference model).",
}
for _kind, _doc in _DOCS.items():
    _cmd = _common(_kind)
    _cmd.__doc__ = _doc
    train_app.command(_kind)(_cmd)
    _cmd.__name__ = _kind


@train_app.command("dpo")
def dpo(
    data: Data = None, out: Out = None, model: Model = None, config: Config = None, set_: Set = None,
    loss: Annotated[str | None, typer.Option("--loss", help="TRL loss_type: sigmoid (DPO), ipo, hinge, robust, exo_pair, nca_pair, bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sft, sigmoid_norm; comma-separate to combine.")] = None,
    beta: Annotated[float | None, typer.Option("--beta", help="KL strength (IPO: the regulariser).")] = None,
    label_smoothing: Annotated[float | None, typer.Option("--label-smoothing", help="Label noise for robust/cDPO.")] = None,
    precompute_ref_logprobs: Annotated[bool | None, typer.Option("--precompute-ref-logprobs", help="Compute reference log-probs once before training.")] = None,
    max_steps: MaxSteps = None, epochs: Epochs = None, batch_size: Batch = None, grad_accum: Accum = None,
    lr: Lr = None, max_length: MaxLen = None, seed: Seed = None, eval_fraction: EvalFrac = None,
    full: Full = None, lora_r: LoraR = None, lora_alpha: LoraAlpha = None, target_modules: Targets = None,
    merge: Merge = None, load_in_4bit: FourBit = None, resume: Resume = None, report_to: ReportTo = None,
) -> None:  # fmt: skip
    """Direct preference optimisation (and IPO, hinge, robust, ...) on prompt/chosen/rejected."""
    _run("dpo", data, out, model, config, set_, loss=loss, beta=beta, label_smoothing=label_smoothing,
         precompute_ref_logprobs=precompute_ref_logprobs, max_steps=max_steps, epochs=epochs, batch_size=batch_size,
         grad_accum=grad_accum, lr=lr, max_length=max_length, seed=seed, eval_fraction=eval_fraction, full=full,
         lora_r=lora_r, lora_alpha=lora_alpha, target_modules=target_modules, merge=merge,
         load_in_4bit=load_in_4bit, resume=resume, report_to=report_to)  # fmt: skip


@reward_app.command("score")
def score(
    model: Annotated[
        Path, typer.Argument(help="A reward model directory from `cai-kit train reward`.")
    ],
    pairs: Annotated[
        Path, typer.Argument(help="Pairs JSONL or export directory (chosen/rejected).")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write per-pair scores to this JSONL.")
    ] = None,
) -> None:
    """Score held-out pairs with a reward model and print its accuracy."""
    from cai_kit.train.reward_score import score_pairs

    res = score_pairs(model, pairs, out)
    typer.echo(
        f"{res['pairs']} pairs: accuracy {res['accuracy']:.3f}, mean margin {res['mean_margin']:.4f}"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
    app.add_typer(reward_app, name="reward")
