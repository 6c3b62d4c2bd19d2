"""experiments.sweep: arms x seeds (from --sweep or a config file's get_sweep), validation of every point before
anything trains, the commands (dry run), and the per-arm results table and plots from the points' metrics."""

import json
import subprocess
import sys

import pytest

from experiments import sweep
from qwen35_jax.train import sweep_results
from qwen35_jax.train.sweep_results import SweepPoint


def run_sweep(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["sweep", *map(str, args)])
    sweep.define_flags()
    sweep.FLAGS.unparse_flags()  # absl keeps values from an earlier test's parse (e.g. --dry_run)
    with pytest.raises(SystemExit) as exit_info:
        sweep.run(sweep.main)
    return exit_info.value.code


def test_grid_and_names():
    axes = sweep.parse_axes("model.hidden_size=64,128; model.num_experts=4,8")
    points = sweep.grid(axes)
    assert len(points) == 4 and points[1] == {"model.hidden_size": "64", "model.num_experts": "8"}
    assert sweep.point_name(points[1]) == "hidden_size-64_num_experts-8"
    with pytest.raises(ValueError, match="'model.hidden_size' is invalid"):
        sweep.parse_axes("model.hidden_size")
    with pytest.raises(ValueError, match="names a key twice"):
        sweep.parse_axes("a=1;a=2")
    with pytest.raises(ValueError, match="--seeds='0,x'"):
        sweep.parse_seeds("0,x")
    assert [sweep.override_text(v) for v in (True, 0.25, 3, "a")] == ["true", "0.25", "3", "a"]


def test_dry_run_prints_commands(tmp_path, capsys, monkeypatch):
    code = run_sweep(monkeypatch, "--config", "configs/tiny.py", "--workdir", tmp_path, "--sweep",
                     "model.num_experts=4,8", "--sweep_set", "train.steps=12", "--dry_run")
    assert code in (0, None)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert "--config.train.steps=12 --config.model.num_experts=8" in lines[1]
    assert f"--workdir {tmp_path}/num_experts-8" in lines[1]
    assert not list(tmp_path.iterdir())  # nothing run


def test_ablation_files_dry_run_every_arm_and_seed(tmp_path, capsys, monkeypatch):
    """Each ablation file's arms x 3 seeds validate at both sizes (the 0.8B shape included) and become commands."""
    expected = {"layer_ratio": 5, "output_gate": 2, "rotary": 3, "mtp": 2}
    for study, arms in expected.items():
        for variant in ("", ":0p8b"):
            code = run_sweep(monkeypatch, "--config", f"configs/ablations/{study}.py{variant}", "--workdir",
                             tmp_path / study, "--dry_run")
            assert code in (0, None)
            lines = capsys.readouterr().out.strip().splitlines()
            assert len(lines) == 3 * arms, (study, variant, lines)
            assert all("--config.seed=" in line and "--config.data.seed=" in line for line in lines)
            assert f"--workdir {tmp_path / study}/" in lines[0] and "/seed0 " in lines[0]
    assert not list(tmp_path.iterdir())


def test_bad_point_fails_before_training(tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: ran.append(a))
    code = run_sweep(monkeypatch, "--config", "configs/tiny.py:test", "--workdir", tmp_path, "--sweep",
                     "model.full_attention_interval=2,-1", "--seeds", "0,1")
    assert code == 2 and not ran and not list(tmp_path.iterdir())
    err = capsys.readouterr().err
    assert "sweep point(s) full_attention_interval--1/seed0, full_attention_interval--1/seed1" in err
    assert "full_attention_interval=-1" in err


def test_failed_point_gives_non_zero_exit(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1))
    code = run_sweep(monkeypatch, "--config", "configs/tiny.py:test", "--workdir", tmp_path, "--sweep",
                     "train.steps=4,5")
    assert code == 1
    assert "2 point(s) failed: steps-4, steps-5" in capsys.readouterr().err
    assert "unfinished" in (tmp_path / "results.md").read_text()
    assert not (tmp_path / "loss.png").exists()  # no curve, no (empty) plot


def _write_metrics(path, records):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_results_per_arm_mean_and_std(tmp_path):
    points = [SweepPoint(f"{arm}/seed{s}", arm, s, {"model.x": arm, "seed": str(s)}, tokens_per_step=1000)
              for arm in ("a", "b") for s in (0, 1)]
    for i, p in enumerate(points):
        records = [{"event": "model", "params": 1000}, {"step": 0, "val_loss/shakespeare": 9.0},
                   {"step": 1, "loss": 6.0 - i, "tokens_per_s": 500.0}, {"step": 2, "loss": 5.0 - i,
                                                                         "tokens_per_s": 1000.0},
                   {"step": 2, "val_loss/shakespeare": 4.0 + i}]
        if p.name != "b/seed1":
            records += [{"event": "probes", "step": 2, "bpb/shakespeare": 1.0 + i, "mqar/64x4": 0.1 * (i + 1),
                         "mqar/128x8": 0.05, "mqar_chance": 1 / 64}, {"event": "done", "step": 2}]
        _write_metrics(tmp_path / p.name, records)
    text = sweep_results.write_results(str(tmp_path), points, title="t", axis_label="x")
    arm_rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
                for line in text.splitlines() if line.startswith("| a |") or line.startswith("| b |")}
    header = [c.strip() for c in text.splitlines()[4].split("|")[2:-1]]
    assert header == ["seeds done", "val_loss/shakespeare", "bpb/shakespeare", "mqar/64x4", "mqar/128x8",
                      "train_loss", "step_ms", "params"]  # MQAR settings by length, not as text
    assert arm_rows["a"] == ["2 / 2", "4.5000 ± 0.7071", "1.5000 ± 0.7071", "0.150 ± 0.071", "0.050 ± 0.000",
                             "4.5000 ± 0.7071",
                             "1000.0 ± 0.0", "1,000"]
    assert arm_rows["b"][:3] == ["1 / 2", "6.0000", "3.0000"]  # the unfinished seed is left out
    assert "| b/seed1 | b | 1 |" in text and text.rstrip().endswith("![loss.png](loss.png) ![recall.png](recall.png)")
    assert (tmp_path / "results.md").read_text() == text
    assert (tmp_path / "loss.png").stat().st_size > 1000 and (tmp_path / "recall.png").stat().st_size > 1000
