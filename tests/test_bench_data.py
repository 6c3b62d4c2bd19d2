"""``tools.bench_data``: its synthetic prepared datasets read back as documents, the benchmark's table, and the pod
variants' per-host token rates."""

import hashlib
import re

import numpy as np
import pytest

from qwen35_jax.data.prepared import PreparedDataset, window_row
from qwen35_jax.data.prepared.documents import counts_from_bytes
from tools import bench_data


def test_synthetic_dataset_holds_documents_that_decode_as_windows(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_data, "CHUNK_TOKENS", 50_000)  # several chunks per shard
    directory = str(tmp_path / "synthetic")
    manifest = bench_data.write_synthetic_dataset(directory, 300_000, seed=3, shard_tokens=120_000,
                                                  validation_tokens=20_000)
    eos = manifest.eos_id
    assert [s.tokens for s in manifest.splits["train"].shards] == [100_000] * 3
    assert manifest.splits["validation"].tokens == 20_000
    for split in manifest.splits.values():
        everything = []
        for shard in split.shards:
            raw = (tmp_path / "synthetic" / shard.file).read_bytes()
            tokens = np.frombuffer(raw, "<i4")
            assert tokens.size == shard.tokens and hashlib.sha256(raw).hexdigest() == shard.sha256
            ends = np.flatnonzero(tokens == eos)
            assert ends.size == shard.documents and ends[-1] == tokens.size - 1  # every document ends with eos
            lengths = np.diff(np.concatenate([[-1], ends]))
            assert lengths.max() <= bench_data.MAX_DOCUMENT
            assert lengths[:-1].min() >= bench_data.MIN_DOCUMENT  # only a shard's last document is cut
            assert tokens[tokens != eos].max() < bench_data.RANDOM_ID_LIMIT
            everything.append(tokens)
        saved = counts_from_bytes((tmp_path / "synthetic" / split.counts_file).read_bytes())
        assert np.array_equal(saved, np.bincount(np.concatenate(everything), minlength=saved.size))

    dataset = PreparedDataset.open(directory)
    windows = dataset.windows("train", 256)
    first_of_shard_1 = (100_000 - 1) // 256
    for index in (0, 5, first_of_shard_1 - 1, first_of_shard_1, len(windows) - 1):
        shard, start = windows.locate(index)
        file = tmp_path / "synthetic" / manifest.splits["train"].shards[shard].file
        expected = np.frombuffer(file.read_bytes(), "<i4")[start:start + 257]
        window = windows.read(index)
        assert np.array_equal(window, expected)
        row = window_row(window, eos)
        after_eos = np.concatenate([[False], window[:-2] == eos])  # positions whose previous input is eos
        assert np.array_equal(np.diff(row["segment_ids"]) == 1, after_eos[1:])  # a new document starts there
        assert np.array_equal(row["loss_mask"], window[:-1] != eos)

    # The same request finds the dataset again; another size does not.
    options = {"seed": 3, "shard_tokens": 120_000, "validation_tokens": 20_000}
    again = bench_data.existing_synthetic_dataset(directory, 300_000, **options)
    assert again is not None and again.fingerprint == manifest.fingerprint
    assert bench_data.existing_synthetic_dataset(directory, 400_000, **options) is None


def test_benchmark_prints_a_row_per_size_and_worker_count(tmp_path, capsys):
    assert bench_data.main(["--sizes", "2M", "--workdir", str(tmp_path), "--seq_len", "256", "--batches", "20",
                            "--workers", "0,1", "--repeats", "1", "--no_demand"]) == 0
    out = capsys.readouterr().out
    assert "setup 2M: written" in out
    rows = re.findall(r"^\| 2M \| (\d) \| ([\d.]+) \| ([\d.]+) M \| (\d+) \| (\d+) \| (\d) \| (\d+) \| (\d+) \| "
                      r"([\d.]+) \|$", out, re.MULTILINE)
    assert [r[0] for r in rows] == ["0", "1"]
    for row in rows:
        assert float(row[1]) >= 0 and all(float(value) > 0 for value in row[2:])  # a first batch can print 0.00 s
    assert int(rows[1][5]) >= 2  # the parent and its grain worker were both sampled
    assert int(rows[1][4]) < int(rows[1][3])  # PSS counts the libraries parent and worker share once
    assert "(worker)" in out and "worker with jax" not in out  # the worker re-imports this module, not jax
    assert "peak RSS sum <= 512 MiB" in out and "peak PSS sum (each shared page once) <= 512 MiB" in out


def test_pod_variants_token_rate_comes_from_readme_and_configs():
    rows = {r["variant"]: r for r in bench_data.demand_rows()}
    for variant in ("qwen35_397b_a17b:v5p-64", "qwen35_397b_a17b:v5p-256", "qwen35_35b_a3b:v5p-32"):
        row = rows[variant]
        assert row["hosts"] == row["chips"] // 4 and 0 < row["mfu"] < 1
        assert row["tokens_per_host_s"] == pytest.approx(row["tokens_per_host_s_at_peak"] * row["mfu"])
    for row in rows.values():  # README's 100 %-MFU step times are the same FLOP formula on the same configs
        if row["readme_peak_step_s"] is not None:
            assert row["peak_step_s"] == pytest.approx(row["readme_peak_step_s"], abs=0.006)
