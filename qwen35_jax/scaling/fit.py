"""The parametric scaling law L(N, D) = E + A / N^alpha + B / D^beta fitted as in Hoffmann et al. (2203.15556,
approach 3) and its replication by Besiroglu et al. (2404.10102), with percentile-bootstrap confidence intervals.

Parameterisation: E = exp(e), A = exp(a), B = exp(b), so that
    log L_hat(N, D) = logsumexp(a - alpha log N, b - beta log D, e)
and the fit minimises sum_i huber_delta(log L_hat(N_i, D_i) - log L_i) with delta = 1e-3 (huber(r) = r^2 / 2 for
|r| <= delta, delta (|r| - delta / 2) beyond). Starts: the grid of Hoffmann et al. (appendix D.2), reused by
Besiroglu et al., alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25} (4,500 points);
every start is optimised (at most ``max_iterations`` steps) and the lowest objective kept. The optimiser is a
batched Levenberg-Marquardt on the iteratively reweighted least-squares form of the Huber loss (weights
min(1, delta / |r|): the gradient is the Huber loss's own, the curvature a majoriser of it), each step accepted only
if it lowers the Huber objective itself; all starts run at once as numpy arrays.

Bootstrap: each resample draws the n points with replacement (a seeded ``numpy.random.Generator``), expressed as
multiplicities that weight the points' Huber terms, and is refitted from warm starts: the full fit's optimum and the
next best distinct local optima of the full fit (``bootstrap_starts`` in all; a resample's objective is a
perturbation of the full one, so its optimum lies near one of those). Intervals are the 2.5 / 97.5 percentiles of
the refitted values (of alpha, beta, E, A, B, the allocation exponents, or a prediction).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

PARAMETERS = ("E", "A", "B", "alpha", "beta")
# Initialisation grid of Hoffmann et al. (appendix D.2), as reused by Besiroglu et al.
GRID = {"e": (-1.0, -0.5, 0.0, 0.5, 1.0), "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
        "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0), "alpha": (0.0, 0.5, 1.0, 1.5, 2.0), "beta": (0.0, 0.5, 1.0, 1.5, 2.0)}
MAX_ITERATIONS = 500
_FTOL = 1e-12  # relative decrease of the objective below which an accepted step counts as converged
_XTOL = 1e-9  # ... together with a step this small in every (log-)parameter
_MAX_DAMPING = 1e12  # no step lowers the objective even this damped: a (local) minimum


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap percentile interval (NaN bounds without a bootstrap)."""

    value: float
    ci_low: float
    ci_high: float

    def to_json(self) -> dict[str, float | None]:
        return {"value": _json_float(self.value), "ci_low": _json_float(self.ci_low),
                "ci_high": _json_float(self.ci_high)}


@dataclasses.dataclass(frozen=True)
class ParametricFit:
    """L(N, D) = E + A / N^alpha + B / D^beta fitted to ``points`` runs. ``a`` = beta / (alpha + beta) is the
    exponent of N_opt(C) ~ C^a, ``b`` = alpha / (alpha + beta) that of D_opt(C) ~ C^b (for C proportional to N D).
    ``bootstrap_params`` holds the (bootstrap, 5) refitted (E, A, B, alpha, beta), one row per resample. With few
    points (under ~10) the intervals understate the uncertainty: a resample of few distinct points is often fitted
    exactly by the full fit's parameters (with 5 points every interval collapses to the point estimate)."""

    E: Estimate
    A: Estimate
    B: Estimate
    alpha: Estimate
    beta: Estimate
    a: Estimate
    b: Estimate
    points: int
    bootstrap: int
    huber_delta: float
    level: float
    objective: float  # the full fit's summed Huber loss
    bootstrap_params: np.ndarray = dataclasses.field(repr=False, compare=False)

    def params(self) -> np.ndarray:
        """(E, A, B, alpha, beta) of the full fit."""
        return np.array([getattr(self, name).value for name in PARAMETERS])

    def predict(self, N: Any, D: Any) -> np.ndarray:
        """L(N, D) of the full fit (broadcast over array arguments)."""
        return _law(self.params(), np.asarray(N, float), np.asarray(D, float))

    def predict_interval(self, N: float, D: float, level: float | None = None) -> tuple[float, float]:
        """The central ``level`` (default: the fit's) percentile interval of L(N, D) over the bootstrap fits."""
        if not self.bootstrap:
            raise ValueError("this fit has no bootstrap resamples: fit again with bootstrap > 0 for an interval")
        predictions = _law(self.bootstrap_params.T[..., None], np.asarray([N], float), np.asarray([D], float))[:, 0]
        low, high = _percentiles(predictions, self.level if level is None else level)
        return float(low), float(high)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name).to_json() for name in PARAMETERS}
        out.update(a=_json_float(self.a.value), b=_json_float(self.b.value),
                   a_ci=[_json_float(self.a.ci_low), _json_float(self.a.ci_high)],
                   b_ci=[_json_float(self.b.ci_low), _json_float(self.b.ci_high)], points=self.points,
                   bootstrap=self.bootstrap, huber_delta=self.huber_delta, level=self.level,
                   objective=self.objective)
        return out


