"""Training outputs for people: a PNG of the curves and a model card with provenance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CURVES = ("loss", "rewards/margins", "rewards/accuracies", "eval_loss", "accuracy")


def plot_curves(
    history: list[dict[str, Any]], path: Path, kind: str, keys: tuple[str, ...] = CURVES
) -> None:
    """One panel per metric of `keys` found in the history (entries with a `step`). With none of
    them, the PNG says so rather than being missing: every trainer's OUT has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = [k for k in keys if any(k in h and "step" in h for h in history)]
    if not found:
        fig, ax = plt.subplots(figsize=(4.2, 3.4))
        ax.text(0.5, 0.5, "no step was logged", ha="center", va="center")
        ax.set_axis_off()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    fig, axes = plt.subplots(1, len(found), figsize=(4.2 * len(found), 3.4), squeeze=False)
    for ax, key in zip(axes[0], found, strict=True):
        pts = [(h["step"], h[key]) for h in history if key in h and "step" in h]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3)
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.suptitle(f"cai-kit train {kind}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _data_provenance(data: Path) -> str:
    """The dataset card (from `cai-kit export`) next to the data, if there is one."""
    folder = data if data.is_dir() else data.parent
    card = folder / "README.md"
    if card.is_file():
        return card.read_text(encoding="utf-8").split("---", 2)[-1].strip()
    return f"Data: `{data}` (no dataset card found next to it)."


def write_card(out: Path, kind: str, opts: Any, base: str, history: list[dict[str, Any]]) -> None:
    final = {
        k: v
        for h in history
        for k, v in h.items()
        if k in ("loss", "train_loss", "rewards/accuracies", "rewards/margins", "eval_loss")
    }
    lines = [
        "---", "library_name: peft" if not opts.full and not opts.merge else "library_name: transformers",
        f"base_model: {base}", "tags: [cai-kit, trl, " + kind + "]", "---", "",
        f"# cai-kit {kind} model", "",
        f"Trained with `cai-kit train {kind}` ({'full fine-tuning' if opts.full else f'LoRA r={opts.lora_r}'}"
        f"{', merged' if opts.merge else ''}) from `{base}`.", "",
        f"- steps: {opts.max_steps if opts.max_steps > 0 else 'epochs=' + str(opts.epochs)}, batch {opts.batch_size} x accum {opts.grad_accum}",
        f"- final metrics: {json.dumps(final)}",
        f"- use it: `cai-kit chat \"...\" --model hf:{out}`", "",
        "## Training data", "", _data_provenance(Path(opts.data)), "",
    ]  # fmt: skip
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")
