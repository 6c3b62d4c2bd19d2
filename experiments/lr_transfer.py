"""The learning-rate transfer study's table and plot, from the points of ``configs/scaling/lr_transfer.py`` trained so
far (run the sweep first: ``python -m experiments.sweep --config configs/scaling/lr_transfer.py --workdir DIR``).

  python -m experiments.lr_transfer --workdir runs/scaling/lr_transfer

For each parametrisation and width: the final validation loss at every learning rate (mean over the finished
seeds), the best learning rate, and how far (in grid steps, a factor 2 each) it sits from the base width's best.
Writes ``WORKDIR/lr_transfer.md`` and ``WORKDIR/lr_transfer.png`` (loss against learning rate, a line per width,
a panel per parametrisation). Widths with no finished point are left out; a learning rate counts once any of its
seeds finished.
"""

from __future__ import annotations

import math
import os
import statistics

from absl import app, flags

from qwen35_jax.scaling.studies import LEARNING_RATES, LR_WIDTHS
from qwen35_jax.train.cli import run
from qwen35_jax.train.metrics import read_records
from qwen35_jax.train.sweep_results import summarize

FLAGS = flags.FLAGS
PARAMETRIZATIONS = ("sp", "mup")
SEEDS = (0, 1)


def define_flags() -> None:
    if "workdir" not in FLAGS:
        flags.DEFINE_string("workdir", None, "The sweep's folder (points in <arm>/seed<k>).")


def collect(workdir: str) -> dict[str, dict[int, dict[float, list[float]]]]:
    """``{parametrization: {width: {lr: [final validation loss per finished seed]}}}``."""
    out: dict[str, dict[int, dict[float, list[float]]]] = {}
    for p in PARAMETRIZATIONS:
        for w in LR_WIDTHS:
            for lr in LEARNING_RATES:
                for seed in SEEDS:
                    summary = summarize(read_records(os.path.join(workdir, f"{p}_w{w}_lr{lr:g}", f"seed{seed}")))
                    loss = next((v for k, v in summary.items() if k.startswith("val_loss/")), None)
                    if summary["status"] == "done" and loss is not None and math.isfinite(loss):
                        out.setdefault(p, {}).setdefault(w, {}).setdefault(lr, []).append(loss)
    return out


def best_rates(results: dict[str, dict[int, dict[float, list[float]]]]) -> dict[str, dict[int, float]]:
    return {p: {w: min(by_lr, key=lambda lr: statistics.fmean(by_lr[lr])) for w, by_lr in widths.items()}
            for p, widths in results.items()}


def table(results: dict[str, dict[int, dict[float, list[float]]]]) -> str:
    best = best_rates(results)
    lines = ["| param | width | " + " | ".join(f"lr {lr:g}" for lr in LEARNING_RATES) +
             " | best lr | steps from the base width's best |", "|---|---|" + "---|" * (len(LEARNING_RATES) + 2)]
    for p, widths in results.items():
        base = best[p][min(widths)]
        for w in sorted(widths):
            cells = []
            for lr in LEARNING_RATES:
                values = widths[w].get(lr, [])
                mark = "**" if lr == best[p][w] else ""
                cells.append(f"{mark}{statistics.fmean(values):.4f}{mark} (n={len(values)})" if values else "")
            shift = round(math.log2(best[p][w] / base))
            lines.append(f"| {p} | {w} | " + " | ".join(cells) + f" | {best[p][w]:g} | {shift:+d} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict[int, dict[float, list[float]]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (p, widths) in zip(axes[0], results.items(), strict=True):
        for w in sorted(widths):
            rates = sorted(widths[w])
            ax.plot(rates, [statistics.fmean(widths[w][lr]) for lr in rates], "o-", label=f"width {w}")
        ax.set(xscale="log", xlabel="learning rate", ylabel="final validation loss", title=p)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    results = collect(FLAGS.workdir)
    if not results:
        raise FileNotFoundError(f"no finished point under {FLAGS.workdir}: run the sweep first (module docstring)")
    text = "# Learning-rate transfer: final validation loss (nats / token), mean over seeds\n\n" + table(results)
    with open(os.path.join(FLAGS.workdir, "lr_transfer.md"), "w") as f:
        f.write(text)
    plot(results, os.path.join(FLAGS.workdir, "lr_transfer.png"))
    print(text)


if __name__ == "__main__":
    define_flags()
    run(main)
