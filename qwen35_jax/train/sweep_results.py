"""A sweep's results from its points' metrics: per-point summaries, mean ± std per arm over seeds, ``results.md``
and the plots (``experiments.sweep`` writes them at the end of a sweep).

Each point is one training run in ``WORKDIR/<point>``; its ``metrics.jsonl`` (``qwen35_jax.train.metrics``) holds
the training losses, the validation losses per corpus (``val_loss/<corpus>``) and, from the text source's final
evaluation, bits per byte (``bpb/<corpus>``) and MQAR accuracy per setting (``mqar/<length>x<pairs>``, with
``mqar_chance``). An arm's row averages its finished seeds; an arm none of whose seeds finished shows only its count.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
from collections.abc import Sequence
from typing import Any

from qwen35_jax.train.metrics import read_records

RESULTS_FILE, LOSS_PLOT, RECALL_PLOT = "results.md", "loss.png", "recall.png"
# Summary keys in table order: held-out quality first, then cost.
_KEY_ORDER = ("val_loss/", "bpb/", "mqar/", "train_loss", "step_ms", "tokens_per_s", "params")


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One training run of a sweep: ``name`` is its workdir under the sweep's, ``arm`` the setting it belongs to."""

    name: str
    arm: str
    seed: int | None
    overrides: dict[str, str]
    tokens_per_step: int = 0


def summarize(records: list[dict[str, Any]], tokens_per_step: int = 0) -> dict[str, Any]:
    """``status`` ("done" / "unfinished") and the final metrics of one run's records."""
    train = [r for r in records if "loss" in r and "step" in r and math.isfinite(r["loss"])]
    out: dict[str, Any] = {"status": "done" if any(r.get("event") == "done" for r in records) else "unfinished"}
    if train:
        out["train_loss"] = train[-1]["loss"]
        speeds = sorted(r["tokens_per_s"] for r in train if r.get("tokens_per_s"))
        if speeds:
            out["tokens_per_s"] = speeds[len(speeds) // 2]
            if tokens_per_step:
                out["step_ms"] = 1000.0 * tokens_per_step / out["tokens_per_s"]
    for record in records:  # later records win: the final validation and evaluation
        for key, value in record.items():
            if key.startswith(("val_loss/", "bpb/", "mqar/")) or key == "mqar_chance":
                out[key] = value
    params = [r["params"] for r in records if r.get("event") == "model"]
    if params:
        out["params"] = params[-1]
    return out


def _ordered(keys: set[str]) -> list[str]:
    def rank(key: str) -> tuple[int, tuple[int, ...], str]:
        group = next(i for i, p in enumerate((*_KEY_ORDER, "")) if key.startswith(p))
        return group, _mqar_setting(key) if key.startswith("mqar/") else (), key
    return sorted(keys, key=rank)


def _mqar_setting(key: str) -> tuple[int, ...]:
    """``"mqar/64x4"`` -> ``(64, 4)``: settings sort by length, then pairs."""
    return tuple(int(x) for x in key.split("/", 1)[1].split("x"))


def _format(key: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.1f}" if key in ("step_ms", "tokens_per_s") else f"{value:.4f}"
    return str(value)


def _mean_std(key: str, values: list[float]) -> str:
    if not values:
        return ""
    if key == "params":
        return _format(key, values[0]) if len(set(values)) == 1 else f"{min(values):,}-{max(values):,}"
    digits = 1 if key in ("step_ms", "tokens_per_s") else 3 if key.startswith("mqar/") else 4
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def arm_table(points: Sequence[SweepPoint], rows: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per arm, mean ± sample standard deviation over its finished seeds."""
    arms = list(dict.fromkeys(p.arm for p in points))
    keys = _ordered({k for r in rows.values() if r["status"] == "done" for k in r
                     if k not in ("status", "mqar_chance", "tokens_per_s")})  # step_ms says the same
    lines = ["| arm | seeds done | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
    for arm in arms:
        members = [p for p in points if p.arm == arm]
        done = [rows[p.name] for p in members if rows[p.name]["status"] == "done"]
        cells = [arm, f"{len(done)} / {len(members)}"]
        cells += [_mean_std(k, [r[k] for r in done if isinstance(r.get(k), (int, float))]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def point_table(points: Sequence[SweepPoint], rows: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per point with its overrides and final metrics."""
    override_keys = list(dict.fromkeys(k for p in points for k in p.overrides))
    keys = _ordered({k for r in rows.values() for k in r if k not in ("status", "mqar_chance")})
    lines = ["| point | " + " | ".join(override_keys + keys + ["status"]) + " |",
             "|" + "---|" * (len(override_keys) + len(keys) + 2)]
    for p in points:
        cells = [p.name, *(p.overrides.get(k, "") for k in override_keys)]
        cells += [_format(k, rows[p.name].get(k, "")) for k in keys]
        lines.append("| " + " | ".join([*cells, str(rows[p.name]["status"])]) + " |")
    return "\n".join(lines) + "\n"


def write_results(workdir: str, points: Sequence[SweepPoint], *, title: str = "Sweep",
                  notes: Sequence[str] = (), axis_label: str = "") -> str:
    """``results.md``, ``loss.png`` and (with MQAR results) ``recall.png`` in ``workdir``; returns the markdown."""
    records = {p.name: read_records(os.path.join(workdir, p.name)) for p in points}
    rows = {p.name: summarize(records[p.name], p.tokens_per_step) for p in points}
    chance = next((r["mqar_chance"] for r in rows.values() if "mqar_chance" in r), None)
    parts = [f"# {title}\n", *[f"{n}\n" for n in notes]]
    parts += ["\n## Arms (mean ± standard deviation over seeds)\n\n", arm_table(points, rows)]
    if chance is not None:
        parts.append(f"\nMQAR columns: accuracy on the answers (chance {chance:.4f}).\n")
    parts += ["\n## Points\n\n", point_table(points, rows)]
    plots = [name for name, made in ((LOSS_PLOT, plot_losses(workdir, points, records)),
                                     (RECALL_PLOT, plot_recall(workdir, points, rows, chance, axis_label))) if made]
    if plots:
        parts.append("\n" + " ".join(f"![{name}]({name})" for name in plots) + "\n")
    text = "".join(parts)
    with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
        f.write(text)
    return text


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, ax: Any, path: str) -> bool:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_losses(workdir: str, points: Sequence[SweepPoint], records: dict[str, list[dict[str, Any]]]) -> bool:
    """Training loss per arm: the mean over seeds at the steps every seed logged, with a min-max band. Writes
    nothing and returns False when no point logged a loss."""
    curves: dict[str, list[dict[int, float]]] = {}
    for p in points:
        curve = {r["step"]: r["loss"] for r in records[p.name] if "loss" in r and "step" in r
                 and math.isfinite(r["loss"])}
        if curve:
            curves.setdefault(p.arm, []).append(curve)
    if not curves:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for arm, seeds in curves.items():
        steps = sorted(set.intersection(*(set(c) for c in seeds)))
        values = [[c[s] for c in seeds] for s in steps]
        line, = ax.plot(steps, [statistics.fmean(v) for v in values], label=f"{arm} (n={len(seeds)})")
        if len(seeds) > 1:
            ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], color=line.get_color(),
                            alpha=0.2, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats / token; band: min-max over seeds)")
    return _save(plt, fig, ax, os.path.join(workdir, LOSS_PLOT))


