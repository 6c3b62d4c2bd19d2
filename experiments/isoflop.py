"""The IsoFLOP study end to end: the sweep of ``configs/scaling/isoflop.py``, the fits, the plots and the
extrapolation check.

  python -m experiments.isoflop --workdir runs/scaling/isoflop [--bootstrap 1000] [--extrapolate 4]

1. Trains every (budget, rung) point of the config's sweep (``experiments.sweep``'s runner: a rerun resumes
   unfinished points and skips finished ones), then writes the sweep's ``results.md`` and ``points.csv``.
2. Fits, from the finished points (N = non-embedding parameters, D = tokens trained, L = final validation loss):
   per budget a parabola of L in log N → N_opt(C), D_opt(C) and their power laws (``qwen35_jax.scaling.isoflop``);
   the parametric law L(N, D) = E + A / N^alpha + B / D^beta with bootstrap intervals (``qwen35_jax.scaling.fit``,
   the same fit as ``python -m tools.fit_scaling_law --points points.csv``).
3. Trains the extrapolation point: ``--extrapolate`` x the largest budget, on the ladder rung nearest the fitted
   N_opt at that budget (``WORKDIR/extrapolation/<arm>``), and compares its loss with the law's prediction and
   interval — the point is trained after the fit and never enters it.

Writes ``WORKDIR/isoflop.md`` (tables), ``WORKDIR/fit.json``, ``WORKDIR/isoflop.png`` (loss against N per budget,
with its parabola) and ``WORKDIR/frontier.png`` (N_opt and D_opt against C).
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any

import numpy as np
from absl import app, flags

from experiments.sweep import build_points, run_points, sweep_arms, validate_points
from qwen35_jax.scaling.fit import ParametricFit, fit_parametric_law
from qwen35_jax.scaling.isoflop import IsoflopResult, isoflop_analysis
from qwen35_jax.scaling.ladder import RUNGS
from qwen35_jax.scaling.studies import budget_arm, budget_name, flops_model
from qwen35_jax.train.cli import run
from qwen35_jax.train.metrics import read_records
from qwen35_jax.train.sweep_results import SweepPoint, summarize, write_results

FLAGS = flags.FLAGS
CONFIG = "configs/scaling/isoflop.py"


def define_flags() -> None:
    if "extrapolate" in FLAGS:
        return
    flags.DEFINE_string("workdir", None, "Folder of the study: the points' workdirs, results, fits and plots.")
    flags.DEFINE_string("config", CONFIG, "The sweep's config file (budgets x rungs).")
    flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples of the parametric fit's intervals.")
    flags.DEFINE_float("extrapolate", 4.0, "The check point's budget, as a multiple of the largest fitted one (0: "
                       "no extrapolation point).")


def budget_of(arm: str) -> float:
    """``"C3e11_w64_l4"`` → 3e11."""
    return float(arm.split("_", 1)[0][1:])


def finished_rows(workdir: str) -> list[dict[str, Any]]:
    """The finished points of ``WORKDIR/points.csv`` with their budget, N, D and loss as floats."""
    with open(os.path.join(workdir, "points.csv"), newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "done" and r["loss"]]
    return [{"arm": r["arm"], "C": budget_of(r["arm"]), "N": float(r["params"]), "D": float(r["tokens"]),
             "L": float(r["loss"])} for r in rows]


def nearest_rung(n_target: float) -> tuple[int, int, int]:
    """(width, layers, non-embedding parameters) of the ladder rung nearest ``n_target`` in log space."""
    from qwen35_jax.param_count import non_embedding_parameters

    counts = [(w, n, non_embedding_parameters(flops_model(w, n))) for w, n in RUNGS]
    return min(counts, key=lambda r: abs(math.log(r[2] / n_target)))


def extrapolation(workdir: str, config: str, analysis: IsoflopResult, law: ParametricFit,
                  factor: float) -> dict[str, Any]:
    """Train the check point after the fit and compare its loss with the law's prediction."""
    compute = factor * max(b.compute for b in analysis.budgets)
    n_pred = float(analysis.n_opt.predict(compute))
    width, layers, _ = nearest_rung(n_pred)
    arm = f"{budget_name(compute)}_w{width}_l{layers}"
    overrides = {k: str(v) for k, v in budget_arm(compute, width, layers).items()}
    point = validate_points(config, [SweepPoint(f"extrapolation/{arm}", arm, None, overrides)])[0]
    _, failed = run_points(config, workdir, [point])
    if failed:
        raise RuntimeError(f"the extrapolation point {point.name} failed; rerun to resume it")
    summary = summarize(read_records(os.path.join(workdir, point.name)), point.tokens_per_step)
    N, D = float(summary["non_embedding_params"]), float(summary["steps"] * point.tokens_per_step)
    measured = next(v for k, v in summary.items() if k.startswith("val_loss/"))
    low, high = law.predict_interval(N, D)
    return {"arm": arm, "compute": compute, "n_opt_predicted": n_pred, "params": N, "tokens": D,
            "predicted": float(law.predict(N, D)), "ci_low": low, "ci_high": high, "measured": measured,
            "inside": low <= measured <= high}


