"""One runner for every TRL-backed trainer: `train(kind, options)`.

kind -> (TRL config, TRL trainer): sft -> SFT, reward -> Reward, dpo -> DPO (every TRL loss
type), kto -> KTO, orpo -> trl.experimental ORPO. What differs between them is a row in
`_SPECS`; everything else (model loading, LoRA, CPU-safe precision, recipe + --set merging,
outputs, model card, curves) is shared, so the five trainers cannot drift apart.

Outputs in OUT: the adapter (or the full / --merge'd model), the tokenizer, `train_config.yaml`
(the resolved options and TRL config), `README.md` (a model card with the data's provenance),
`training_curves.png` and `log_history.json` (every logged step: loss, rewards, ...). With
`report_to` (--report-to) TRL's own integration callbacks log the same steps to TensorBoard
(OUT/runs/), trackio, wandb or mlflow. `hf:OUT` then works as a backend everywhere.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cai_kit.errors import ConfigError
from cai_kit.notices import note


@dataclass
class TrainOptions:
    """Options shared by every trainer; a recipe YAML uses the same names (CLI flags win)."""

    data: str = ""
    out: str = ""
    model: str = "local"
    max_steps: int = -1
    epochs: float = 1.0
    batch_size: int = 4
    grad_accum: int = 1
    lr: float | None = None  # None: a per-trainer default
    max_length: int = 512
    seed: int = 0
    eval_fraction: float = 0.0
    full: bool = False  # full fine-tuning instead of LoRA
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str = "all-linear"
    merge: bool = False
    load_in_4bit: bool = False
    resume: bool = False
    save_steps: int = 500
    logging_steps: int = 1
    report_to: str = "none"  # none | tensorboard | trackio | wandb | mlflow, comma-separated
    # DPO family
    loss: str = "sigmoid"
    beta: float | None = None
    label_smoothing: float | None = None
    precompute_ref_logprobs: bool = False
    trl: dict[str, Any] = field(default_factory=dict)  # any field of the TRL config (`--set k=v`)


_DEFAULT_LR = {"sft": 2e-4, "reward": 1e-4, "dpo": 5e-5, "kto": 5e-5, "orpo": 5e-5}


def _specs(kind: str) -> tuple[Any, Any]:
    import trl

    if kind == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOConfig, ORPOTrainer
    return {
        "sft": (trl.SFTConfig, trl.SFTTrainer),
        "reward": (trl.RewardConfig, trl.RewardTrainer),
        "dpo": (trl.DPOConfig, trl.DPOTrainer),
        "kto": (trl.KTOConfig, trl.KTOTrainer),
    }[kind]


def parse_set(values: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs; values are parsed as YAML scalars (numbers, bools, lists)."""
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes key=value, not {item!r}.")
        out[key.strip()] = yaml.safe_load(value)
    return out


