"""Fit the scaling law L(N, D) = E + A / N^alpha + B / D^beta to training runs, with 95 % bootstrap intervals.

    python -m tools.fit_scaling_law --points FILE.csv [--out fit.json] [--overwrite] [--bootstrap 1000] [--seed 0]

FILE.csv starts with a header naming at least the columns ``params`` (N), ``tokens`` (D) and ``loss`` (the run's
final loss, nats per token), in any order; other columns are ignored. One row per run; blank lines are skipped, and
so are rows whose ``status`` is not ``done`` when there is a ``status`` column (a sweep's ``points.csv``, written by
``qwen35_jax.train.sweep_results``, lists unfinished points with empty cells).
The fit is Besiroglu et al.'s (2404.10102) replication of Hoffmann et al.'s approach 3 (2203.15556): a Huber loss
(delta 1e-3) on log L from a 4,500-point initialisation grid, intervals from refitting bootstrap resamples of the
rows (qwen35_jax/scaling/fit.py). The table gives E, A, B, alpha, beta and the compute-optimal allocation exponents
a = beta / (alpha + beta) (N_opt ~ C^a) and b = alpha / (alpha + beta) (D_opt ~ C^b); ``--out`` writes them as JSON
(``E``, ``A``, ``B``, ``alpha``, ``beta``: ``{"value", "ci_low", "ci_high"}``; ``a``, ``b``: numbers; and more).

A bad input (a missing file or column, a value that is not a positive finite number, fewer than 5 runs, an existing
``--out`` without ``--overwrite``) ends with one ``error: ...`` line and status 2 before any fitting.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qwen35_jax.scaling.fit import Estimate, ParametricFit

COLUMNS = ("params", "tokens", "loss")
MIN_RUNS = 5  # the law's parameters
FEW_RUNS = 10  # below this, say that the intervals are too narrow


class InputError(Exception):
    """A bad command line or input file: one ``error:`` line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{message} (see {self.prog} --help)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _Parser(prog="python -m tools.fit_scaling_law", description=__doc__.splitlines()[0], allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--points", required=True, help="CSV of runs with columns params, tokens, loss")
    parser.add_argument("--out", help="write the fit as JSON here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0: no intervals)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    args = parser.parse_args(argv)
    if args.bootstrap < 0:
        raise InputError(f"--bootstrap={args.bootstrap} is invalid: give a count >= 0 (1000 is usual)")
    return args


def read_points(path: str) -> tuple[dict[str, list[float]], int]:
    """The ``params``, ``tokens`` and ``loss`` columns of the CSV at ``path``, checked (InputError naming the row and
    column otherwise), and the number of rows skipped for a ``status`` other than ``done``."""
    if not os.path.isfile(path):
        raise InputError(f"--points {path}: no such file; give the CSV of runs (header with params,tokens,loss)")
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        header = next((row for row in rows if any(cell.strip() for cell in row)), None)
        if header is None:
            raise InputError(f"{path} is empty: it needs a header row naming params, tokens and loss, then one row "
                             "per run")
        names = [cell.strip() for cell in header]
        missing = [c for c in COLUMNS if c not in names]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)} (the header has {', '.join(names)}); "
                             f"the first row must name the columns {', '.join(COLUMNS)}")
        doubled = [c for c in COLUMNS if names.count(c) > 1]
        if doubled:
            raise InputError(f"{path}: column(s) {', '.join(doubled)} appear more than once in the header; keep one")
        where = {c: names.index(c) for c in COLUMNS}
        status = names.index("status") if "status" in names else None
        values: dict[str, list[float]] = {c: [] for c in COLUMNS}
        number = skipped = 0
        for row in rows:
            if not any(cell.strip() for cell in row):
                continue
            number += 1
            place = f"{path} row {number} (line {rows.line_num})"
            if len(row) < len(names):
                raise InputError(f"{place} has {len(row)} fields, the header {len(names)}; fix the row")
            if status is not None and row[status].strip() != "done":
                skipped += 1
                continue
            for column, index in where.items():
                text = row[index].strip()
                if not text:
                    raise InputError(f"{place}, column {column} is empty; fill it in or delete the row")
                try:
                    value = float(text)
                except ValueError:
                    message = f"{place}, column {column}: {text!r} is not a number; fix or delete the row"
                    raise InputError(message) from None
                if not math.isfinite(value):
                    raise InputError(f"{place}, column {column}: {text!r} is not finite; drop runs that diverged "
                                     "or never finished")
                if value <= 0:
                    raise InputError(f"{place}, column {column}: {text} is not positive; {column} must be > 0 "
                                     "(the law takes logarithms)")
                values[column].append(value)
    runs = len(values["loss"])
    if runs < MIN_RUNS:
        finished = f" ({skipped} more not done)" if skipped else ""
        raise InputError(f"{path} has {runs} run(s){finished}; the law has 5 parameters (E, A, B, alpha, beta): "
                         f"give at least {MIN_RUNS}")
    return values, skipped


def check_out(path: str | None, overwrite: bool) -> None:
    if path is None:
        return
    if os.path.isdir(path):
        raise InputError(f"--out {path} is a directory; give a file name such as {os.path.join(path, 'fit.json')}")
    if os.path.exists(path) and not overwrite:
        raise InputError(f"--out {path} exists; pass --overwrite to replace it, or choose another file")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError(f"--out {path}: directory {parent} does not exist; create it first")


def format_table(fit: ParametricFit) -> str:
    """The parameters with their intervals as a markdown table, then the allocation exponents."""
    percent = f"{100 * fit.level:g} %"
    lines = [f"| parameter | value | {percent} interval |", "|---|---|---|"]

    def interval(estimate: Estimate) -> str:
        if math.isnan(estimate.ci_low):
            return "n/a (no bootstrap)"
        return f"[{estimate.ci_low:.4g}, {estimate.ci_high:.4g}]"

    for name in ("E", "A", "B", "alpha", "beta"):
        estimate = getattr(fit, name)
        lines.append(f"| {name} | {estimate.value:.4g} | {interval(estimate)} |")
    lines.append(f"| a = beta / (alpha + beta) (N_opt ~ C^a) | {fit.a.value:.4f} | {interval(fit.a)} |")
    lines.append(f"| b = alpha / (alpha + beta) (D_opt ~ C^b) | {fit.b.value:.4f} | {interval(fit.b)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        points, skipped = read_points(args.points)
        check_out(args.out, args.overwrite)
    except InputError as error:
        sys.stdout.flush()
        sys.stderr.write(f"error: {error}\n")
        return 2
    from qwen35_jax.scaling.fit import fit_parametric_law  # numpy only

    start = time.perf_counter()
    fit = fit_parametric_law(points["params"], points["tokens"], points["loss"], bootstrap=args.bootstrap,
                             seed=args.seed)
    unfinished = f", {skipped} rows not done skipped" if skipped else ""
    print(f"L(N, D) = E + A / N^alpha + B / D^beta fitted to {fit.points} runs of {args.points}{unfinished} "
          f"(Huber delta {fit.huber_delta:g} on log L; {fit.bootstrap} bootstrap resamples, seed {args.seed}) in "
          f"{time.perf_counter() - start:.1f} s")
    print(format_table(fit))
    if fit.bootstrap and fit.points < FEW_RUNS:
        print(f"note: with {fit.points} runs the bootstrap intervals understate the uncertainty (a resample of few "
              "distinct runs is often fitted exactly); add runs")
    if args.out:
        tmp = f"{args.out}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(fit.to_json(), f, indent=2)
            f.write("\n")
        os.replace(tmp, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
