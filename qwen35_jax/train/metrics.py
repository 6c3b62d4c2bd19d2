"""Training metrics: ``WORKDIR/metrics.jsonl``, TensorBoard event files, a console progress line, the curves PNG.

Every record is a flat dict; training records carry ``step`` and ``loss``, validation records ``step`` and
``val_loss/<corpus>``, other records an ``event`` name. On resume the JSONL file is cut back to the records up to the
restored step, so a resumed run's file reads like an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"


def read_records(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsLog:
    """Keep records, append them to ``metrics.jsonl`` and TensorBoard (process 0 writes; every process keeps)."""

    def __init__(self, workdir: str, *, resume_step: int | None = None) -> None:
        self.workdir = workdir
        self._path = os.path.join(workdir, METRICS_FILE)
        self._main = jax.process_index() == 0
        kept = [] if resume_step is None else [r for r in read_records(workdir)
                                               if r.get("step", 0) <= resume_step and "event" not in r]
        self.records: list[dict[str, Any]] = list(kept)
        self._tb = None
        if self._main:
            tmp = self._path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
            os.replace(tmp, self._path)
            from tensorboardX import SummaryWriter  # local: slow import

            self._tb = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))

    def write(self, record: dict[str, Any], *, echo: bool = True) -> None:
        self.records.append(record)
        if not self._main:
            return
        if echo:
            print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
                  flush=True)
        with open(self._path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if "step" in record and self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key if "/" in key else f"train/{key}", value, record["step"])
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class Progress:
    """One console line per logged step: step/total, loss, tokens/s and the ETA from the recent step time."""

    def __init__(self, total_steps: int, start_step: int) -> None:
        self.total, self.start, self.begin = total_steps, start_step, time.perf_counter()

    def line(self, step: int, loss: float, tokens_per_s: float | None, seconds_per_step: float | None) -> str:
        done = step / self.total
        bar = "#" * int(20 * done) + "." * (20 - int(20 * done))
        eta = "?" if seconds_per_step is None else _duration(seconds_per_step * (self.total - step))
        speed = "" if tokens_per_s is None else f"  {tokens_per_s:,.0f} tok/s"
        return f"[{bar}] {step}/{self.total}  loss {loss:.4f}{speed}  ETA {eta}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def plot_curves(records: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> None:
    """Training loss (and the learning rate) and the validation loss per corpus against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r and math.isfinite(r["loss"])]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="black", linewidth=1)
    val_keys = sorted({k for r in records for k in r if k.startswith("val_loss/")})
    for key in val_keys:
        points = [(r["step"], r[key]) for r in records if key in r]
        ax.plot(*zip(*points, strict=True), marker="o", label=key.replace("val_loss/", "validation: "))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