def fit_parametric_law(params: Sequence[float] | np.ndarray, tokens: Sequence[float] | np.ndarray,
                       loss: Sequence[float] | np.ndarray, *, bootstrap: int = 1000, seed: int = 0,
                       huber_delta: float = 1e-3, level: float = 0.95, bootstrap_starts: int = 4,
                       max_iterations: int = MAX_ITERATIONS) -> ParametricFit:
    """Fit L(N, D) = E + A / N^alpha + B / D^beta to runs of ``params`` N, ``tokens`` D and final ``loss`` (module
    docstring: the Huber objective on log L, the initialisation grid, the bootstrap). ``bootstrap`` resamples (0: no
    intervals), drawn from ``numpy.random.default_rng(seed)``; ``level`` is the intervals' coverage."""
    x, y, target = _check_points(params, tokens, loss)
    if huber_delta <= 0 or not math.isfinite(huber_delta):
        raise ValueError(f"huber_delta={huber_delta} must be a positive finite number (the papers use 1e-3)")
    if bootstrap < 0 or bootstrap_starts < 1 or not 0 < level < 1:
        raise ValueError(f"bootstrap={bootstrap} must be >= 0, bootstrap_starts={bootstrap_starts} >= 1 and "
                         f"level={level} in (0, 1)")
    n = x.size
    starts = np.array(list(itertools.product(*GRID.values())), float)
    theta, objective = _minimise(starts, np.ones(n), x, y, target, huber_delta, max_iterations)
    best = _distinct_optima(theta, objective, bootstrap_starts)
    if not best:
        raise ValueError("no initialisation gave a finite objective: check that the losses are plausible (nats)")
    full = theta[best[0]]

    samples = np.empty((0, 5))
    if bootstrap:
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, n, size=(bootstrap, n))
        counts = np.bincount((draws + n * np.arange(bootstrap)[:, None]).ravel(), minlength=bootstrap * n)
        counts = counts.reshape(bootstrap, n).astype(float)
        warm = np.tile(theta[best], (bootstrap, 1))  # resample-major: rows r*k .. r*k + k - 1 belong to resample r
        refit, refit_objective = _minimise(warm, np.repeat(counts, len(best), axis=0), x, y, target, huber_delta,
                                           max_iterations)
        choice = refit_objective.reshape(bootstrap, len(best)).argmin(axis=1)
        samples = refit.reshape(bootstrap, len(best), 5)[np.arange(bootstrap), choice]
    natural, natural_samples = _natural(full), _natural(samples)

    def estimate(value: float, draws: np.ndarray) -> Estimate:
        low, high = _percentiles(draws, level) if draws.size else (math.nan, math.nan)
        return Estimate(float(value), float(low), float(high))

    alpha, beta = natural[3], natural[4]
    sample_sum = natural_samples[:, 3] + natural_samples[:, 4]
    with np.errstate(divide="ignore", invalid="ignore"):  # alpha + beta = 0 only for a degenerate fit
        a_value, b_value = beta / (alpha + beta), alpha / (alpha + beta)
        a_draws, b_draws = natural_samples[:, 4] / sample_sum, natural_samples[:, 3] / sample_sum
    return ParametricFit(
        *(estimate(natural[i], natural_samples[:, i]) for i in range(5)),
        a=estimate(a_value, a_draws), b=estimate(b_value, b_draws),
        points=n, bootstrap=bootstrap, huber_delta=huber_delta, level=level, objective=float(objective[best[0]]),
        bootstrap_params=natural_samples)


# ---------------------------------------------------------------------------------------------------- internals


