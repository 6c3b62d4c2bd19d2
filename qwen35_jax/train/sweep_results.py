"""A sweep's results from its points' metrics: per-point summaries, mean ± std per arm over seeds, ``results.md``
and the plots (``experiments.sweep`` writes them at the end of a sweep).

Each point is one training run in ``WORKDIR/<point>``; its ``metrics.jsonl`` (``qwen35_jax.train.metrics``) holds
the training losses, the validation losses per corpus (``val_loss/<corpus>``) and, from the text source's final
evaluation, bits per byte (``bpb/<corpus>``) and MQAR accuracy per setting (``mqar/<length>x<pairs>``, with
``mqar_chance``). An arm's row averages its finished seeds; an arm none of whose seeds finished shows only its count.
Each point's ``provenance.json`` (``qwen35_jax.train.provenance``) gives the software and devices it ran on:
``results.md`` names them per point and lists each distinct software set, and ``points.csv`` has one row per point
(parameters, tokens trained, final losses and provenance) for ``tools.fit_scaling_law``.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import statistics
from collections.abc import Sequence
from typing import Any

from qwen35_jax.train.metrics import read_records
from qwen35_jax.train.provenance import PACKAGES, load_provenance

RESULTS_FILE, POINTS_FILE, LOSS_PLOT, RECALL_PLOT = "results.md", "points.csv", "loss.png", "recall.png"
# Summary keys in table order: held-out quality first, then cost.
_KEY_ORDER = ("val_loss/", "bpb/", "mqar/", "train_loss", "step_ms", "tokens_per_s", "non_embedding_params", "params")
_NOT_METRICS = ("status", "mqar_chance", "steps", "provenance")  # summary keys that are no metric column
# What makes a software set: the versions, the commit and the devices of a start's provenance.
SOFTWARE_FIELDS = (*PACKAGES.values(), "python", "commit", "dirty", "device_kind", "device_count")
CSV_PROVENANCE = (*SOFTWARE_FIELDS, "command")


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One training run of a sweep: ``name`` is its workdir under the sweep's, ``arm`` the setting it belongs to."""

    name: str
    arm: str
    seed: int | None
    overrides: dict[str, str]
    tokens_per_step: int = 0


