"""The prepared-data stream: windows equal today's packing, batches are a function of (datasets, seed, step) for
any number of processes and data workers, mixtures keep their proportions exactly (also across a resume), and a
resume against other data is refused."""

import json

import numpy as np
import pytest

from qwen35_jax.data.packing import FIELDS, pack_documents
from qwen35_jax.data.prepared import Mixture, PreparedDataset, SplitRule, StreamSource, TrainStream, prepare_documents
from qwen35_jax.data.prepared.dataset import window_row
from qwen35_jax.data.tokenizer import get_tokenizer

SEQ_LEN, BATCH = 16, 8


def make_dataset(path, word, documents=80, shards=3):
    texts = [f"{word} {i} " + " ".join(f"{word}{j % 13}" for j in range(i % 17 + 3)) for i in range(documents)]
    prepare_documents(texts, str(path), rule=SplitRule(0.1, 0), shards={"train": shards, "validation": 1},
                      inputs=[{"corpus": word}], text_field="text", tokenizer=get_tokenizer())
    return PreparedDataset.open(str(path))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    return make_dataset(root / "web", "alpha"), make_dataset(root / "code", "beta", documents=50, shards=2)


def stream(datasets, weights=(0.7, 0.3), rows=None, seed=0):
    sources = [StreamSource(d.directory.rsplit("/", 1)[-1], d.windows("train", SEQ_LEN), w)
               for d, w in zip(datasets, weights, strict=False)]
    return TrainStream(sources, seq_len=SEQ_LEN, global_batch_size=BATCH, seed=seed, rows=rows)


def take(iterator, n):
    batches = [next(iterator) for _ in range(n)]
    iterator.close()
    return batches


def test_windows_are_the_packed_rows_of_each_shard(datasets):
    web = datasets[0]
    eos = web.manifest.eos_id
    windows = web.windows("train", SEQ_LEN)
    index = 0
    for shard in web.manifest.splits["train"].shards:
        tokens = np.fromfile(f"{web.directory}/{shard.file}", "<i4")
        documents = np.split(tokens, np.flatnonzero(tokens == eos)[:-1] + 1)
        rows = pack_documents(documents, SEQ_LEN, drop_remainder=True)
        for i in range(len(rows)):
            row = window_row(windows.read(index + i), eos)
            assert all(np.array_equal(row[k], rows[i][k]) for k in FIELDS)
        index += len(rows)
    assert index == len(windows)
    padded = web.windows("validation", SEQ_LEN, pad_last=True)
    last = window_row(padded.read(len(padded) - 1), eos)
    tokens = web.manifest.splits["validation"].tokens
    valid = (tokens - 1) - (len(padded) - 1) * SEQ_LEN  # next-token pairs in the last window
    assert last["segment_ids"][valid + 1:].sum() == 0 and not last["loss_mask"][valid:].any()
    assert last["loss_mask"][:valid].any()


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_global_batches_are_the_same_for_any_processes_and_workers(datasets, workers):
    reference = take(stream(datasets).iterator(), 6)
    for processes in (1, 2, 4):
        local = BATCH // processes
        per_process = [take(stream(datasets, rows=slice(p * local, (p + 1) * local)).iterator(workers), 6)
                       for p in range(processes)]
        for step, expected in enumerate(reference):
            for name in FIELDS:
                np.testing.assert_array_equal(np.concatenate([b[step][name] for b in per_process]), expected[name])


def test_every_window_once_per_epoch_and_epochs_reshuffle(datasets):
    web = datasets[0]
    single = stream([web], weights=(1.0,))
    n = len(web.windows("train", SEQ_LEN))
    epoch = [single.source.window_of(r)[1] for r in range(n)]
    assert sorted(epoch) == list(range(n))
    second = [single.source.window_of(r)[1] for r in range(n, 2 * n)]
    assert sorted(second) == list(range(n)) and second != epoch
    assert [stream([web], weights=(1.0,), seed=1).source.window_of(r)[1] for r in range(n)] != epoch


