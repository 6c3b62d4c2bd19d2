"""Scaling-law fits: the parametric law's estimates and bootstrap intervals on synthetic runs of a known law (with and
without outliers), the command-line tool's output and input errors, and the IsoFLOP parabola / power-law fits."""

import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from qwen35_jax.scaling.fit import PARAMETERS, fit_parametric_law
from qwen35_jax.scaling.isoflop import fit_isoflop_parabola, fit_power_law, isoflop_analysis
from tools import fit_scaling_law

ROOT = pathlib.Path(__file__).resolve().parents[2]
TRUE = {"E": 1.7, "A": 400.0, "B": 1200.0, "alpha": 0.34, "beta": 0.28}
OUTLIERS = [7, 23, 39]  # the largest model of three of the five token counts: leverage on alpha and E


def law(N, D):
    return TRUE["E"] + TRUE["A"] / np.asarray(N) ** TRUE["alpha"] + TRUE["B"] / np.asarray(D) ** TRUE["beta"]


def synthetic_runs(seed=1, sigma=0.005):
    """40 runs: 8 sizes in 1e6..1e9 x 5 token counts in 1e8..1e11, loss with multiplicative log-normal noise. (A
    fixed draw; over 30 draws all five true values were inside the 95 % intervals in 29.)"""
    N, D = np.meshgrid(np.geomspace(1e6, 1e9, 8), np.geomspace(1e8, 1e11, 5))
    N, D = N.ravel(), D.ravel()
    return N, D, law(N, D) * np.exp(np.random.default_rng(seed).normal(0, sigma, N.size))


def worst_error(fit, names=("E", "alpha", "beta")):
    return max(abs(getattr(fit, name).value / TRUE[name] - 1) for name in names)


@pytest.fixture(scope="module")
def fit():
    return fit_parametric_law(*synthetic_runs(), bootstrap=200, seed=0)


def test_recovers_known_law(fit):
    assert abs(fit.alpha.value - TRUE["alpha"]) < 0.015 and abs(fit.beta.value - TRUE["beta"]) < 0.015
    assert abs(fit.E.value - TRUE["E"]) < 0.05
    assert abs(math.log(fit.A.value / TRUE["A"])) < 0.2 and abs(math.log(fit.B.value / TRUE["B"])) < 0.2
    for name, true in TRUE.items():
        estimate = getattr(fit, name)
        assert estimate.ci_low < estimate.value < estimate.ci_high, (name, estimate)
        assert estimate.ci_low <= true <= estimate.ci_high, (name, estimate, true)
    assert fit.a.value == pytest.approx(fit.beta.value / (fit.alpha.value + fit.beta.value))
    assert fit.a.value + fit.b.value == pytest.approx(1.0)
    a_true = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    assert fit.a.ci_low <= a_true <= fit.a.ci_high and abs(fit.a.value - a_true) < 0.02
    assert fit.points == 40 and fit.bootstrap_params.shape == (200, 5)


def test_predictions(fit):
    N, D = 3e7, 2e9
    assert float(fit.predict(N, D)) == pytest.approx(float(law(N, D)), rel=0.005)
    low, high = fit.predict_interval(N, D)
    assert low < float(fit.predict(N, D)) < high and low <= float(law(N, D)) <= high
    assert fit.predict([1e6, 1e9], [1e8, 1e11]).shape == (2,)
    without = dataclasses.replace(fit, bootstrap=0, bootstrap_params=np.empty((0, 5)))
    with pytest.raises(ValueError, match="bootstrap > 0"):
        without.predict_interval(N, D)


def test_to_json(fit):
    out = json.loads(json.dumps(fit.to_json()))
    assert {*PARAMETERS, "a", "b"} <= set(out)
    for name in PARAMETERS:
        assert set(out[name]) == {"value", "ci_low", "ci_high"}
        assert out[name]["value"] == getattr(fit, name).value
    assert isinstance(out["a"], float) and isinstance(out["b"], float)
    assert out["bootstrap"] == 200 and out["points"] == 40 and out["huber_delta"] == 1e-3


def test_huber_resists_outliers_that_least_squares_does_not():
    N, D, L = synthetic_runs()
    L[OUTLIERS] *= 1.3
    huber = fit_parametric_law(N, D, L, bootstrap=0)
    squares = fit_parametric_law(N, D, L, bootstrap=0, huber_delta=1e6)  # |log residual| << delta: plain L2
    assert abs(huber.alpha.value - TRUE["alpha"]) < 0.015 and abs(huber.beta.value - TRUE["beta"]) < 0.015
    assert abs(huber.E.value - TRUE["E"]) < 0.1
    assert worst_error(huber) < 0.06
    assert worst_error(squares) > 0.15 and worst_error(squares) > 4 * worst_error(huber)


