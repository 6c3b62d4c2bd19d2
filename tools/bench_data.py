"""Benchmark of the training input over prepared datasets (``data.prepared.TrainStream``): time to the first batch,
steady-state tokens/s and peak resident memory, on synthetic prepared datasets of growing size.

    python -m tools.bench_data [--sizes 50M,1B] [--workdir /tmp/bench_data] [--seq_len 4096] [--batch 8]
                               [--batches 200] [--workers 0,2] [--repeats 3]

Datasets (``write_synthetic_dataset``): random token ids in [0, 150000), documents of 200-2,000 tokens each ending
with the tokenizer's end-of-text id, in training shards of ~100 M tokens plus one validation shard of 1 M tokens,
written chunk by chunk (the generator holds ~4 M tokens at a time) with the real manifest and token counts. A
dataset already at ``<workdir>/synthetic-<size>`` with the same description is reused (the 1 B one is written once).

Each (size, workers) runs ``--repeats`` times, each in a fresh process (``--child``) that imports only the input
pipeline (``qwen35_jax.data.prepared`` and grain): first batch = ``PreparedDataset.open`` + ``TrainStream`` +
``iterator(workers)`` + the first ``next()``; then ``--batches`` batches of ``batch x seq_len`` tokens, all rows read
by this one process, give tokens/s. This process samples VmRSS of the child and all its descendants (grain's
workers) every 50 ms; the table gives the medians of the times, the largest sum seen ("peak RSS"), the child's own
VmHWM and its RSS after the imports (the python + numpy + grain + qwen35_jax.data baseline). Page cache is warm
(the files were just written or read), so the times are the pipeline's, not the disk's.

A second table gives the per-host token rate the pod variants need: the AOT MFU estimates of README's table (and
its 100 %-MFU step times for the 262K rows) turned into step times with the model FLOPs of ``train.flops``, i.e.
global batch tokens / step time / hosts (4 chips per host).

This module imports only the standard library and ``qwen35_jax.data.prepared.workers`` at top level: it is also the
child process, and grain's worker processes re-import it (without jax, as in training: see that module).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from qwen35_jax.data.prepared.workers import enter_data_worker

if TYPE_CHECKING:
    from qwen35_jax.data.prepared.manifest import Manifest

enter_data_worker(__name__)  # grain's spawned workers re-import this module: keep jax out of them, as training does

REPO = pathlib.Path(__file__).resolve().parents[1]
RANDOM_ID_LIMIT = 150_000  # synthetic ids are drawn from [0, this)
MIN_DOCUMENT, MAX_DOCUMENT = 200, 2_000  # tokens per synthetic document, end-of-text included
CHUNK_TOKENS = 1 << 22  # tokens generated at a time (16 MB of int32)
RESULT_PREFIX = "BENCH_DATA_RESULT "
MIB = 1 << 20
SAMPLE_SECONDS = 0.05
CHIPS_PER_HOST = 4  # v5p (and multi-host v6e) hosts
# Acceptance targets (the issue's).
TARGET_RSS_MIB = 512
TARGET_RSS_SPREAD = 0.10
TARGET_FIRST_BATCH_S = 5.0
TARGET_TOKENS_PER_S = 2e6


def parse_size(text: str) -> int:
    """``50M`` -> 50,000,000; K, M, B (or G) suffixes, or a plain integer."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMbBgG]?)\s*", text)
    if not match:
        raise ValueError(f"size {text!r} is not a token count such as 50M, 1B or 2000000")
    scale = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


# ---------------------------------------------------------------------------------------------------- datasets


def _description(tokens: int, validation_tokens: int, seed: int, shard_tokens: int) -> dict[str, Any]:
    """The manifest's ``inputs`` entry of a synthetic dataset: what it is made of, so a match can be reused."""
    return {"synthetic": "tools.bench_data", "tokens": tokens, "validation_tokens": validation_tokens, "seed": seed,
            "shard_tokens": shard_tokens, "ids": [0, RANDOM_ID_LIMIT], "document_tokens": [MIN_DOCUMENT, MAX_DOCUMENT]}


