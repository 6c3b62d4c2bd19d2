"""Two processes of one run on one fresh shared workdir, started 10 times in a row (the SLURM-style start README
recommends for clusters): every file has one writer (process 0 prepares the corpus cache and writes the compact
vocabulary, the config, metrics and plots; orbax writes the checkpoint with its multi-host protocol), so no start
fails. Slow tier (``make check-slow``): 10 two-process runs take ~5 minutes on 2 cores."""

import pathlib
import subprocess
import sys

import pytest
from test_multiprocess_runs import environment, free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slowtier
def test_two_processes_on_a_fresh_shared_workdir_ten_times(tmp_path):
    for attempt in range(10):
        workdir, port = tmp_path / f"run{attempt}", free_port()
        common = [sys.executable, "-m", "experiments.train", "--config", "configs/tiny.py:test", "--workdir",
                  str(workdir), "--config.data.corpora=shakespeare,wiki_es", "--config.data.batch_size=8",
                  "--config.train.steps=3", "--config.multihost.enabled=True",
                  f"--config.multihost.coordinator_address=127.0.0.1:{port}", "--config.multihost.num_processes=2",
                  "--config.multihost.cpu_collectives=gloo"]
        processes = [subprocess.Popen([*common, f"--config.multihost.process_id={i}"], cwd=ROOT,
                                      env=environment(4, tmp_path / "xla"), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True) for i in range(2)]
        logs = [p.communicate(timeout=900)[0] for p in processes]
        assert all(p.returncode == 0 for p in processes), f"attempt {attempt}:\n" + "\n\n".join(logs)[-6000:]
        assert (workdir / "compact_vocab.json").exists() and len(list((workdir / "prepared").iterdir())) == 2