@pytest.mark.parametrize("change, message", [
    (lambda N, D, L: (N, D, L[:4]), "1-D of one length"),
    (lambda N, D, L: (N[:4], D[:4], L[:4]), "at least 5"),
    (lambda N, D, L: (N, -D, L), "tokens[0]"),
    (lambda N, D, L: (N, D, np.where(np.arange(L.size) == 3, np.nan, L)), "loss[3]"),
])
def test_rejects_bad_points(change, message):
    with pytest.raises(ValueError) as error:
        fit_parametric_law(*change(*synthetic_runs()), bootstrap=0)
    assert message in str(error.value)


# ---------------------------------------------------------------------------------------------------- command line


def write_csv(path, rows, header="loss,name,tokens,params"):
    path.write_text(header + "\n" + "".join(f"{row}\n" for row in rows))
    return path


def good_rows():
    N, D, L = synthetic_runs()
    return [f"{float(loss)!r},run{i},{d:.6g},{n:.6g}" for i, (n, d, loss) in enumerate(zip(N, D, L, strict=True))]


def one_error_line(capsys):
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


def test_cli_writes_json_and_refuses_to_overwrite(tmp_path, capsys):
    points = write_csv(tmp_path / "runs.csv", ["", *good_rows(), ""])  # blank lines are skipped
    out = tmp_path / "fit.json"
    assert fit_scaling_law.main(["--points", str(points), "--out", str(out), "--bootstrap", "20"]) == 0
    printed = capsys.readouterr().out
    assert "| alpha |" in printed and "N_opt ~ C^a" in printed and "40 runs" in printed
    data = json.loads(out.read_text())
    assert {*PARAMETERS, "a", "b"} <= set(data)
    assert all(set(data[name]) == {"value", "ci_low", "ci_high"} for name in PARAMETERS)
    assert data["bootstrap"] == 20 and abs(data["alpha"]["value"] - TRUE["alpha"]) < 0.015
    before = out.read_text()
    assert fit_scaling_law.main(["--points", str(points), "--out", str(out)]) == 2
    assert "--overwrite" in one_error_line(capsys) and out.read_text() == before


@pytest.mark.parametrize("header, rows, words", [
    ("params,loss", ["1e6,3.0"] * 6, ["missing column(s) tokens", "params, tokens, loss"]),
    (None, lambda rows: rows[:3], ["3 run(s)", "at least 5"]),
    (None, lambda rows: [rows[0], rows[1].rsplit(",", 1)[0] + ",-5", *rows[2:]],
     ["row 2 (line 3)", "column params", "not positive"]),
    (None, lambda rows: [rows[0], "abc" + rows[1][rows[1].index(","):], *rows[2:]],
     ["row 2", "column loss", "'abc' is not a number"]),
    (None, lambda rows: ["nan" + rows[0][rows[0].index(","):], *rows[1:]], ["row 1", "column loss", "not finite"]),
    (None, lambda rows: [*rows[:5], rows[5][rows[5].index(","):]], ["row 6", "column loss is empty"]),
    ("status,params,tokens,loss", ["done,1e6,1e9,3.0"] * 4 + ["running,,,"], ["4 run(s) (1 more not done)"]),
])
def test_cli_input_errors(tmp_path, capsys, header, rows, words):
    rows = rows(good_rows()) if callable(rows) else rows
    points = write_csv(tmp_path / "runs.csv", rows, header or "loss,name,tokens,params")
    assert fit_scaling_law.main(["--points", str(points)]) == 2
    line = one_error_line(capsys)
    for word in words:
        assert word in line, line


def test_cli_skips_points_not_done(tmp_path, capsys):
    rows = [f"done,{row.split(',', 1)[1]},{row.split(',', 1)[0]}" for row in good_rows()]  # name,tokens,params,loss
    points = write_csv(tmp_path / "points.csv", [*rows, "failed,run40,,,", "running,run41,,,"],
                       header="status,name,tokens,params,loss")
    assert fit_scaling_law.main(["--points", str(points), "--bootstrap", "0"]) == 0
    printed = capsys.readouterr().out
    assert "40 runs" in printed and "2 rows not done skipped" in printed and "n/a (no bootstrap)" in printed