def resolve_options(recipe: Path | None, cli: dict[str, Any], sets: list[str]) -> TrainOptions:
    """Defaults < recipe file < CLI flags that were given (not None) < --set."""
    merged: dict[str, Any] = {}
    if recipe is not None:
        if not recipe.is_file():
            raise ConfigError(f"No recipe file at {recipe}.")
        data = yaml.safe_load(recipe.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{recipe}: a recipe is a mapping of option names to values.")
        names = {f.name for f in dataclasses.fields(TrainOptions)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{recipe}: unknown option(s) {', '.join(unknown)}; put TRL config fields under `trl:`."
            )
        merged.update(data)
    merged.update({k: v for k, v in cli.items() if v is not None})
    opts = TrainOptions(**merged)
    opts.trl = {**opts.trl, **parse_set(sets)}
    return opts


def build_config(kind: str, opts: TrainOptions) -> Any:
    """The TRL config for `kind`, with CPU-safe precision and every --set field checked."""
    from cai_kit.train.common import has_cuda
    from cai_kit.train.tracking import parse_report_to, trackio_project

    config_cls, _ = _specs(kind)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(opts.trl) - fields)
    if unknown:
        raise ConfigError(
            f"{config_cls.__name__} has no field(s) {', '.join(unknown)} (from --set or the recipe's trl:)."
        )
    cuda = has_cuda()
    kw: dict[str, Any] = dict(
        output_dir=opts.out, max_steps=opts.max_steps, num_train_epochs=opts.epochs,
        per_device_train_batch_size=opts.batch_size, per_device_eval_batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.grad_accum, learning_rate=opts.lr or _DEFAULT_LR[kind],
        seed=opts.seed, logging_steps=opts.logging_steps, save_steps=opts.save_steps, save_total_limit=2,
        report_to=parse_report_to(opts.report_to), bf16=cuda, fp16=False, use_cpu=not cuda, dataloader_num_workers=0,
        eval_strategy="steps" if opts.eval_fraction > 0 else "no",
        eval_steps=max(1, opts.max_steps // 4) if opts.max_steps > 0 else 50,
    )  # fmt: skip
    if "trackio" in kw["report_to"]:  # transformers' TrackioCallback: the project our loops use
        kw["project"] = trackio_project(kind)
    if "max_length" in fields:
        kw["max_length"] = opts.max_length
    if kind == "sft":
        kw["completion_only_loss"] = (
            None  # TRL default: loss on completions for prompt/completion rows
        )
        kw["assistant_only_loss"] = False
    if kind == "dpo":
        kw["loss_type"] = [x.strip() for x in opts.loss.split(",")]
        kw["precompute_ref_log_probs"] = opts.precompute_ref_logprobs
        if opts.label_smoothing is not None:
            kw["label_smoothing"] = opts.label_smoothing
    if kind in ("dpo", "kto", "orpo") and opts.beta is not None:
        kw["beta"] = opts.beta
    kw.update(opts.trl)
    return config_cls(**{k: v for k, v in kw.items() if k in fields})


def train(kind: str, opts: TrainOptions) -> Path:
    """Train and write every output into opts.out; returns the output directory."""
    from cai_kit.train import common, data
    from cai_kit.train.report import plot_curves, write_card

    if kind not in _DEFAULT_LR:
        raise ConfigError(f"Unknown trainer {kind!r}.")
    if not opts.data or not opts.out:
        raise ConfigError("Give the training data (argument or `data:` in the recipe) and --out.")
    from cai_kit.train.tracking import parse_report_to

    parse_report_to(opts.report_to)  # a missing integration is one sentence, before any loading
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = data.load(
        kind, Path(opts.data), opts.eval_fraction, opts.seed, opts.max_length
    )  # data errors first
    if opts.eval_fraction > 0 and "test" not in ds:  # fewer than 4 rows: nothing to hold out
        note(f"eval_fraction {opts.eval_fraction:g}: {len(ds['train'])} training row(s) are too few "
             "to hold out (4 or more needed); training without eval.")  # fmt: skip
        opts.eval_fraction = 0.0
    base = common.resolve_model(opts.model)
    if not opts.full and common.adapter_base(base) is not None:
        # Started from an adapter (e.g. `train sft` output): it is merged into the weights on
        # load, and the new adapter sits on that merged model, which no directory holds; so
        # the output is saved merged (an adapter on an adapter would not load as `hf:OUT`).
        opts.merge = True
    tokenizer = common.load_tokenizer(base)
    model = common.load_model(base, for_reward=kind == "reward", load_in_4bit=opts.load_in_4bit)
    if kind == "reward" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    peft_config = None
    if not opts.full:
        peft_config = common.lora_config(opts.lora_r, opts.lora_alpha, opts.lora_dropout, opts.target_modules,
                                         "SEQ_CLS" if kind == "reward" else "CAUSAL_LM")  # fmt: skip
    config = build_config(kind, opts)
    _, trainer_cls = _specs(kind)
    kwargs: dict[str, Any] = dict(model=model, args=config, train_dataset=ds["train"], processing_class=tokenizer,
                                  peft_config=peft_config)  # fmt: skip
    if "test" in ds:
        kwargs["eval_dataset"] = ds["test"]
    if kind in ("dpo", "kto") and opts.full and common.adapter_base(base) is not None:
        # TRL would load the reference from config._name_or_path: the bare base under the adapter
        kwargs["ref_model"] = common.load_model(base)
    # DPO + LoRA: the reference is the starting model with the new adapter off (a starting
    # adapter was merged into the weights by load_model, so it stays in the reference)
    trainer = trainer_cls(**kwargs)
    resume = opts.resume and any(out.glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if resume else None)
    if "test" in ds:
        trainer.log(trainer.evaluate())
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():  # under accelerate/torchrun only rank 0 writes outputs
        return out
    final = trainer.accelerator.unwrap_model(trainer.model)
    merge = peft_config is not None and opts.merge
    if merge:
        final = final.merge_and_unload()
    final.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if peft_config is not None and not merge:  # the adapter must find its base on load
        cfg_path = out / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = base
        cfg_path.write_text(json.dumps(cfg, indent=2))
    resolved = {"kind": kind, "base_model": base, "options": dataclasses.asdict(opts),
                "trl_config": {k: _plain(v) for k, v in config.to_dict().items()}}  # fmt: skip
    (out / "train_config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    history = trainer.state.log_history
    (out / "log_history.json").write_text(json.dumps(history, indent=1))
    plot_curves(history, out / "training_curves.png", kind)
    write_card(out, kind, opts, base, history)
    return out


def _plain(v: Any) -> Any:
    return v if isinstance(v, str | int | float | bool | type(None) | list | dict) else str(v)
