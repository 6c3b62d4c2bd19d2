"""experiments.sweep: the grid, the commands (dry run) and the results table from finished points' metrics."""

import json
import sys

import pytest

from experiments import sweep


def test_grid_and_names():
    axes = sweep.parse_axes("model.hidden_size=64,128; model.num_experts=4,8")
    points = sweep.grid(axes)
    assert len(points) == 4 and points[1] == {"model.hidden_size": "64", "model.num_experts": "8"}
    assert sweep.point_name(points[1]) == "hidden_size-64_num_experts-8"
    with pytest.raises(ValueError, match="'model.hidden_size' is invalid"):
        sweep.parse_axes("model.hidden_size")
    with pytest.raises(ValueError, match="names a key twice"):
        sweep.parse_axes("a=1;a=2")


def test_dry_run_prints_commands(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["sweep", "--config", "configs/tiny.py", "--workdir", str(tmp_path),
                                      "--sweep", "model.num_experts=4,8", "--sweep_set", "train.steps=3",
                                      "--dry_run"])
    sweep.define_flags()
    with pytest.raises(SystemExit) as exit_info:
        sweep.run(sweep.main)
    assert exit_info.value.code in (0, None)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert "--config.train.steps=3 --config.model.num_experts=8" in lines[1]
    assert f"--workdir {tmp_path}/num_experts-8" in lines[1]
    assert not list(tmp_path.iterdir())  # nothing run


def test_results_table_and_plot(tmp_path):
    points = {"num_experts-4": {"model.num_experts": "4"}, "num_experts-8": {"model.num_experts": "8"}}
    for i, name in enumerate(points):
        (tmp_path / name).mkdir()
        records = [{"event": "model", "params": 1000 + i}, {"step": 0, "val_loss/shakespeare": 9.0},
                   {"step": 1, "loss": 5.0 - i, "tokens_per_s": 100.0}, {"step": 1, "val_loss/shakespeare": 4.0 - i}]
        if i == 0:
            records.append({"event": "done"})
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    table = sweep.write_results(str(tmp_path), points)
    rows = table.strip().splitlines()
    assert rows[0].split("|")[1:-1] == [" point ", " model.num_experts ", " params ", " tokens_per_s ",
                                        " train_loss ", " val_loss/shakespeare ", " status "]
    assert "| num_experts-8 | 8 | 1,001 | 100.0000 | 4.0000 | 3.0000 | unfinished |" in rows
    assert (tmp_path / "results.md").read_text() == table
    assert (tmp_path / "sweep.png").stat().st_size > 1000