def test_mixture_fractions_are_exact_over_1000_batches_and_after_a_resume(datasets):
    mixture = Mixture([0.7, 0.3])
    rows = 1000 * BATCH
    sources = [mixture.assign(r)[0] for r in range(rows)]
    for prefix in (BATCH, 10 * BATCH, rows):
        share = np.mean(np.asarray(sources[:prefix]) == 0)
        assert abs(share - 0.7) <= 1 / prefix + 1e-12  # within one row at every prefix
    assert mixture.rows_per_source(rows) == [sources.count(0), sources.count(1)]
    # Each source's rows are numbered 0, 1, 2, ... in order: no window is skipped or repeated.
    for source in (0, 1):
        assert [mixture.assign(r)[1] for r in range(rows) if sources[r] == source] == list(range(sources.count(source)))
    three = Mixture([1, 1, 2])
    assert three.rows_per_source(4000) == [1000, 1000, 2000]
    s = stream(datasets)
    assert s.tokens_per_source(1000) == {"web": 5600 * SEQ_LEN, "code": 2400 * SEQ_LEN}
    # Observed in the batches themselves: the two corpora use different words, so each row tells its source.
    tok = get_tokenizer()
    beta = set(tok.encode(" beta")) - set(tok.encode(" alpha"))
    iterator = s.iterator()
    from_code = [sum(bool(beta & set(row.tolist())) for row in next(iterator)["input_ids"]) for _ in range(1000)]
    state = json.loads(json.dumps(iterator.get_state()))
    after = [next(iterator) for _ in range(5)]
    iterator.close()
    assert sum(from_code) == 2400  # 0.3 of 8,000 rows, exactly: within 1 % over 1,000 batches
    assert set(from_code) == {2, 3}  # 2.4 rows per batch on average, never fewer than 2 or more than 3
    resumed = s.iterator()
    resumed.set_state(state)
    for expected in after:
        batch = next(resumed)
        assert all(np.array_equal(batch[k], expected[k]) for k in FIELDS)
    resumed.close()


def test_resume_against_other_data_is_refused(datasets, tmp_path):
    state = stream(datasets).iterator().get_state()
    other = make_dataset(tmp_path / "web", "gamma")
    with pytest.raises(ValueError, match="trained on datasets .*'web': '[0-9a-f]{64}'.* this run reads"):
        stream([other, datasets[1]]).iterator().set_state(state)


def test_stream_errors(datasets):
    with pytest.raises(ValueError, match="repeat a name"):
        TrainStream([StreamSource("a", datasets[0].windows("train", 4)), StreamSource("a", datasets[1].windows(
            "train", 4))], seq_len=4, global_batch_size=2, seed=0)
    with pytest.raises(ValueError, match="not one window of data.seq_len=100000"):
        TrainStream([StreamSource("a", datasets[0].windows("train", 100000))], seq_len=100000, global_batch_size=2,
                    seed=0)
    with pytest.raises(ValueError, match="must all be > 0"):
        Mixture([0.5, 0.0])


def test_a_url_reads_the_same_windows_through_tensorstore(datasets):
    """``gs://`` and other URLs go through tensorstore's key-value stores; ``file://`` takes the same code path."""
    web = datasets[0]
    remote = PreparedDataset.open(f"file://{web.directory}")
    assert remote.manifest.fingerprint == web.manifest.fingerprint
    local_windows, remote_windows = web.windows("train", SEQ_LEN), remote.windows("train", SEQ_LEN)
    assert len(local_windows) == len(remote_windows)
    for i in (0, 1, len(local_windows) - 1):
        np.testing.assert_array_equal(remote_windows.read(i), local_windows.read(i))
    np.testing.assert_array_equal(remote.token_counts("train"), web.token_counts("train"))
    with pytest.raises(FileNotFoundError, match="is not a prepared dataset"):
        PreparedDataset.open(f"file://{web.directory}/missing")


def test_a_truncated_shard_is_named(datasets, tmp_path):
    import shutil

    copy = tmp_path / "web"
    shutil.copytree(datasets[0].directory, copy)
    shard = copy / datasets[0].manifest.splits["train"].shards[-1].file
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    windows = PreparedDataset.open(str(copy)).windows("train", SEQ_LEN)
    with pytest.raises(ValueError, match=f"{shard.name} is truncated.*--overwrite"):
        windows.read(len(windows) - 1)
