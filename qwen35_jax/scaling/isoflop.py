"""IsoFLOP profiles (Hoffmann et al. 2203.15556, approach 2): for each compute budget C a parabola of the final loss
in log N gives the loss-optimal model size N_opt(C); power laws N_opt = k C^a and D_opt = k' C^b across budgets.

Logarithms are natural throughout. D_opt(C) is read off the budget's own runs: log D is interpolated piecewise
linearly in log N at log N_opt (extended linearly past the end runs), which is exact whatever the FLOPs per token of
the model family are (6 N, or 6 N plus attention, ...), because at a fixed C the runs' D falls monotonically with N;
``tokens_for(C, N)`` replaces that with your own FLOPs accounting.

Intervals of the power laws' exponents: ``fit_power_law`` gives the ordinary least-squares slope's Student-t 95 %
interval (slope +- t(0.975, m - 2) SE over the m budgets), which stays honest with 3 budgets (t = 12.7) where a
bootstrap over 3 budgets is degenerate. ``isoflop_analysis`` adds, with ``bootstrap > 0``, a percentile interval
from resampling the runs within each budget (with replacement), refitting every parabola and then the power law: the
uncertainty of the vertices, which the regression's residuals over few budgets hardly see. Resamples in which a
parabola cannot be fitted (fewer than 3 distinct sizes, or not opening upward) are dropped and counted; when more than
half are dropped (e.g. 3 or 4 runs per budget) the t intervals are kept and ``method`` says why.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# Two-sided 95 % Student-t quantiles t(0.975, dof) for dof = 1..30; beyond, a Cornish-Fisher expansion.
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)
_Z975 = 1.959964


@dataclasses.dataclass(frozen=True)
class Parabola:
    """loss = c2 (log N)^2 + c1 log N + c0 over one budget's runs, and its vertex."""

    coefficients: tuple[float, float, float]  # (c2, c1, c0)
    log_n_opt: float
    n_opt: float
    loss_opt: float  # the parabola's value at the vertex
    inside: bool  # whether the vertex lies within the runs' range of log N (else it is extrapolated)


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """X = coefficient * C^exponent, with the exponent's 95 % interval (``method`` says how it was obtained)."""

    exponent: float
    coefficient: float
    ci_low: float
    ci_high: float
    method: str
    points: int

    def predict(self, C: Any) -> np.ndarray:
        return self.coefficient * np.asarray(C, float) ** self.exponent


@dataclasses.dataclass(frozen=True)
class Budget:
    compute: float
    runs: int
    parabola: Parabola
    n_opt: float
    d_opt: float


@dataclasses.dataclass(frozen=True)
class IsoflopResult:
    budgets: tuple[Budget, ...]
    n_opt: PowerLaw  # N_opt(C)
    d_opt: PowerLaw  # D_opt(C)
    bootstrap: int  # resamples drawn (0: the intervals are the regression's)
    dropped: int  # resamples dropped because a parabola could not be fitted


def fit_isoflop_parabola(log_params: Sequence[float] | np.ndarray, loss: Sequence[float] | np.ndarray, *,
                         budget: float | str | None = None) -> Parabola:
    """Least-squares parabola of ``loss`` against ``log_params`` (natural log of N) for one compute budget; its
    vertex is N_opt. Raises ValueError naming ``budget`` for fewer than 3 distinct sizes or a parabola that does not
    open upward (no minimum: the budget's sizes do not bracket the optimum)."""
    x, y = np.asarray(log_params, float), np.asarray(loss, float)
    name = f"budget {budget}" if budget is not None else "this budget"
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"{name}: log_params and loss must be 1-D of one length, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError(f"{name}: log_params and loss must be finite")
    if np.unique(x).size < 3:
        raise ValueError(f"{name}: {np.unique(x).size} distinct model sizes cannot determine a parabola; give at "
                         "least 3 runs of different sizes")
    center = x.mean()  # centred for conditioning, then mapped back
    c2, c1, c0 = np.polyfit(x - center, y, 2)
    if not c2 > 0:
        raise ValueError(f"{name}: the loss-vs-log N parabola opens downward (curvature {c2:.3g}), so it has no "
                         "minimum; add runs on both sides of the best size")
    vertex = -c1 / (2 * c2)
    log_n = center + vertex
    coefficients = (c2, c1 - 2 * c2 * center, c0 - c1 * center + c2 * center**2)
    return Parabola(tuple(float(c) for c in coefficients), float(log_n), float(math.exp(log_n)),
                    float(c0 - c1**2 / (4 * c2)), bool(x.min() <= log_n <= x.max()))


def fit_power_law(C: Sequence[float] | np.ndarray, X: Sequence[float] | np.ndarray) -> PowerLaw:
    """X = k C^exponent by least squares of log X on log C, with the slope's Student-t 95 % interval (module
    docstring; NaN bounds with only 2 points)."""
    log_c, log_x = np.log(np.asarray(C, float)), np.log(np.asarray(X, float))
    if log_c.ndim != 1 or log_c.shape != log_x.shape or log_c.size < 2:
        raise ValueError(f"C and X must be 1-D of one length >= 2, got shapes {log_c.shape} and {log_x.shape}")
    if not (np.isfinite(log_c).all() and np.isfinite(log_x).all()):
        raise ValueError("C and X must be positive and finite")
    if np.unique(log_c).size < 2:
        raise ValueError("C must hold at least 2 distinct budgets to fit an exponent")
    slope, intercept = np.polyfit(log_c, log_x, 1)
    m = log_c.size
    low = high = math.nan
    if m > 2:
        residuals = log_x - (slope * log_c + intercept)
        se = math.sqrt(float(residuals @ residuals) / (m - 2) / float(((log_c - log_c.mean()) ** 2).sum()))
        half = _t975(m - 2) * se
        low, high = slope - half, slope + half
    return PowerLaw(float(slope), float(math.exp(intercept)), low, high, "t", m)