def summarize(records: list[dict[str, Any]], tokens_per_step: int = 0,
              provenance: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """``status`` ("done" / "unfinished"), the final metrics of one run's records (in the order of their first
    appearance), ``steps`` (the done event's step), ``params`` / ``non_embedding_params`` (the model event's) and
    ``provenance``: the run's latest start (``load_provenance``), when given."""
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
    models = [r for r in records if r.get("event") == "model"]
    for key in ("params", "non_embedding_params"):
        if models and key in models[-1]:
            out[key] = models[-1][key]
    done = [r["step"] for r in records if r.get("event") == "done" and "step" in r]
    if done:
        out["steps"] = done[-1]
    if provenance:
        out["provenance"] = provenance[-1]
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
    if key.endswith("params"):
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
                     if k not in (*_NOT_METRICS, "tokens_per_s")})  # step_ms says the same
    lines = ["| arm | seeds done | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
    for arm in arms:
        members = [p for p in points if p.arm == arm]
        done = [rows[p.name] for p in members if rows[p.name]["status"] == "done"]
        cells = [arm, f"{len(done)} / {len(members)}"]
        cells += [_mean_std(k, [r[k] for r in done if isinstance(r.get(k), (int, float))]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def short_commit(provenance: dict[str, Any]) -> str:
    """``"0123456789+dirty"``: a commit's first 10 characters, marked when tracked files were modified."""
    commit = str(provenance.get("commit", ""))
    short = commit if commit.startswith("unknown") else commit[:10]
    return short + ("+dirty" if provenance.get("dirty") else "")


def device_text(provenance: dict[str, Any]) -> str:
    """``"cpu x1"``: the device kind and count."""
    return f"{provenance['device_kind']} x{provenance['device_count']}" if "device_kind" in provenance else ""


def point_table(points: Sequence[SweepPoint], rows: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per point with its overrides, final metrics and the commit, jax and devices it ran on."""
    override_keys = list(dict.fromkeys(k for p in points for k in p.overrides))
    keys = _ordered({k for r in rows.values() for k in r if k not in _NOT_METRICS})
    columns = [*override_keys, *keys, "status", "commit", "jax", "device"]
    lines = ["| point | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for p in points:
        row, provenance = rows[p.name], rows[p.name].get("provenance", {})
        cells = [p.name, *(p.overrides.get(k, "") for k in override_keys)]
        cells += [_format(k, row.get(k, "")) for k in keys]
        cells += [str(row["status"]), short_commit(provenance), str(provenance.get("jax", "")),
                  device_text(provenance)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def provenance_table(points: Sequence[SweepPoint], rows: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per distinct software set (versions, commit, dirty, devices) of the points' latest starts,
    naming the points that ran on it; then the points without a ``provenance.json``."""
    sets: dict[tuple[str, ...], list[str]] = {}
    missing = []
    for p in points:
        provenance = rows[p.name].get("provenance")
        if provenance is None:
            missing.append(p.name)
        else:
            sets.setdefault(tuple(_csv_value(provenance.get(k)) for k in SOFTWARE_FIELDS), []).append(p.name)
    lines = ["| " + " | ".join([*SOFTWARE_FIELDS, "points"]) + " |", "|" + "---|" * (len(SOFTWARE_FIELDS) + 1)]
    lines += ["| " + " | ".join([*values, ", ".join(names)]) + " |" for values, names in sets.items()]
    text = "\n".join(lines) + "\n" if sets else ""
    if missing:
        text += f"\nNo provenance.json (run before it was recorded, or never started): {', '.join(missing)}.\n"
    return text


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def write_points_csv(workdir: str, points: Sequence[SweepPoint], rows: dict[str, dict[str, Any]]) -> str:
    """``WORKDIR/points.csv``, one row per point: ``point, arm, seed``, the override keys, ``status``, ``params``
    (non-embedding parameters), ``params_total``, ``tokens`` (tokens trained: the done event's step x tokens per
    step), ``loss`` (the final validation loss of the first validation corpus, i.e. of the first ``val_loss/<name>``
    key in the run's records; empty unless the point is done), every ``val_loss/*`` and ``bpb/*`` and the latest
    start's provenance (``CSV_PROVENANCE``). Empty cells are unknown. Returns the path."""
    fixed = ["point", "arm", "seed"]
    override_keys = [k for k in dict.fromkeys(k for p in points for k in p.overrides) if k not in fixed]
    losses = _ordered({k for r in rows.values() for k in r if k.startswith(("val_loss/", "bpb/"))})
    columns = [*fixed, *override_keys, "status", "params", "params_total", "tokens", "loss", *losses,
               *CSV_PROVENANCE]
    path = os.path.join(workdir, POINTS_FILE)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for p in points:
            row, provenance = rows[p.name], rows[p.name].get("provenance", {})
            done = row["status"] == "done"
            first_val = next((k for k in row if k.startswith("val_loss/")), None)
            values = [p.name, p.arm, p.seed, *(p.overrides.get(k) for k in override_keys), row["status"],
                      row.get("non_embedding_params"), row.get("params"),
                      row["steps"] * p.tokens_per_step if done and "steps" in row and p.tokens_per_step else None,
                      row[first_val] if done and first_val else None, *(row.get(k) for k in losses),
                      *(provenance.get(k) for k in CSV_PROVENANCE)]
            writer.writerow([_csv_value(v) for v in values])
    return path


def write_results(workdir: str, points: Sequence[SweepPoint], *, title: str = "Sweep",
                  notes: Sequence[str] = (), axis_label: str = "") -> str:
    """``results.md``, ``points.csv``, ``loss.png`` and (with MQAR results) ``recall.png`` in ``workdir``; returns
    the markdown."""
    records = {p.name: read_records(os.path.join(workdir, p.name)) for p in points}
    rows = {p.name: summarize(records[p.name], p.tokens_per_step, load_provenance(os.path.join(workdir, p.name)))
            for p in points}
    chance = next((r["mqar_chance"] for r in rows.values() if "mqar_chance" in r), None)
    parts = [f"# {title}\n", *[f"{n}\n" for n in notes]]
    parts += ["\n## Arms (mean ± standard deviation over seeds)\n\n", arm_table(points, rows)]
    if chance is not None:
        parts.append(f"\nMQAR columns: accuracy on the answers (chance {chance:.4f}).\n")
    parts += ["\n## Points\n\n", point_table(points, rows)]
    parts += ["\n## Provenance\n\nThe software and devices of each point's latest start (its `provenance.json`); "
              f"one row per distinct set. Per point: `{POINTS_FILE}`.\n\n", provenance_table(points, rows)]
    plots = [name for name, made in ((LOSS_PLOT, plot_losses(workdir, points, records)),
                                     (RECALL_PLOT, plot_recall(workdir, points, rows, chance, axis_label))) if made]
    if plots:
        parts.append("\n" + " ".join(f"![{name}]({name})" for name in plots) + "\n")
    text = "".join(parts)
    with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
        f.write(text)
    write_points_csv(workdir, points, rows)
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
