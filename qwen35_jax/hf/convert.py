"""Streaming conversion between transformers safetensors checkpoints and our orbax parameter checkpoint.

    import_hf("hf_dir", "ckpt", dtype="bfloat16")        # HF → ours (hf/orbax_io.py layout)
    export_hf("ckpt", "hf_dir2", per_expert=False)       # ours → HF (sharded safetensors + index + config.json)

Both directions move one rule at a time (``hf/keys.py``: one HF tensor, or one layer's fused expert pair, and the
parameters of ours it maps to) and write slices, so peak host memory is a small multiple of the largest tensor.
Everything is validated from file headers / array metadata first (a dry run of every rule on zero-strided dummy
arrays), so a mismatched checkpoint fails with one message listing the offending keys before anything is written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from qwen35_jax.config import ModelConfig
from qwen35_jax.hf.config_io import TOKEN_FIELDS, check_hf_compatible, config_from_hf, config_to_hf
from qwen35_jax.hf.keys import (
    PER_EXPERT,
    checkpoint_rules,
    fuse_expert_group,
    group_per_expert_keys,
    split_expert_group,
)
from qwen35_jax.hf.loader import VL_TEXT_PREFIX, config_for_checkpoint, convert_tensors
from qwen35_jax.hf.orbax_io import (
    ParamReader,
    ParamWriter,
    StateReader,
    check_output_dir,
    open_params,
    replace_dir,
)
from qwen35_jax.hf.param_check import abstract_params, check_against_model, flat_paths
from qwen35_jax.hf.safetensors_io import DTYPES, CheckpointError, checkpoint_files, load_tensor, read_header

if TYPE_CHECKING:  # imported where used: qwen35_jax.data costs ~0.3 s at import, and only exports need it
    from qwen35_jax.data.vocab import CompactVocab

log = logging.getLogger(__name__)

DTYPE_ALIASES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32",
                 "f32": "float32", "auto": None}
SAFETENSORS_DTYPES = {np.dtype(v).name if k != "BF16" else "bfloat16": k for k, v in DTYPES.items()}
MAX_SHARD_BYTES = 5 << 30


def dummy(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A read-only array of ``shape`` that occupies one element of memory (for dry runs of the rules)."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), tuple(shape), (0,) * len(shape), writeable=False)


def canonical(name: str) -> str:
    return "model." + name[len(VL_TEXT_PREFIX):] if name.startswith(VL_TEXT_PREFIX) else name


class HFSource(Mapping):
    """A transformers checkpoint directory as a lazy mapping: canonical, fused-expert names → arrays.

    ``source[name]`` reads that tensor (its byte range only); a fused expert name backed by per-expert tensors
    stacks that layer's experts. ``source.dry_run()`` gives the same mapping with dummy arrays (no reads).
    """

    def __init__(self, directory: str | os.PathLike, *, dry: bool = False):
        self.directory = os.fspath(directory)
        self.entries: dict[str, tuple[str, dict, int]] = {}
        for path in checkpoint_files(self.directory):
            header, start = read_header(path)
            for name, entry in header.items():
                if canonical(name) in self.entries:
                    raise CheckpointError(f"{self.directory}: tensor {name!r} is stored twice ("
                                          f"{self.entries[canonical(name)][0]} and {path})")
                self.entries[canonical(name)] = (path, entry, start)
        plain, groups = group_per_expert_keys(self.entries)
        self.groups = groups
        self.names = set(plain) | {f"{p}{s}" for p in groups for s in ("gate_up_proj", "down_proj")}
        self.dry = dry

    def dry_run(self) -> HFSource:
        other = object.__new__(HFSource)
        other.__dict__.update(self.__dict__, dry=True)
        return other

    def _raw(self, name: str) -> np.ndarray:
        path, entry, start = self.entries[name]
        if self.dry:
            return dummy(tuple(entry["shape"]), np.dtype(DTYPES[entry["dtype"]]))
        return load_tensor(path, entry, start)

    def __getitem__(self, name: str) -> np.ndarray:
        match = name.endswith(("gate_up_proj", "down_proj")) and name.rsplit(".", 1)[0] + "." in self.groups
        if not match:
            if name not in self.names:
                raise KeyError(name)
            return self._raw(name)
        prefix, which = name.rsplit(".", 1)[0] + ".", name.rsplit(".", 1)[1]
        per = self.groups[prefix]
        if self.dry:
            first = {proj: self.entries[names[0]][1] for proj, names in per.items()}
            dt = np.dtype(DTYPES[first["gate_proj"]["dtype"]])
            n = len(per["gate_proj"])
            if which == "down_proj":
                return dummy((n, *first["down_proj"]["shape"]), dt)
            gate, up = first["gate_proj"]["shape"], first["up_proj"]["shape"]
            return dummy((n, gate[0] + up[0], *gate[1:]), dt)
        if which == "down_proj":
            return np.stack([self._raw(n) for n in per["down_proj"]])
        # One layer's experts at a time: the "expert block" bounds the memory of a per-expert import.
        gate_up, _ = fuse_expert_group({proj: [self._raw(n) for n in per[proj]] for proj in ("gate_proj", "up_proj")}
                                       | {"down_proj": []})
        return gate_up

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.names))

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def source_dtypes(self) -> set[str]:
        return set(self.dtype_names().values())

    def dtype_names(self) -> dict[str, str]:
        """Stored dtype of every (canonical, fused) tensor name, e.g. ``"bfloat16"``."""
        def name(entry: dict) -> str:
            return "bfloat16" if entry["dtype"] == "BF16" else np.dtype(DTYPES[entry["dtype"]]).name

        out = {n: name(self.entries[n][1]) for n in self.names if n in self.entries}
        for prefix, per in self.groups.items():
            out[f"{prefix}gate_up_proj"] = name(self.entries[per["gate_proj"][0]][1])
            out[f"{prefix}down_proj"] = name(self.entries[per["down_proj"][0]][1])
        return out


def _stacked_paths(config: ModelConfig) -> set[tuple]:
    return {path for r in checkpoint_rules(config) if r.block is not None for path in r.rule.ours}


def resolve_dtype(dtype: str | None) -> str | None:
    if dtype not in DTYPE_ALIASES:
        raise ValueError(f"dtype={dtype!r} is invalid: choose one of {sorted(k for k in DTYPE_ALIASES)}")
    return DTYPE_ALIASES[dtype]


def import_hf(hf_dir: str | os.PathLike, out: str | os.PathLike, *, dtype: str | None = "auto",
              overwrite: bool = False, **config_overrides: Any) -> ModelConfig:
    """Convert a transformers checkpoint directory into our orbax checkpoint at ``out``; returns its ModelConfig.

    ``dtype``: storage dtype of the floating parameters ("auto" = the checkpoint's own when it has one float dtype,
    else float32); parameters the model always keeps in fp32 (``A_log``, ``dt_bias``, the GDN norm) stay fp32.
    """
    hf_dir, out = os.fspath(hf_dir), os.fspath(out)
    check_output_dir(out, overwrite)
    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        raise CheckpointError(f"{hf_dir}: no config.json (expected a transformers checkpoint directory)")
    source = HFSource(hf_dir)
    storage = resolve_dtype(dtype)
    if storage is None:
        floats = source.source_dtypes() & {"bfloat16", "float32", "float16"}
        storage = floats.pop() if len(floats) == 1 and floats <= {"bfloat16", "float32"} else "float32"
    with open(os.path.join(hf_dir, "config.json")) as f:
        hf_config = json.load(f)
    config = config_from_hf(hf_config, **config_overrides)
    config = config_for_checkpoint(config, set(source)).replace(param_dtype=storage)
    abstract = abstract_params(config)
    convert_tensors(config, source.dry_run(), abstract, lambda *a: None)  # raises listing every problem
    leaves = flat_paths(abstract)
    specs = {path: (tuple(v.shape), np.dtype(v.dtype).name) for path, v in leaves.items()}
    with ParamWriter(out, config, specs, stacked=_stacked_paths(config), overwrite=overwrite,
                     hf_config=config_to_hf(config), metadata={"source": os.path.abspath(hf_dir),
                                                         "hf_dtypes": source.dtype_names()}) as writer:
        def emit(path: tuple, block: int | None, value: np.ndarray) -> None:
            writer.write(path, value, () if block is None else (block,))

        convert_tensors(config, source, abstract, emit)
    return config


# ------------------------------------------------------------------------------------------------ export


class SafetensorsShardWriter:
    """Write safetensors shards one tensor at a time, without knowing shapes in advance.

    Each shard reserves header room for every tensor still to come (a bound of ~200 bytes a name), streams tensor
    data after it, and on close writes the JSON header padded with spaces (allowed by the safetensors format).
    """

    def __init__(self, directory: str, names: list[str], max_shard_bytes: int = MAX_SHARD_BYTES):
        self.directory, self.max_shard_bytes = directory, max_shard_bytes
        self.pending = list(names)
        self.shards: list[tuple[str, list[str]]] = []
        self._file = None

    @staticmethod
    def _bound(name: str) -> int:
        return len(json.dumps(name)) + 200

    def _open(self) -> None:
        index = len(self.shards)
        path = os.path.join(self.directory, f"shard-{index:05d}.tmp")
        self._reserved = -(-sum(self._bound(n) for n in self.pending) // 8) * 8
        self._file = open(path, "wb")  # noqa: SIM115 (stays open across add() calls; closed in _close_shard)
        self._file.seek(8 + self._reserved)
        self._header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        self._offset = 0
        self.shards.append((path, []))

    def add(self, name: str, array: np.ndarray) -> None:
        if name not in self.pending:
            raise ValueError(f"tensor {name!r} was not announced (or written twice)")
        if self._file is None:
            self._open()
        kind = "bfloat16" if array.dtype.name == "bfloat16" else array.dtype.name
        nbytes = array.nbytes
        rows = max(1, (64 << 20) // max(1, nbytes // max(1, array.shape[0]))) if array.ndim else 1
        for start in range(0, array.shape[0] if array.ndim else 1, rows):  # ≤ 64 MB contiguous copies at a time
            piece = np.ascontiguousarray(array[start:start + rows] if array.ndim else array)
            self._file.write(memoryview(piece.reshape(-1).view(np.uint8)))
        self._header[name] = {"dtype": SAFETENSORS_DTYPES[kind], "shape": list(array.shape),
                              "data_offsets": [self._offset, self._offset + nbytes]}
        self._offset += nbytes
        self.pending.remove(name)
        self.shards[-1][1].append(name)
        if self._offset >= self.max_shard_bytes:
            self._close_shard()

    def _close_shard(self) -> None:
        header = json.dumps(self._header, separators=(",", ":")).encode()
        if len(header) > self._reserved:
            raise AssertionError(f"safetensors header of {len(header)} bytes exceeds its reservation")
        self._file.seek(0)
        self._file.write(len(header.ljust(self._reserved)).to_bytes(8, "little"))
        self._file.write(header.ljust(self._reserved, b" "))
        self._file.close()
        self._file = None

    def close(self) -> list[str]:
        """Finish the last shard, name them ``model-0000i-of-0000N.safetensors``, write the index."""
        if self.pending:
            raise CheckpointError(f"export incomplete, tensors not written: {self.pending[:20]}")
        if self._file is not None:
            self._close_shard()
        total = len(self.shards)
        weight_map, files, size = {}, [], 0
        for i, (tmp, names) in enumerate(self.shards):
            final = f"model-{i + 1:05d}-of-{total:05d}.safetensors"
            os.rename(tmp, os.path.join(self.directory, final))
            size += os.path.getsize(os.path.join(self.directory, final))
            weight_map.update(dict.fromkeys(names, final))
            files.append(final)
        with open(os.path.join(self.directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": size}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
        return files


def export_hf(ckpt: str | os.PathLike, out: str | os.PathLike, *, per_expert: bool = False,
              dtype: str | None = "auto", overwrite: bool = False, max_shard_bytes: int = MAX_SHARD_BYTES,
              keep_compact_vocab: bool = False) -> list[str]:
    """Write our checkpoint ``ckpt`` (from ``import_hf``, or a training workdir / step directory) as a transformers
    directory ``out`` (safetensors shards + index + config.json).

    A run trained on a compact vocabulary (its workdir holds ``compact_vocab.json``) is exported in the real Qwen
    vocabulary of ``MODEL_VOCAB_SIZE`` ids: the embedding (and untied ``lm_head``) row of compact id ``c >= 1`` goes
    to row ``real_ids[c - 1]``, the ``<unk>`` row is dropped, and the rows of ids the run never saw are zero. The
    export so gives the run's logits on every id it knows, while those unseen ids get logit exactly 0 (and a zero
    embedding) and share the softmax; for a model meaningful over all ids, train with
    ``--config.data.compact_vocab=False``. ``keep_compact_vocab`` writes the compact rows as they are (``vocab_size``
    = the compact size) and copies ``compact_vocab.json`` next to config.json. A compact run whose mapping file is
    missing is refused, and the mapping is validated (count, id range) before anything is written.

    Experts are written in the Hub's fused layout (``experts.gate_up_proj`` / ``down_proj``), or per expert with
    ``per_expert``. ``dtype`` casts floating tensors; "auto" restores each tensor's dtype in the imported checkpoint
    (recorded at import: e.g. bf16 ``A_log`` that we keep in fp32) and keeps the stored dtype otherwise. Returns
    the shard names.
    """
    ckpt, out = os.fspath(ckpt), os.path.abspath(os.fspath(out))
    check_output_dir(out, overwrite)
    cast = resolve_dtype(dtype)
    reader = open_params(ckpt)
    config = reader.config
    check_hf_compatible(config)  # an ablation transformers cannot express (numerics §10): refused before any write
    hf_dtypes = reader.metadata.get("hf_dtypes") or {}
    check_against_model(reader, config)
    vocab = run_vocabulary(reader)
    if keep_compact_vocab and vocab is None:
        raise CheckpointError(f"{reader.path}: keep_compact_vocab (--keep_compact_vocab) was given, but this is not "
                              "a run trained on a compact vocabulary (no compact_vocab.json); export without it")
    expand = vocab is not None and not keep_compact_vocab
    out_config = real_vocab_config(config, vocab) if expand else config
    text_prefix = VL_TEXT_PREFIX if config.vision is not None else "model."
    rules = checkpoint_rules(config, text_prefix=text_prefix)
    vocab_rows = {f"{text_prefix}embed_tokens.weight", "lm_head.weight"} if expand else set()
    names = []
    for stacked in rules:
        for name in stacked.rule.hf:
            if per_expert and name.endswith("experts.gate_up_proj"):
                prefix = name[: -len("gate_up_proj")]
                names += [f"{prefix}{e}.{p}.weight" for e in range(config.num_experts)
                          for p in ("gate_proj", "up_proj", "down_proj")]
            elif not (per_expert and name.endswith("experts.down_proj")):
                names.append(name)
    staging = f"{out}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        writer = SafetensorsShardWriter(staging, names, max_shard_bytes)
        for stacked in rules:
            index = () if stacked.block is None else (stacked.block,)
            arrays = stacked.rule.to_hf([reader.read(path, index) for path in stacked.rule.ours])
            tensors = dict(zip(stacked.rule.hf, arrays, strict=True))
            if per_expert and any(n.endswith("experts.gate_up_proj") for n in tensors):
                gate_up = next(n for n in tensors if n.endswith("gate_up_proj"))
                prefix = gate_up[: -len("gate_up_proj")]
                tensors = split_expert_group(prefix, tensors[gate_up], tensors[f"{prefix}down_proj"])
            for name, array in tensors.items():
                target = cast or hf_dtypes.get(canonical(PER_EXPERT.sub(_fused_name, name)))
                if target is None and not stacked.rule.ours:  # transformers-only constants (keys.absent_shared_expert)
                    target = _main_dtype(reader)
                if target is not None and (array.dtype.kind == "f" or array.dtype.name == "bfloat16"):
                    array = array.astype(_np_dtype(target), copy=False)
                writer.add(name, full_vocab_rows(array, vocab) if name in vocab_rows else array)
        files = writer.close()
        with open(os.path.join(staging, "config.json"), "w") as f:
            json.dump(config_to_hf(out_config) | {"dtype": cast or _main_dtype(reader)}, f, indent=2)
        if vocab is not None and keep_compact_vocab:
            shutil.copyfile(reader.vocab_file, os.path.join(staging, os.path.basename(reader.vocab_file)))
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if expand:
        log.warning("%s was trained on a compact vocabulary of %d ids: exported into the full %d-id vocabulary. "
                    "The %d ids the run never saw have zero embeddings and logit exactly 0, so the softmax over all "
                    "ids includes them; train with --config.data.compact_vocab=False for a model meaningful over "
                    "every id (or export with --keep_compact_vocab)", ckpt, vocab.size - 1,
                    out_config.vocab_size, out_config.vocab_size - vocab.size + 1)
    return files


def run_vocabulary(reader: ParamReader | StateReader) -> CompactVocab | None:
    """The validated ``CompactVocab`` of a training run trained on one, else None.

    Raises ``CheckpointError`` for a compact run (fewer embedding rows than the Qwen vocabulary) whose mapping file
    is missing, and for a mapping that does not fit the checkpoint (real ids past the vocabulary, wrong count).
    Runs on real ids (their metadata says so) and converted checkpoints (``import_hf``) keep their vocabulary.
    """
    from qwen35_jax.data.tokenizer import MODEL_VOCAB_SIZE, get_tokenizer
    from qwen35_jax.data.vocab import CompactVocab

    if not isinstance(reader, StateReader):
        return None
    rows = reader.config.vocab_size
    if reader.vocab_file is None:  # real ids: training checks rows >= the tokenizer's ids; a checkpoint made otherwise
        if rows < MODEL_VOCAB_SIZE and rows < get_tokenizer().vocab_size:
            raise CheckpointError(f"{reader.path}: a run on real Qwen ids whose embedding has only {rows} rows, "
                                  f"fewer than the {get_tokenizer().vocab_size} ids the Qwen tokenizer produces; "
                                  "train with --config.data.compact_vocab=True or a full vocabulary")
        return None
    if not os.path.exists(reader.vocab_file):
        if rows < MODEL_VOCAB_SIZE:
            name = os.path.basename(reader.vocab_file)
            raise CheckpointError(
                f"{reader.path}: the embedding has {rows} rows, fewer than the {MODEL_VOCAB_SIZE} ids of the Qwen "
                f"vocabulary, and there is no {name} mapping them to real ids (expected at {reader.vocab_file}, in "
                f"the run's workdir). Put the run's {name} back there (export the workdir, not a copied step "
                "directory), or train with --config.data.compact_vocab=False")
        return None
    try:
        vocab = CompactVocab.load(reader.vocab_file)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{reader.vocab_file}: unreadable compact vocabulary ({e})") from e
    problems = []
    if vocab.size != rows:
        problems.append(f"it maps {vocab.size - 1} ids but the checkpoint's embedding has {rows} rows (<unk> + "
                        f"{rows - 1} ids)")
    if int(vocab.real_ids.max()) >= MODEL_VOCAB_SIZE:
        problems.append(f"real id {int(vocab.real_ids.max())} is outside the Qwen vocabulary [0, {MODEL_VOCAB_SIZE})")
    if problems:
        raise CheckpointError(f"{reader.vocab_file} does not belong to the checkpoint {reader.path}: "
                              f"{'; '.join(problems)}. Export the workdir the checkpoint was trained in")
    return vocab


TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", *TOKEN_FIELDS)


def real_vocab_config(config: ModelConfig, vocab: CompactVocab) -> ModelConfig:
    """``config`` in the real vocabulary: ``vocab_size = MODEL_VOCAB_SIZE`` and special-token ids mapped to real ids.

    Caption runs store their special ids (vision tokens, eos) as compact ids: an id in ``[1, compact size)`` is
    mapped. Larger ids (the ModelConfig defaults, the real ids a text run's config names: every Qwen special id is
    >= 248,044) are real already, and so is 0 (a run never gives a special token the ``<unk>`` id).
    """
    from qwen35_jax.data.tokenizer import MODEL_VOCAB_SIZE

    def real(token: int) -> int:
        return int(vocab.real_ids[token - 1]) if 0 < token < vocab.size else token

    changes: dict[str, Any] = {"vocab_size": MODEL_VOCAB_SIZE}
    for name in TOKEN_ID_FIELDS:
        value = getattr(config, name)
        if isinstance(value, int):
            changes[name] = real(value)
        elif value is not None:
            changes[name] = tuple(real(t) for t in value)
    return config.replace(**changes)


def full_vocab_rows(array: np.ndarray, vocab: CompactVocab) -> np.ndarray:
    """Compact-vocabulary rows ``[V', ...]`` scattered into the real vocabulary ``[MODEL_VOCAB_SIZE, ...]``: row
    ``c >= 1`` to row ``real_ids[c - 1]``; the ``<unk>`` row is dropped, unseen ids get zero rows."""
    from qwen35_jax.data.tokenizer import MODEL_VOCAB_SIZE

    full = np.zeros((MODEL_VOCAB_SIZE, *array.shape[1:]), array.dtype)
    full[vocab.real_ids] = array[1:]
    return full


def _fused_name(match: re.Match) -> str:
    return match["prefix"] + ("down_proj" if match["proj"] == "down_proj" else "gate_up_proj")


def _np_dtype(name: str) -> np.dtype:
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _main_dtype(reader: ParamReader | StateReader) -> str:
    return "bfloat16" if reader.dtype(("embed_tokens",)).name == "bfloat16" else "float32"