def isoflop_analysis(compute: Sequence[float] | np.ndarray, params: Sequence[float] | np.ndarray,
                     tokens: Sequence[float] | np.ndarray, loss: Sequence[float] | np.ndarray, *,
                     tokens_for: Callable[[float, float], float] | None = None, bootstrap: int = 0, seed: int = 0,
                     rtol: float = 1e-6) -> IsoflopResult:
    """Group runs (compute budget C, params N, tokens D, loss) by budget (C equal to ``rtol``), fit each budget's
    parabola, read N_opt(C) and D_opt(C) (module docstring) and fit their power laws. With ``bootstrap`` > 0 the
    exponents' 95 % intervals are percentile intervals over within-budget resamples (if at least half of them can be
    fitted), else the regression's t intervals."""
    C, N, D, L = (np.asarray(v, float) for v in (compute, params, tokens, loss))
    if not (C.ndim == 1 and C.shape == N.shape == D.shape == L.shape):
        raise ValueError(f"compute, params, tokens and loss must be 1-D of one length, got {C.shape}, {N.shape}, "
                         f"{D.shape}, {L.shape}")
    if not all(np.isfinite(v).all() and (v > 0).all() for v in (C, N, D, L)):
        raise ValueError("compute, params, tokens and loss must all be positive and finite")
    groups = _group(C, rtol)
    if len(groups) < 2:
        raise ValueError(f"{len(groups)} compute budget(s): the power laws need at least 2 (3 for an interval)")

    def solve(rows: list[np.ndarray]) -> tuple[list[Budget], PowerLaw, PowerLaw]:
        budgets = []
        for members in rows:
            c = float(C[members].mean())
            parabola = fit_isoflop_parabola(np.log(N[members]), L[members], budget=f"{c:.4g}")
            d = tokens_for(c, parabola.n_opt) if tokens_for else _tokens_at(np.log(N[members]), np.log(D[members]),
                                                                            parabola.log_n_opt, c)
            budgets.append(Budget(c, members.size, parabola, parabola.n_opt, float(d)))
        cs = [b.compute for b in budgets]
        return budgets, fit_power_law(cs, [b.n_opt for b in budgets]), fit_power_law(cs, [b.d_opt for b in budgets])

    budgets, n_law, d_law = solve(groups)
    dropped = 0
    if bootstrap:
        rng, exponents = np.random.default_rng(seed), []
        for _ in range(bootstrap):
            try:
                _, n_draw, d_draw = solve([rng.choice(members, members.size) for members in groups])
            except ValueError:
                dropped += 1
                continue
            exponents.append((n_draw.exponent, d_draw.exponent))
        if 2 * len(exponents) < bootstrap:  # too few runs per budget for this bootstrap: keep the t intervals
            method = f"t (only {len(exponents)} of {bootstrap} within-budget resamples could be fitted)"
            n_law, d_law = dataclasses.replace(n_law, method=method), dataclasses.replace(d_law, method=method)
        else:
            (n_low, d_low), (n_high, d_high) = np.percentile(np.array(exponents), [2.5, 97.5], axis=0)
            method = f"bootstrap over runs within budgets ({len(exponents)} resamples)"
            n_law = dataclasses.replace(n_law, ci_low=float(n_low), ci_high=float(n_high), method=method)
            d_law = dataclasses.replace(d_law, ci_low=float(d_low), ci_high=float(d_high), method=method)
    return IsoflopResult(tuple(budgets), n_law, d_law, bootstrap, dropped)


def _group(C: np.ndarray, rtol: float) -> list[np.ndarray]:
    """Row indices per budget: sorted values of C closer than ``rtol`` (relative) belong together."""
    order = np.argsort(C, kind="stable")
    groups, current = [], [order[0]]
    for previous, index in zip(order[:-1], order[1:], strict=True):
        if C[index] - C[previous] <= rtol * C[index]:
            current.append(index)
        else:
            groups.append(np.array(current))
            current = [index]
    groups.append(np.array(current))
    return groups


def _tokens_at(log_n: np.ndarray, log_d: np.ndarray, log_n_opt: float, budget: float) -> float:
    """D at log N_opt: piecewise-linear interpolation of log D in log N over the budget's distinct sizes, the end
    segments extended. Raises ValueError unless D falls strictly as N grows (as it must at a fixed C)."""
    sizes, inverse = np.unique(log_n, return_inverse=True)
    mean_log_d = np.bincount(inverse, weights=log_d) / np.bincount(inverse)
    if not (np.diff(mean_log_d) < 0).all():
        raise ValueError(f"budget {budget:.4g}: tokens do not fall as params grow, which a fixed compute budget "
                         "implies; check the rows' compute column or pass tokens_for")
    if log_n_opt <= sizes[0]:
        i = 0
    elif log_n_opt >= sizes[-1]:
        i = sizes.size - 2
    else:
        i = int(np.searchsorted(sizes, log_n_opt)) - 1
    fraction = (log_n_opt - sizes[i]) / (sizes[i + 1] - sizes[i])
    return float(math.exp(mean_log_d[i] + fraction * (mean_log_d[i + 1] - mean_log_d[i])))


def _t975(dof: int) -> float:
    if dof <= len(_T975):
        return _T975[dof - 1]
    z = _Z975  # Cornish-Fisher expansion of the t quantile in 1 / dof (error < 1e-5 beyond 30 degrees of freedom)
    return (z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * dof**3))