def _check_points(params: Any, tokens: Any, loss: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log N, log D, log L) as float64 vectors, after checking shapes and values."""
    arrays = {name: np.asarray(value, float) for name, value in (("params", params), ("tokens", tokens),
                                                                  ("loss", loss))}
    sizes = {name: v.size for name, v in arrays.items()}
    if any(v.ndim != 1 for v in arrays.values()) or len(set(sizes.values())) != 1:
        raise ValueError(f"params, tokens and loss must be 1-D of one length, got sizes {sizes}")
    for name, v in arrays.items():
        bad = np.flatnonzero(~(np.isfinite(v) & (v > 0)))
        if bad.size:
            raise ValueError(f"{name}[{bad[0]}] = {v[bad[0]]} is not a positive finite number")
    if sizes["loss"] < 5:
        raise ValueError(f"{sizes['loss']} points cannot determine the law's 5 parameters: give at least 5 runs")
    return np.log(arrays["params"]), np.log(arrays["tokens"]), np.log(arrays["loss"])


def _law(natural: np.ndarray, N: np.ndarray, D: np.ndarray) -> np.ndarray:
    E, A, B, alpha, beta = natural
    return E + A / N**alpha + B / D**beta


def _natural(theta: np.ndarray) -> np.ndarray:
    """(e, a, b, alpha, beta) -> (E, A, B, alpha, beta), along the last axis."""
    out = np.array(theta, float)
    out[..., :3] = np.exp(out[..., :3])
    return out


def _percentiles(values: np.ndarray, level: float) -> np.ndarray:
    tail = 50 * (1 - level)
    return np.percentile(values, [tail, 100 - tail], axis=0)


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None  # JSON has no NaN


def _log_predict(theta: np.ndarray, x: np.ndarray, y: np.ndarray, *, weights: bool = True) -> tuple[np.ndarray, ...]:
    """log L_hat = logsumexp(e, a - alpha log N, b - beta log D) (P, n) and, with ``weights``, the softmax weights of
    the three terms (P, n each), which are d log L_hat / d(e, a, b)."""
    term_e = theta[:, 0:1]
    term_a = theta[:, 1:2] - theta[:, 3:4] * x
    term_b = theta[:, 2:3] - theta[:, 4:5] * y
    top = np.maximum(np.maximum(term_a, term_b), term_e)
    exp_e, exp_a, exp_b = np.exp(term_e - top), np.exp(term_a - top), np.exp(term_b - top)
    total = exp_e + exp_a + exp_b
    if not weights:
        return (top + np.log(total),)
    return top + np.log(total), exp_e / total, exp_a / total, exp_b / total


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    size = np.abs(r)
    return np.where(size <= delta, 0.5 * r * r, delta * (size - 0.5 * delta))


def _objective(theta: np.ndarray, counts: np.ndarray, x: np.ndarray, y: np.ndarray, target: np.ndarray,
               delta: float) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        value = (counts * _huber(_log_predict(theta, x, y, weights=False)[0] - target, delta)).sum(axis=-1)
    return np.where(np.isfinite(value), value, np.inf)


def _solve(system: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(system, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:  # a singular system somewhere in the batch: least squares, one at a time
        return np.stack([np.linalg.lstsq(m, v, rcond=None)[0] for m, v in zip(system, rhs, strict=True)])


def _minimise(theta: np.ndarray, counts: np.ndarray, x: np.ndarray, y: np.ndarray, target: np.ndarray,
              delta: float, max_iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Levenberg-Marquardt on the reweighted least-squares form of the Huber objective, for all P starts at once
    (``theta`` (P, 5); ``counts`` (n,) or (P, n) multiplicities of the points). (optima, objectives)."""
    theta = np.array(theta, float)
    counts = np.broadcast_to(np.asarray(counts, float), (len(theta), x.size))
    objective = _objective(theta, counts, x, y, target, delta)
    damping = np.full(len(theta), 1e-3)
    active = np.flatnonzero(np.isfinite(objective))
    eye = np.eye(5)
    for _ in range(max_iterations):
        if not active.size:
            break
        current, weights_n = theta[active], counts[active]
        with np.errstate(over="ignore", invalid="ignore"):
            log_pred, soft_e, soft_a, soft_b = _log_predict(current, x, y)
        r = log_pred - target
        jac = np.stack([soft_e, soft_a, soft_b, -x * soft_a, -y * soft_b], axis=1)  # (P, 5, n)
        w = weights_n * np.minimum(1.0, delta / np.maximum(np.abs(r), 1e-300))
        weighted = jac * w[:, None, :]
        grad = (weighted @ r[..., None])[..., 0]
        curvature = weighted @ jac.transpose(0, 2, 1)
        diag = np.einsum("pkk->pk", curvature)
        scale = diag + 1e-9 * diag.max(axis=-1, keepdims=True) + 1e-12  # Marquardt's scaling, kept positive
        step = _solve(curvature + (damping[active, None] * scale)[..., None] * eye, -grad)
        trial = current + step
        trial_objective = _objective(trial, weights_n, x, y, target, delta)
        before = objective[active]
        better = trial_objective < before
        theta[active[better]] = trial[better]
        objective[active[better]] = trial_objective[better]
        damping[active] = np.where(better, np.maximum(damping[active] / 3, 1e-9), damping[active] * 4)
        small = (before - trial_objective <= _FTOL * before) & (np.abs(step).max(axis=-1) <= _XTOL * (
            1 + np.abs(current).max(axis=-1)))
        done = (better & small) | (damping[active] > _MAX_DAMPING) | (before == 0)
        active = active[~done]
    return theta, objective


def _distinct_optima(theta: np.ndarray, objective: np.ndarray, count: int) -> list[int]:
    """Indices of the ``count`` lowest-objective optima that differ from each other (max |difference| > 1e-3 in
    (e, a, b, alpha, beta)); the first is the best."""
    chosen: list[int] = []
    for index in np.argsort(objective, kind="stable"):
        if not np.isfinite(objective[index]) or len(chosen) == count:
            break
        if all(np.abs(theta[index] - theta[j]).max() > 1e-3 for j in chosen):
            chosen.append(int(index))
    return chosen