def test_cli_missing_file_as_a_program(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "tools.fit_scaling_law", "--points", str(tmp_path / "nope.csv")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: --points") and "no such file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------------- IsoFLOP


def test_isoflop_parabola_vertex():
    x = np.log(np.geomspace(1e7, 1e10, 7))
    loss = 2.5 + 0.04 * (x - math.log(3e8)) ** 2
    parabola = fit_isoflop_parabola(x, loss)
    assert parabola.n_opt == pytest.approx(3e8, rel=1e-8) and parabola.loss_opt == pytest.approx(2.5)
    assert parabola.inside and np.polyval(parabola.coefficients, x) == pytest.approx(loss)
    with pytest.raises(ValueError, match="budget 1e19: .* opens downward"):
        fit_isoflop_parabola(x, -loss, budget="1e19")
    with pytest.raises(ValueError, match="budget 1e19: 2 distinct model sizes"):
        fit_isoflop_parabola(x[[0, 1, 1]], loss[[0, 1, 1]], budget="1e19")


def test_power_law_exponent():
    C = np.geomspace(1e17, 1e21, 6)
    exact = fit_power_law(C, 3.0 * C**0.5)
    assert exact.exponent == pytest.approx(0.5) and exact.coefficient == pytest.approx(3.0)
    noisy = fit_power_law(C, 3.0 * C**0.5 * np.exp(np.random.default_rng(0).normal(0, 0.02, C.size)))
    assert abs(noisy.exponent - 0.5) < 0.01 and noisy.ci_low < 0.5 < noisy.ci_high and noisy.method == "t"
    three = fit_power_law(C[:3], 3.0 * C[:3] ** 0.5 * np.array([1.01, 0.99, 1.01]))
    assert three.ci_high - three.ci_low > 10 * (noisy.ci_high - noisy.ci_low)  # t(0.975, 1) = 12.7: wide, honest


def test_isoflop_analysis_on_known_law():
    budgets = np.array([1e17, 1e18, 1e19, 1e20])
    a = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    G = (TRUE["alpha"] * TRUE["A"] / (TRUE["beta"] * TRUE["B"])) ** (1 / (TRUE["alpha"] + TRUE["beta"]))
    rows = []
    for C in budgets:
        for N in G * (C / 6) ** a * np.geomspace(1 / 4, 4, 7):
            rows.append((C * (1 + 1e-9), N, C / (6 * N)))  # C as logged, not exactly equal within a budget
    C, N, D = map(np.array, zip(*rows, strict=True))
    L = law(N, D) * np.exp(np.random.default_rng(0).normal(0, 0.001, N.size))
    result = isoflop_analysis(C, N, D, L, bootstrap=50)
    assert len(result.budgets) == 4 and all(b.runs == 7 for b in result.budgets)
    for b in result.budgets:  # D interpolated at N_opt within the budget: exact for D = C / (6 N)
        assert b.d_opt == pytest.approx(b.compute / (6 * b.n_opt), rel=1e-6)
        assert b.n_opt == pytest.approx(G * (b.compute / 6) ** a, rel=0.15)
    assert abs(result.n_opt.exponent - a) < 0.02
    assert result.n_opt.exponent + result.d_opt.exponent == pytest.approx(1.0, abs=1e-6)
    assert result.n_opt.ci_low < result.n_opt.exponent < result.n_opt.ci_high
    assert result.n_opt.method.startswith("bootstrap") and result.bootstrap == 50


def test_isoflop_analysis_few_runs_per_budget():
    C = np.repeat([1e18, 1e19, 1e20], 3)
    N = np.tile([0.5, 1.0, 2.0], 3) * np.repeat([1e7, 3e7, 1e8], 3)
    L = 3.0 + 0.05 * (np.log(N) - np.log(np.repeat([1e7, 3e7, 1e8], 3))) ** 2
    result = isoflop_analysis(C, N, C / (6 * N), L, bootstrap=100)
    assert result.n_opt.method.startswith("t (only") and result.dropped > 50  # 3 runs: most resamples unusable
    assert result.n_opt.exponent == pytest.approx(math.log(10) / math.log(100))
    with pytest.raises(ValueError, match="budget 1e\\+19: 2 distinct model sizes"):
        isoflop_analysis(C[:-4], N[:-4], C[:-4] / (6 * N[:-4]), L[:-4])
