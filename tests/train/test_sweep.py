"""experiments.sweep: arms x seeds (from --sweep or a config file's get_sweep), validation of every point before
anything trains, the commands (dry run), and the per-arm results table and plots from the points' metrics."""

import csv
import json
import subprocess
import sys

import pytest

from experiments import sweep
from qwen35_jax.train import sweep_results
from qwen35_jax.train.provenance import PROVENANCE_FILE, load_provenance, record_provenance
from qwen35_jax.train.sweep_results import CSV_PROVENANCE, SweepPoint


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
    assert "No provenance.json (run before it was recorded, or never started): steps-4, steps-5." in \
        (tmp_path / "results.md").read_text()
    with open(tmp_path / "points.csv") as f:
        assert [(r["point"], r["status"], r["loss"], r["commit"]) for r in csv.DictReader(f)] == [
            ("steps-4", "unfinished", "", ""), ("steps-5", "unfinished", "", "")]
    assert not (tmp_path / "loss.png").exists()  # no curve, no (empty) plot


def _write_metrics(path, records):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_results_per_arm_mean_and_std(tmp_path):
    points = [SweepPoint(f"{arm}/seed{s}", arm, s, {"model.x": arm, "seed": str(s)}, tokens_per_step=1000)
              for arm in ("a", "b") for s in (0, 1)]
    for i, p in enumerate(points):
        records = [{"event": "model", "params": 1000, "non_embedding_params": 600},
                   {"step": 0, "val_loss/shakespeare": 9.0},
                   {"step": 1, "loss": 6.0 - i, "tokens_per_s": 500.0}, {"step": 2, "loss": 5.0 - i,
                                                                         "tokens_per_s": 1000.0},
                   {"step": 2, "val_loss/shakespeare": 4.0 + i}]
        if p.name != "b/seed1":
            records += [{"event": "probes", "step": 2, "bpb/shakespeare": 1.0 + i, "mqar/64x4": 0.1 * (i + 1),
                         "mqar/128x8": 0.05, "mqar_chance": 1 / 64}, {"event": "done", "step": 2}]
        _write_metrics(tmp_path / p.name, records)
        record_provenance(tmp_path / p.name, ["-m", "experiments.train", "--workdir", p.name])
    other = json.loads((tmp_path / "b/seed1" / PROVENANCE_FILE).read_text())
    other["starts"][-1].update(jax="0.0.1", commit="f" * 40, dirty=True)  # resumed on other software
    (tmp_path / "b/seed1" / PROVENANCE_FILE).write_text(json.dumps(other))
    text = sweep_results.write_results(str(tmp_path), points, title="t", axis_label="x")
    arm_rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
                for line in text.splitlines() if line.startswith("| a |") or line.startswith("| b |")}
    header = [c.strip() for c in text.splitlines()[4].split("|")[2:-1]]
    assert header == ["seeds done", "val_loss/shakespeare", "bpb/shakespeare", "mqar/64x4", "mqar/128x8",
                      "train_loss", "step_ms", "non_embedding_params", "params"]  # MQAR by length, not as text
    assert arm_rows["a"] == ["2 / 2", "4.5000 ± 0.7071", "1.5000 ± 0.7071", "0.150 ± 0.071", "0.050 ± 0.000",
                             "4.5000 ± 0.7071",
                             "1000.0 ± 0.0", "600", "1,000"]
    assert arm_rows["b"][:3] == ["1 / 2", "6.0000", "3.0000"]  # the unfinished seed is left out
    assert "| b/seed1 | b | 1 |" in text and text.rstrip().endswith("![loss.png](loss.png) ![recall.png](recall.png)")
    assert (tmp_path / "results.md").read_text() == text
    assert (tmp_path / "loss.png").stat().st_size > 1000 and (tmp_path / "recall.png").stat().st_size > 1000

    # provenance: each point's file, its row's commit / jax / device, one Provenance row per software set
    starts = {p.name: load_provenance(tmp_path / p.name)[-1] for p in points}
    assert all(v not in ("", None) for start in starts.values() for v in start.values())
    lines = text.splitlines()
    points_header = next(line for line in lines if line.startswith("| point |")).split("|")[1:-1]
    assert [c.strip() for c in points_header][-4:] == ["status", "commit", "jax", "device"]
    for p in points:
        cells = [c.strip() for c in next(line for line in lines if line.startswith(f"| {p.name} |")).split("|")]
        start = starts[p.name]
        assert cells[-4:-1] == [sweep_results.short_commit(start), start["jax"],
                                f"{start['device_kind']} x{start['device_count']}"] and all(cells[-4:-1])
    assert cells[-4] == "f" * 10 + "+dirty"
    provenance_rows = [line for line in text.split("## Provenance")[1].splitlines() if line.startswith("| ")]
    assert len(provenance_rows) == 3  # header + two software sets
    assert provenance_rows[1].endswith("| a/seed0, a/seed1, b/seed0 |") and "| 0.0.1 |" in provenance_rows[2]

    # points.csv: the scaling-law columns and the provenance of every point
    with open(tmp_path / "points.csv") as f:
        reader = csv.DictReader(f)
        table = {row["point"]: row for row in reader}
    assert reader.fieldnames == ["point", "arm", "seed", "model.x", "status", "params", "params_total", "tokens",
                                 "loss", "val_loss/shakespeare", "bpb/shakespeare", *CSV_PROVENANCE]
    assert table["a/seed1"] | {k: "" for k in CSV_PROVENANCE} == {
        "point": "a/seed1", "arm": "a", "seed": "1", "model.x": "a", "status": "done", "params": "600",
        "params_total": "1000", "tokens": "2000", "loss": "5.0", "val_loss/shakespeare": "5.0",
        "bpb/shakespeare": "2.0", **{k: "" for k in CSV_PROVENANCE}}
    assert table["b/seed1"]["status"] == "unfinished" and table["b/seed1"]["loss"] == table["b/seed1"]["tokens"] == ""
    assert all(row[k] for row in table.values() for k in CSV_PROVENANCE)
    assert table["a/seed0"]["dirty"] in ("true", "false") and table["b/seed1"]["dirty"] == "true"
    assert table["a/seed0"]["command"].endswith("-m experiments.train --workdir a/seed0")


def test_points_csv_loss_is_the_first_validation_corpus(tmp_path):
    """``loss`` is the first ``val_loss/<name>`` in the records (the config's first corpus), not the first by name."""
    point = SweepPoint("p", "p", None, {}, tokens_per_step=10)
    records = [{"step": 0, "val_loss/wiki_en": 9.0, "val_loss/a_corpus": 8.0},
               {"step": 3, "val_loss/wiki_en": 4.0, "val_loss/a_corpus": 3.0}, {"event": "done", "step": 3}]
    sweep_results.write_points_csv(str(tmp_path), [point], {"p": sweep_results.summarize(records, 10)})
    with open(tmp_path / "points.csv") as f:
        row = next(csv.DictReader(f))
    assert (row["tokens"], row["loss"], row["val_loss/a_corpus"], row["params"], row["seed"]) == ("30", "4.0", "3.0",
                                                                                                 "", "")