def plot_recall(workdir: str, points: Sequence[SweepPoint], rows: dict[str, dict[str, Any]],
                chance: float | None, axis_label: str = "") -> bool:
    """MQAR accuracy per arm (mean, error bar = standard deviation over seeds), one line per (length x pairs)
    setting, chance dashed. Writes nothing and returns False without MQAR results."""
    settings = sorted({k for r in rows.values() if r["status"] == "done" for k in r if k.startswith("mqar/")},
                      key=_mqar_setting)
    if not settings:
        return False
    arms = list(dict.fromkeys(p.arm for p in points))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for key in settings:
        xs, means, stds = [], [], []
        for i, arm in enumerate(arms):
            values = [rows[p.name][key] for p in points if p.arm == arm and rows[p.name]["status"] == "done"
                      and key in rows[p.name]]
            if values:
                xs.append(i)
                means.append(statistics.fmean(values))
                stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=key.split("/")[1] + " (length x pairs)")
    if chance is not None:
        ax.axhline(chance, color="gray", linestyle="--", linewidth=1, label=f"chance {chance:.3f}")
    ax.set_xticks(range(len(arms)), arms, rotation=20)
    ax.set_xlabel(axis_label or "arm")
    ax.set_ylabel("MQAR accuracy")
    ax.set_ylim(bottom=0)
    return _save(plt, fig, ax, os.path.join(workdir, RECALL_PLOT))