def _write_shard(path: str, tokens: int, seed: list[int], eos_id: int, vocab_size: int) -> tuple[int, str, Any]:
    """Write one shard of ``tokens`` tokens in chunks; (documents, sha256, token counts)."""
    import numpy as np

    from qwen35_jax.data.prepared.manifest import TOKEN_DTYPE

    rng = np.random.default_rng(seed)
    digest, counts, documents, remaining = hashlib.sha256(), np.zeros(vocab_size, np.int64), 0, tokens
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        while remaining:
            budget = min(CHUNK_TOKENS, remaining)
            ends = np.cumsum(rng.integers(MIN_DOCUMENT, MAX_DOCUMENT + 1, size=budget // MIN_DOCUMENT + 1))
            if budget == remaining:  # the shard's last chunk: its last document is cut to end with the shard
                ends = ends[: int(np.searchsorted(ends, budget, side="left")) + 1]
                ends[-1] = budget
            else:  # whole documents only (CHUNK_TOKENS > MAX_DOCUMENT, so at least one)
                ends = ends[: int(np.searchsorted(ends, budget, side="right"))]
            chunk = rng.integers(0, RANDOM_ID_LIMIT, size=int(ends[-1]), dtype=np.int32)
            chunk[ends - 1] = eos_id
            chunk = chunk.astype(TOKEN_DTYPE, copy=False)
            f.write(chunk.data)
            digest.update(chunk.data)
            counts += np.bincount(chunk, minlength=vocab_size)
            documents += ends.size
            remaining -= chunk.size
    os.replace(tmp, path)
    return documents, digest.hexdigest(), counts


def _shard_sizes(tokens: int, shard_tokens: int) -> list[int]:
    count = max(1, -(-tokens // shard_tokens))
    return [tokens // count + (i < tokens % count) for i in range(count)]


def write_synthetic_dataset(directory: str, tokens: int, *, seed: int = 0, shard_tokens: int = 100_000_000,
                            validation_tokens: int = 1_000_000) -> Manifest:
    """Write a prepared dataset of ``tokens`` random training tokens (and ``validation_tokens`` held out) at
    ``directory`` (see the module docstring); files of an earlier dataset there are replaced, ``manifest.json``
    last."""
    import numpy as np

    from qwen35_jax.data.prepared.documents import counts_bytes
    from qwen35_jax.data.prepared.manifest import (
        MANIFEST_FILE,
        SPLITS,
        Manifest,
        Shard,
        Split,
        counts_name,
        shard_name,
    )
    from qwen35_jax.data.tokenizer import get_tokenizer

    if tokens < 1 or validation_tokens < 1 or shard_tokens < 1:
        raise ValueError(f"tokens={tokens}, validation_tokens={validation_tokens} and shard_tokens={shard_tokens} "
                         "must all be >= 1")
    tokenizer = get_tokenizer()
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):  # an unfinished dataset first (no manifest), then only our own files go
        if name == MANIFEST_FILE:
            os.remove(os.path.join(directory, name))
    for name in os.listdir(directory):
        if name.endswith((".tokens", ".token_counts.npy")) or ".tokens.tmp" in name:
            os.remove(os.path.join(directory, name))
    splits = {}
    for split_index, (split, total) in enumerate(zip(SPLITS, (tokens, validation_tokens), strict=True)):
        sizes = _shard_sizes(total, shard_tokens)
        shards, counts = [], np.zeros(tokenizer.vocab_size, np.int64)
        for index, size in enumerate(sizes):
            name = shard_name(split, index, len(sizes))
            documents, sha256, shard_counts = _write_shard(os.path.join(directory, name), size,
                                                           [seed, split_index, index], tokenizer.eos_id,
                                                           tokenizer.vocab_size)
            counts += shard_counts
            shards.append(Shard(file=name, tokens=size, documents=documents, text_bytes=0, sha256=sha256))
        with open(os.path.join(directory, counts_name(split)), "wb") as f:
            f.write(counts_bytes(counts))
        splits[split] = Split(tuple(shards), counts_name(split))
    manifest = Manifest(
        tokenizer=tokenizer.fingerprint, eos_id=tokenizer.eos_id,
        inputs=(_description(tokens, validation_tokens, seed, shard_tokens),), text_field="",
        split_rule={"rule": "synthetic (tools.bench_data): random ids, no text",
                    "validation_fraction": validation_tokens / (tokens + validation_tokens), "seed": seed},
        splits=splits, skipped={})
    raw = manifest.to_json()
    tmp = os.path.join(directory, f"{MANIFEST_FILE}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(raw)
    os.replace(tmp, os.path.join(directory, MANIFEST_FILE))
    return Manifest.from_json(raw, os.path.join(directory, MANIFEST_FILE))


def existing_synthetic_dataset(directory: str, tokens: int, *, seed: int = 0, shard_tokens: int = 100_000_000,
                               validation_tokens: int = 1_000_000) -> Manifest | None:
    """The manifest of the synthetic dataset at ``directory`` if it was written with these arguments and its files
    have the manifest's sizes, else None."""
    from qwen35_jax.data.prepared.manifest import TOKEN_BYTES, read_manifest

    try:
        manifest = read_manifest(directory)
    except (FileNotFoundError, ValueError):
        return None
    if manifest.inputs != (_description(tokens, validation_tokens, seed, shard_tokens),):
        return None
    for split in manifest.splits.values():
        if not os.path.exists(os.path.join(directory, split.counts_file)):
            return None
        for shard in split.shards:
            path = os.path.join(directory, shard.file)
            if not os.path.exists(path) or os.path.getsize(path) != shard.tokens * TOKEN_BYTES:
                return None
    return manifest


# ---------------------------------------------------------------------------------------------------- measuring


def _status_kib(pid: int | str, field: str) -> int:
    """``field`` (VmRSS, VmHWM) of /proc/<pid>/status in KiB; 0 for a process that is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _pss_kib(pid: int) -> int:
    """Proportional set size of a process in KiB (shared pages divided among the processes that map them), from
    /proc/<pid>/smaps_rollup; 0 for a process that is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (via /proc/<pid>/task/<tid>/children)."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as f:
                    stack.extend(int(child) for child in f.read().split())
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass
    return found


def _role(pid: int, root: int) -> str:
    """What a process of the measured tree is: the parent, a grain worker, multiprocessing's resource tracker."""
    if pid == root:
        return "parent"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return "gone"
    if "resource_tracker" in command:
        return "resource tracker"
    if "multiprocessing" not in command:
        return command.split(" ")[0].rsplit("/", 1)[-1] or "other"
    return "worker with jax" if _maps_jaxlib(pid) else "worker"


def _maps_jaxlib(pid: int) -> bool:
    """Whether the process has jaxlib's extension mapped (a data worker should not: ``prepared.workers``)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any("jaxlib" in line for line in f)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False


class TreeRssSampler:
    """A thread that samples the summed VmRSS and the summed PSS of a process tree every ``interval`` s and keeps the
    largest of each. The RSS sum counts every shared page (the Python, numpy and jax libraries each spawned grain
    worker maps again) once per process; the PSS sum counts each physical page once: the memory the group uses."""

    def __init__(self, pid: int, interval: float = SAMPLE_SECONDS) -> None:
        self.pid, self.interval = pid, interval
        self.peak_kib, self.peak_pss_kib, self.peak_processes, self.samples = 0, 0, 0, 0
        self.peak_parts: list[tuple[str, int]] = []  # (role, KiB) of each process at the peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = process_tree(self.pid)
            sizes = [_status_kib(p, "VmRSS") for p in pids]
            self.peak_pss_kib = max(self.peak_pss_kib, sum(_pss_kib(p) for p in pids))
            if sum(sizes) > self.peak_kib:
                self.peak_kib = sum(sizes)
                self.peak_parts = [(_role(p, self.pid), kib) for p, kib in zip(pids, sizes, strict=True)]
            self.peak_processes = max(self.peak_processes, len(pids))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this fresh process (``--child``): imports, first batch, steady-state batches."""
    start = time.perf_counter()
    from qwen35_jax.data.prepared.dataset import PreparedDataset
    from qwen35_jax.data.prepared.stream import StreamSource, TrainStream

    imported = time.perf_counter()
    baseline_kib = _status_kib("self", "VmRSS")
    seq_len, batch = spec["seq_len"], spec["batch"]
    opened = time.perf_counter()
    dataset = PreparedDataset.open(spec["directory"])
    stream = TrainStream([StreamSource("synthetic", dataset.windows("train", seq_len))], seq_len=seq_len,
                         global_batch_size=batch, seed=spec["seed"])
    iterator = stream.iterator(workers=spec["workers"])
    first = next(iterator)
    first_batch = time.perf_counter() - opened
    if first["input_ids"].shape != (batch, seq_len):
        raise AssertionError(f"batch shape {first['input_ids'].shape}, expected {(batch, seq_len)}")
    steady_start = time.perf_counter()
    for _ in range(spec["batches"]):
        next(iterator)
    steady = time.perf_counter() - steady_start
    iterator.close()
    return {"import_s": imported - start, "first_batch_s": first_batch,
            "tokens_per_s": spec["batches"] * batch * seq_len / steady,
            "baseline_mib": baseline_kib / 1024, "parent_hwm_mib": _status_kib("self", "VmHWM") / 1024,
            "jax_imported": "jax" in sys.modules,
            "heavy_modules": sorted(m for m in ("jax", "PIL", "tokenizers", "tensorflow", "torch", "tensorstore")
                                    if m in sys.modules)}


def measure(directory: str, *, seq_len: int, batch: int, batches: int, workers: int, seed: int = 0,
            timeout: float = 600.0) -> dict[str, Any]:
    """One ``_child`` run in a fresh process while this one samples its process tree's RSS."""
    spec = {"directory": directory, "seq_len": seq_len, "batch": batch, "batches": batches, "workers": workers,
            "seed": seed}
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")  # grain imports jax: keep it off any accelerator
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    process = subprocess.Popen([sys.executable, "-m", "tools.bench_data", "--child", json.dumps(spec)], cwd=REPO,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreeRssSampler(process.pid) as sampler:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            raise RuntimeError(f"the measurement of {directory} with {workers} workers ran over {timeout:.0f} s; "
                               f"stderr:\n{stderr[-4000:]}") from None
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if process.returncode or not lines:
        raise RuntimeError(f"the measurement of {directory} with {workers} workers failed (exit "
                           f"{process.returncode}); stderr:\n{stderr[-4000:]}")
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    result.update(peak_rss_mib=sampler.peak_kib / 1024, peak_pss_mib=sampler.peak_pss_kib / 1024,
                  processes=sampler.peak_processes, samples=sampler.samples,
                  peak_parts=[(role, kib / 1024) for role, kib in sampler.peak_parts])
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the repeats' times and rates; the largest peak RSS and VmHWM (memory is a bound, not a rate)."""
    summary = {key: statistics.median(r[key] for r in runs)
               for key in ("import_s", "first_batch_s", "tokens_per_s", "baseline_mib")}
    summary.update({key: max(r[key] for r in runs)
                    for key in ("peak_rss_mib", "peak_pss_mib", "parent_hwm_mib", "processes")})
    worst = max(runs, key=lambda r: r["peak_rss_mib"])
    summary.update(peak_parts=worst["peak_parts"], repeats=len(runs), jax_imported=any(r["jax_imported"] for r in runs),
                   heavy_modules=sorted({m for r in runs for m in r["heavy_modules"]}))
    return summary


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ("| size | workers | first batch (s) | tokens/s | peak RSS parent+workers (MiB) | peak PSS "
              "parent+workers (MiB) | processes | "
              "parent VmHWM (MiB) | parent after imports (MiB) | imports (s) |")
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['workers']} | {r['first_batch_s']:.2f} | {r['tokens_per_s'] / 1e6:.2f} M | "
                     f"{r['peak_rss_mib']:.0f} | {r['peak_pss_mib']:.0f} | {r['processes']} | "
                     f"{r['parent_hwm_mib']:.0f} | "
                     f"{r['baseline_mib']:.0f} | {r['import_s']:.2f} |")
    return "\n".join(lines)


def target_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The comparison between sizes and the acceptance targets, one line each."""
    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    out = []
    sizes = sorted({(r["tokens"], r["size"]) for r in rows})
    small, large = sizes[0], sizes[-1]
    if small != large:
        parts = []
        for workers in sorted({r["workers"] for r in rows}):
            a = next((r for r in rows if r["tokens"] == small[0] and r["workers"] == workers), None)
            b = next((r for r in rows if r["tokens"] == large[0] and r["workers"] == workers), None)
            if a and b:
                ratio = b["peak_rss_mib"] / a["peak_rss_mib"]
                parts.append(f"workers {workers}: {ratio:.3f} ({b['peak_rss_mib']:.0f} vs {a['peak_rss_mib']:.0f} "
                             f"MiB) {verdict(abs(ratio - 1) <= TARGET_RSS_SPREAD)}")
        out.append(f"peak RSS {large[1]} / {small[1]} (target within {TARGET_RSS_SPREAD:.0%}): " + "; ".join(parts))
    else:
        out.append(f"peak RSS between sizes: only {small[1]} measured (run --sizes 50M,1B for the ratio)")
    worst = max(rows, key=lambda r: r["peak_rss_mib"])
    out.append(f"peak RSS sum <= {TARGET_RSS_MIB} MiB: largest {worst['peak_rss_mib']:.0f} MiB ({worst['size']}, "
               f"{worst['workers']} workers) {verdict(worst['peak_rss_mib'] <= TARGET_RSS_MIB)}")
    worst = max(rows, key=lambda r: r["peak_pss_mib"])
    out.append(f"peak PSS sum (each shared page once) <= {TARGET_RSS_MIB} MiB: largest {worst['peak_pss_mib']:.0f} "
               f"MiB ({worst['size']}, {worst['workers']} workers) "
               f"{verdict(worst['peak_pss_mib'] <= TARGET_RSS_MIB)}")
    big = [r for r in rows if r["tokens"] >= 10**9]
    if big:
        slowest = max(big, key=lambda r: r["first_batch_s"])
        out.append(f"first batch <= {TARGET_FIRST_BATCH_S:.0f} s at >= 1B tokens: slowest "
                   f"{slowest['first_batch_s']:.2f} s ({slowest['size']}, {slowest['workers']} workers) "
                   f"{verdict(slowest['first_batch_s'] <= TARGET_FIRST_BATCH_S)}")
    else:
        out.append(f"first batch <= {TARGET_FIRST_BATCH_S:.0f} s at 1B tokens: not measured (run --sizes 50M,1B)")
    two = [r for r in rows if r["workers"] == 2]
    if two:
        low = min(two, key=lambda r: r["tokens_per_s"])
        out.append(f">= {TARGET_TOKENS_PER_S / 1e6:.0f} M tokens/s per process with 2 workers: lowest "
                   f"{low['tokens_per_s'] / 1e6:.2f} M ({low['size']}) "
                   f"{verdict(low['tokens_per_s'] >= TARGET_TOKENS_PER_S)}")
    else:
        out.append(f">= {TARGET_TOKENS_PER_S / 1e6:.0f} M tokens/s with 2 workers: not measured (--workers 0,2)")
    return out


# ---------------------------------------------------------------------------------------------------- demand


@dataclasses.dataclass(frozen=True)
class ReadmeRow:
    variant: str  # e.g. qwen35_397b_a17b:v5p-64
    mfu: float | None  # the AOT MFU estimate, as a fraction
    peak_step_s: float | None  # README's "step at peak" (model FLOPs at 100 % MFU), where given
    line: int  # 1-based line of README.md


def readme_aot_rows(text: str) -> list[ReadmeRow]:
    """The release variants' rows of README's AOT tables (those with a ``config`` column)."""
    rows, header = [], None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == "config":
            header = cells
            continue
        match = re.fullmatch(r"`(qwen3[\w]*:[\w.-]+)`", cells[0]) if header else None
        if not match or len(cells) != len(header):
            continue
        by_name = dict(zip(header, cells, strict=True))
        mfu = next((by_name[h] for h in header if h.startswith("MFU")), None)
        peak = next((by_name[h] for h in header if h.startswith("step at peak")), None)
        mfu_value = re.match(r"([\d.]+)\s*%", mfu or "")
        peak_value = re.match(r"([\d.]+)\s*s", peak or "")
        rows.append(ReadmeRow(match.group(1), float(mfu_value.group(1)) / 100 if mfu_value else None,
                              float(peak_value.group(1)) if peak_value else None, number))
    return rows


def demand_rows(readme: pathlib.Path = REPO / "README.md") -> list[dict[str, Any]]:
    """Per-host token rate of each release pod variant in README's AOT tables (see the module docstring)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from qwen35_jax.train.config_schema import validate_config
    from qwen35_jax.train.flops import accelerator_for_topology, training_flops_per_token
    from qwen35_jax.train.recipes import load_config_file

    out = []
    for row in readme_aot_rows(readme.read_text(encoding="utf-8")):
        name, variant = row.variant.split(":")
        config_file = f"configs/{name}.py"
        config = load_config_file(str(REPO / config_file) + ":" + variant)
        model = validate_config(config)
        topology, batch, seq = config.hardware.topology, config.data.batch_size, config.data.seq_len
        chips = 1
        for size in topology.split(":")[1].split("x"):
            chips *= int(size)
        mtp = config.train.mtp_depth if config.train.get("mtp_loss_weight", 0) > 0 else 0
        step_flops = training_flops_per_token(model, seq, mtp) * batch * seq
        peak_step = step_flops / (chips * accelerator_for_topology(topology).peak_flops)
        hosts = chips // CHIPS_PER_HOST
        tokens = batch * seq
        out.append({"variant": row.variant, "topology": topology, "chips": chips, "hosts": hosts,
                    "batch": f"{batch} x {seq:,}", "tokens_per_host_step": tokens // hosts,
                    "mfu": row.mfu, "step_s": peak_step / row.mfu if row.mfu else None, "peak_step_s": peak_step,
                    "readme_peak_step_s": row.peak_step_s,
                    "tokens_per_host_s": tokens / (peak_step / row.mfu) / hosts if row.mfu else None,
                    "tokens_per_host_s_at_peak": tokens / peak_step / hosts,
                    "source": f"README.md:{row.line} (MFU / step at peak), {config_file}:{variant} (batch, "
                              "topology), train.flops (model FLOPs)"})
    return out


def format_demand(rows: list[dict[str, Any]]) -> str:
    header = ("| variant | topology (chips, hosts) | global batch | tokens/host/step | MFU (README, est.) | "
              "step (est.) | tokens/s/host (est.) | step at 100 % MFU | tokens/s/host at 100 % MFU | source |")
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] else "n/a"
        step = f"{r['step_s']:.2f} s" if r["step_s"] else "n/a"
        rate = f"{r['tokens_per_host_s']:,.0f}" if r["tokens_per_host_s"] else "n/a"
        peak = f"{r['peak_step_s']:.2f} s"
        if r["readme_peak_step_s"] is not None:
            peak += f" (README {r['readme_peak_step_s']:.2f} s)"
        lines.append(f"| {r['variant']} | {r['topology']} ({r['chips']}, {r['hosts']}) | {r['batch']} | "
                     f"{r['tokens_per_host_step']:,} | {mfu} | {step} | {rate} | {peak} | "
                     f"{r['tokens_per_host_s_at_peak']:,.0f} | {r['source']} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50M", help="training tokens per dataset, comma-separated (50M,1B)")
    parser.add_argument("--workdir", default="/tmp/bench_data", help="where the synthetic datasets live")
    parser.add_argument("--seq_len", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=8, help="global batch (rows), all read by one process")
    parser.add_argument("--batches", type=int, default=200, help="steady-state batches after the first")
    parser.add_argument("--workers", default="0,2", help="grain worker processes, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per (size, workers)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard_tokens", type=int, default=100_000_000)
    parser.add_argument("--no_demand", action="store_true", help="skip the pod variants' token-rate table")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # jax comes with the imports here; keep it off any accelerator
    if args.child:
        print(RESULT_PREFIX + json.dumps(_child(json.loads(args.child))), flush=True)
        return 0
    sizes = [(label.strip(), parse_size(label)) for label in args.sizes.split(",") if label.strip()]
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    load = os.getloadavg()[0]
    print(f"bench_data: seq_len {args.seq_len}, global batch {args.batch} (one process reads all rows), "
          f"{args.batches} steady batches, {args.repeats} fresh processes per row; load average {load:.2f}",
          flush=True)
    rows = []
    for label, tokens in sizes:
        directory = os.path.join(args.workdir, f"synthetic-{label}")
        start = time.perf_counter()
        options = {"seed": args.seed, "shard_tokens": args.shard_tokens}
        manifest = existing_synthetic_dataset(directory, tokens, **options)
        if manifest is not None:
            what = "reused"
        else:
            manifest = write_synthetic_dataset(directory, tokens, **options)
            what = "written"
        train = manifest.splits["train"]
        print(f"setup {label}: {what} {directory} ({train.tokens:,} training tokens, {len(train.shards)} shards, "
              f"{train.documents:,} documents) in {time.perf_counter() - start:.1f} s", flush=True)
        for count in workers:
            runs = [measure(directory, seq_len=args.seq_len, batch=args.batch, batches=args.batches, workers=count,
                            seed=args.seed) for _ in range(args.repeats)]
            rows.append({"size": label, "tokens": tokens, "workers": count, **summarize(runs)})
    print()
    print(format_table(rows))
    for r in rows:
        parts = " + ".join(f"{mib:.0f} ({role})" for role, mib in r["peak_parts"])
        print(f"  {r['size']}, {r['workers']} workers, at the peak (MiB): {parts}")
    for line in target_lines(rows):
        print(line)
    print(f"load average after the measurements: {os.getloadavg()[0]:.2f} (other processes share the cores)")
    modules = sorted({m for r in rows for m in r["heavy_modules"]})
    print(f"imports of the measured process (qwen35_jax.data.prepared.dataset/stream): jax "
          f"{'imported' if any(r['jax_imported'] for r in rows) else 'not imported'}; heavy modules loaded: "
          f"{', '.join(modules) or 'none'}")
    if not args.no_demand:
        print()
        print("Per-host token rate the pod variants' AOT estimates imply (global batch tokens / step / hosts, "
              f"{CHIPS_PER_HOST} chips per host; step = model FLOPs / (chips x peak x MFU)):")
        demand = demand_rows()
        if demand:
            print(format_demand(demand))
            fastest = max(r["tokens_per_host_s_at_peak"] for r in demand)
            measured = min(r["tokens_per_s"] for r in rows)
            print(f"the slowest measured input rate ({measured / 1e6:.2f} M tokens/s) is "
                  f"{measured / fastest:,.1f}x the largest per-host demand even at 100 % MFU ({fastest:,.0f} tokens/s)")
        else:
            print("README.md has no AOT table rows with release variants: no step-time estimate to turn into a rate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
