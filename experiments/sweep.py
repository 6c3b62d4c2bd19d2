"""Run a grid of config overrides one after another (or print the commands), then tabulate and plot the results.

  python -m experiments.sweep --config configs/tiny.py --workdir runs/sweep \
      --sweep 'model.full_attention_interval=2,4;model.num_experts=4,8' [--sweep_set train.steps=20] [--dry_run]

``--sweep``: ``;``-separated axes ``key=v1,v2,...`` (their cartesian product is the grid); ``--sweep_set``: the same
syntax for overrides shared by every point. Each point trains with ``python -m experiments.train`` into
``WORKDIR/<point>`` (a subprocess: a failed point does not stop the sweep; rerunning the sweep resumes unfinished
points from their checkpoints and skips finished ones). ``--dry_run`` prints the commands instead, e.g. to submit
them to a cluster. At the end: ``WORKDIR/results.md`` (final train / validation loss, parameters, tokens/s per point)
and ``WORKDIR/sweep.png`` (the training-loss curves of all points).
"""

from __future__ import annotations

import itertools
import math
import os
import shlex
import subprocess
import sys

from absl import app, flags

from qwen35_jax.train.cli import run
from qwen35_jax.train.metrics import read_records

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags. Defined on demand (by ``__main__`` or a test), not at import, so this module can be
    imported next to the other command-line modules in one process."""
    if "sweep" in FLAGS:
        return
    flags.DEFINE_string("config", None, "Experiment config file[:variant], as for experiments.train.")
    flags.DEFINE_string("workdir", None, "Folder for the points' workdirs, results.md and sweep.png.")
    flags.DEFINE_string("sweep", None, "Axes 'a.b=v1,v2;c.d=w1,w2' (cartesian product).")
    flags.DEFINE_string("sweep_set", "", "Overrides for every point, 'a.b=v;c.d=w'.")
    flags.DEFINE_bool("dry_run", False, "Print the commands and exit.")


def parse_axes(spec: str, what: str = "--sweep") -> list[tuple[str, list[str]]]:
    """``'a.b=1,2;c=x'`` → ``[("a.b", ["1", "2"]), ("c", ["x"])]``; keys must be unique."""
    axes = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        key, sep, values = part.partition("=")
        key = key.strip().removeprefix("--config.").removeprefix("config.")
        if not sep or not key or not values.strip():
            raise ValueError(f"{what} entry {part!r} is invalid: write key=value1,value2 (e.g. model.num_experts=4,8)")
        axes.append((key, [v.strip() for v in values.split(",") if v.strip()]))
    keys = [k for k, _ in axes]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{what} names a key twice ({keys}); give each key once")
    return axes


def grid(axes: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    return [dict(zip([k for k, _ in axes], values, strict=True)) for values in itertools.product(*[v for _, v in axes])]


def point_name(point: dict[str, str]) -> str:
    name = "_".join(f"{k.split('.')[-1]}-{v}" for k, v in point.items())
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "base"


def command(config: str, workdir: str, overrides: dict[str, str]) -> list[str]:
    return [sys.executable, "-m", "experiments.train", "--config", config, "--workdir", workdir,
            *[f"--config.{k}={v}" for k, v in overrides.items()]]


def summarize(records: list[dict]) -> dict[str, float | str]:
    train = [r for r in records if "loss" in r and math.isfinite(r["loss"])]
    val = [r for r in records if any(k.startswith("val_loss/") for k in r)]
    out: dict[str, float | str] = {"status": "done" if any(r.get("event") == "done" for r in records) else "unfinished"}
    if train:
        out["train_loss"] = train[-1]["loss"]
        speeds = [r["tokens_per_s"] for r in train if "tokens_per_s" in r]
        if speeds:
            out["tokens_per_s"] = sorted(speeds)[len(speeds) // 2]
    if val:
        for key, value in val[-1].items():
            if key.startswith("val_loss/"):
                out[key] = value
    params = [r["params"] for r in records if r.get("event") == "model"]
    if params:
        out["params"] = params[-1]
    return out


def write_results(workdir: str, points: dict[str, dict[str, str]]) -> str:
    """``results.md`` and ``sweep.png`` from the points' metrics; returns the table."""
    rows = {name: summarize(read_records(os.path.join(workdir, name))) for name in points}
    metric_keys = sorted({k for r in rows.values() for k in r if k != "status"})
    keys = list(next(iter(points.values())))
    header = "| point | " + " | ".join(keys + metric_keys + ["status"]) + " |"
    lines = [header, "|" + "---|" * (len(keys) + len(metric_keys) + 2)]
    for name, point in points.items():
        cells = [name, *point.values()]
        for k in metric_keys:
            v = rows[name].get(k, "")
            cells.append(f"{v:.4f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v))
        cells.append(str(rows[name]["status"]))
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(table)
    _plot(workdir, list(points))
    return table


def _plot(workdir: str, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name in names:
        records = read_records(os.path.join(workdir, name))
        curve = [(r["step"], r["loss"]) for r in records if "loss" in r and math.isfinite(r["loss"])]
        if curve:
            ax.plot(*zip(*curve, strict=True), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "sweep.png"), dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not (FLAGS.config and FLAGS.workdir and FLAGS.sweep):
        raise app.UsageError("--config, --workdir and --sweep are required (see the module docstring)")
    shared = {k: v[0] for k, v in parse_axes(FLAGS.sweep_set, "--sweep_set")}
    points = {point_name(p): {**p} for p in grid(parse_axes(FLAGS.sweep))}
    commands = {name: command(FLAGS.config, os.path.join(FLAGS.workdir, name), {**shared, **p})
                for name, p in points.items()}
    if FLAGS.dry_run:
        for cmd in commands.values():
            print(shlex.join(cmd))
        return
    os.makedirs(FLAGS.workdir, exist_ok=True)
    for i, (name, cmd) in enumerate(commands.items(), 1):
        if summarize(read_records(os.path.join(FLAGS.workdir, name)))["status"] == "done":
            print(f"[{i}/{len(commands)}] {name}: already done", flush=True)
            continue
        print(f"[{i}/{len(commands)}] {name}: {shlex.join(cmd)}", flush=True)
        result = subprocess.run(cmd, check=False)
        if result.returncode:
            print(f"[{i}/{len(commands)}] {name} FAILED (exit {result.returncode}); continuing", flush=True)
    print(write_results(FLAGS.workdir, points))


if __name__ == "__main__":
    define_flags()
    run(main)