def report(analysis: IsoflopResult, law: ParametricFit, check: dict[str, Any] | None, points: int) -> str:
    lines = ["# IsoFLOP study\n", f"{points} finished points; N = non-embedding parameters, D = tokens trained, "
             "L = final validation loss (nats / token).\n", "\n## Per budget\n",
             "| C (FLOPs) | runs | N_opt | D_opt | L at the vertex | vertex inside the runs |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {b.compute:.3g} | {b.runs} | {b.n_opt:,.0f} | {b.d_opt:,.0f} | {b.parabola.loss_opt:.4f} | "
              f"{'yes' if b.parabola.inside else 'no (extrapolated)'} |" for b in analysis.budgets]
    lines += ["\n## Compute-optimal frontier (95 % intervals)\n", "| law | exponent | interval | coefficient |",
              "|---|---|---|---|"]
    for name, fit in (("N_opt(C)", analysis.n_opt), ("D_opt(C)", analysis.d_opt)):
        lines.append(f"| {name} | {fit.exponent:.3f} | [{fit.ci_low:.3f}, {fit.ci_high:.3f}] ({fit.method}) | "
                     f"{fit.coefficient:.3g} |")
    lines += ["\n## L(N, D) = E + A / N^alpha + B / D^beta (Huber in log space, bootstrap 95 % intervals)\n",
              "| parameter | value | interval |", "|---|---|---|"]
    for name in ("E", "A", "B", "alpha", "beta", "a", "b"):
        est = getattr(law, name)
        lines.append(f"| {name} | {est.value:.4g} | [{est.ci_low:.4g}, {est.ci_high:.4g}] |")
    if check is not None:
        lines += ["\n## Extrapolation point (trained after the fit)\n",
                  f"{check['arm']}: C = {check['compute']:.3g} FLOPs, N = {check['params']:,.0f} (N_opt predicted "
                  f"{check['n_opt_predicted']:,.0f}), D = {check['tokens']:,.0f}. Predicted L = "
                  f"{check['predicted']:.4f} [{check['ci_low']:.4f}, {check['ci_high']:.4f}], measured "
                  f"{check['measured']:.4f}: {'inside' if check['inside'] else 'OUTSIDE'} the interval."]
    return "\n".join(lines) + "\n"


def plot(workdir: str, rows: list[dict[str, Any]], analysis: IsoflopResult) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for budget in analysis.budgets:
        mine = sorted((r for r in rows if math.isclose(r["C"], budget.compute, rel_tol=1e-6)), key=lambda r: r["N"])
        line, = ax.plot([r["N"] for r in mine], [r["L"] for r in mine], "o", label=f"C = {budget.compute:.0e}")
        grid = np.linspace(math.log(mine[0]["N"]), math.log(mine[-1]["N"]), 50)
        ax.plot(np.exp(grid), np.polyval(budget.parabola.coefficients, grid), color=line.get_color(), alpha=0.6)
        ax.plot([budget.n_opt], [budget.parabola.loss_opt], "*", color=line.get_color(), markersize=12)
    ax.set(xscale="log", xlabel="non-embedding parameters N", ylabel="final validation loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "isoflop.png"), dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 5))
    compute = np.array([b.compute for b in analysis.budgets])
    grid = np.geomspace(compute.min() / 2, compute.max() * 8, 50)
    for name, law, values in (("N_opt", analysis.n_opt, [b.n_opt for b in analysis.budgets]),
                              ("D_opt", analysis.d_opt, [b.d_opt for b in analysis.budgets])):
        line, = ax.plot(compute, values, "o", label=f"{name} ∝ C^{law.exponent:.2f}")
        ax.plot(grid, law.predict(grid), color=line.get_color(), alpha=0.6)
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel="compute-optimal N or D")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "frontier.png"), dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required (see the module docstring)")
    workdir = FLAGS.workdir
    arms, seeds, _ = sweep_arms(FLAGS.config, None)
    points = validate_points(FLAGS.config, build_points(arms, list(seeds), {}))
    os.makedirs(workdir, exist_ok=True)
    _, failed = run_points(FLAGS.config, workdir, points)
    write_results(workdir, points, title=f"IsoFLOP sweep: {FLAGS.config}")
    if failed:
        raise RuntimeError(f"{len(failed)} point(s) failed: {', '.join(failed)}; rerun to resume them")
    rows = finished_rows(workdir)
    columns = [np.array([r[k] for r in rows]) for k in ("C", "N", "D", "L")]
    analysis = isoflop_analysis(*columns, bootstrap=FLAGS.bootstrap)
    law = fit_parametric_law(*columns[1:], bootstrap=FLAGS.bootstrap)
    check = extrapolation(workdir, FLAGS.config, analysis, law, FLAGS.extrapolate) if FLAGS.extrapolate else None
    plot(workdir, rows, analysis)
    text = report(analysis, law, check, len(rows))
    with open(os.path.join(workdir, "isoflop.md"), "w") as f:
        f.write(text)
    with open(os.path.join(workdir, "fit.json"), "w") as f:
        json.dump({"law": law.to_json(), "extrapolation": check,
                   "n_opt": {"exponent": analysis.n_opt.exponent, "ci": [analysis.n_opt.ci_low, analysis.n_opt.ci_high],
                             "coefficient": analysis.n_opt.coefficient},
                   "d_opt": {"exponent": analysis.d_opt.exponent, "ci": [analysis.d_opt.ci_low, analysis.d_opt.ci_high],
                             "coefficient": analysis.d_opt.coefficient}}, f, indent=2)
    print(text)


if __name__ == "__main__":
    define_flags()
    run(main)
