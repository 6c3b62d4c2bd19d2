"""Our parameter checkpoint: an orbax v1 pytree checkpoint written and read one slice at a time.

Layout (what ``ocp.load(path)`` reads back as the nested parameter dict)::

    CKPT/  orbax.checkpoint  _CHECKPOINT_METADATA  commit_success.txt   (orbax; custom_metadata holds the ModelConfig)
           state/_METADATA                                              (orbax tree metadata, np.ndarray leaves)
           state/<dotted nnx path>/zarr.json + chunks                   (one zarr3 array per parameter)
           config.json                                                  (the transformers config, for humans / export;
                                                                         absent when transformers cannot express it)

Orbax writes the tree metadata from a skeleton of 1-element arrays; every parameter array is then (re)created with
tensorstore at its full shape with chunks of at most ``CHUNK_BYTES`` that never straddle a stacked block, so a
converter writes ``[block, ...]`` slices without ever holding a whole stacked parameter, and a sharded loader reads
only the slices a host needs. Usage::

    with ParamWriter(path, config, {("embed_tokens",): ((V, H), "bfloat16"), ...}, stacked={...}) as w:
        w.write(("embed_tokens",), array)                # or w.write(path, block_array, index=(b,))
    reader = ParamReader(path); reader.config; reader.read(("embed_tokens",), index=(slice(0, 8),))
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from collections.abc import Iterable, Mapping
from typing import Any

import ml_dtypes
import numpy as np
import tensorstore as ts

from qwen35_jax.config import ModelConfig
from qwen35_jax.hf.config_io import config_to_hf, hf_incompatibility
from qwen35_jax.hf.safetensors_io import CheckpointError

FORMAT = "qwen35_jax.params/1"
CHUNK_BYTES = 64 << 20  # one chunk is the unit of a tensorstore read-modify-write: bounds memory per write
STATE_DIR = "state"
Path = tuple[str | int, ...]
Spec = tuple[tuple[int, ...], str]  # (shape, dtype name)

_ZARR_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "int32": "int32",
                "int64": "int64"}


def leaf_name(path: Path) -> str:
    """The array directory orbax uses for a nested-dict key path (keys joined by '.')."""
    return ".".join(str(p) for p in path)


def numpy_dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def chunk_shape(shape: tuple[int, ...], itemsize: int, stacked: bool) -> list[int]:
    """Chunks of at most CHUNK_BYTES: leading dim 1 for stacked arrays, then halve the first splittable dims."""
    chunk = list(shape)
    first = 0
    if stacked and chunk:
        chunk[0], first = 1, 1
    for dim in range(first, len(chunk)):
        while math.prod(chunk) * itemsize > CHUNK_BYTES and chunk[dim] > 1:
            chunk[dim] = -(-chunk[dim] // 2)
    return chunk


def pieces(shape: tuple[int, ...], chunk: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """The index tuples of the chunk grid ``chunk`` over an array of ``shape``."""
    ranges = [[slice(start, min(start + step, size)) for start in range(0, size, step)] if size else [slice(0, 0)]
              for size, step in zip(shape, chunk, strict=True)]
    return [tuple(combo) for combo in itertools.product(*ranges)]


def _zarr_spec(directory: str, shape: tuple[int, ...] | None = None, dtype: str | None = None,
               chunk: list[int] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"driver": "zarr3", "kvstore": {"driver": "file", "path": directory}}
    if shape is not None:
        spec["metadata"] = {
            "shape": list(shape), "data_type": _ZARR_DTYPES[dtype],
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk}},
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],  # random-like weights: no zstd
        }
    return spec


def _nested(paths: Iterable[Path], leaf: Any) -> dict:
    tree: dict = {}
    for path in paths:
        node = tree
        for key in path[:-1]:
            node = node.setdefault(str(key), {})
        node[str(path[-1])] = leaf(path)
    return tree


def check_output_dir(path: str, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite`` (raised before any work starts)."""
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"output {path!r} already exists; pass --overwrite (overwrite=True) to replace it, or "
                              "choose another path")


def replace_dir(staging: str, final: str) -> None:
    """Move a finished staging directory into place (the old one, if any, is removed only afterwards)."""
    old = None
    if os.path.lexists(final):
        old = f"{final}.old-{os.getpid()}"
        os.rename(final, old)
    os.rename(staging, final)
    if old is not None:
        shutil.rmtree(old) if os.path.isdir(old) and not os.path.islink(old) else os.remove(old)


class ParamWriter:
    """Create a checkpoint for ``specs`` (key path → (shape, dtype)), then fill it slice by slice.

    Everything is written into ``<path>.partial-<pid>`` and moved to ``path`` by ``close()`` only when every array
    was written in full; an existing ``path`` is refused unless ``overwrite``.
    """

    def __init__(self, path: str | os.PathLike, config: ModelConfig, specs: Mapping[Path, Spec], *,
                 stacked: Iterable[Path] = (), overwrite: bool = False, hf_config: dict | None = None,
                 metadata: dict | None = None):
        import orbax.checkpoint.experimental.v1 as ocp

        self.path = os.path.abspath(os.fspath(path))
        check_output_dir(self.path, overwrite)
        self.staging = f"{self.path}.partial-{os.getpid()}"
        if os.path.exists(self.staging):
            shutil.rmtree(self.staging)
        self.specs = dict(specs)
        stacked = set(stacked)
        custom = {"format": FORMAT, "model_config": config.to_dict(), **(metadata or {})}
        skeleton = _nested(self.specs, lambda p: np.zeros((1,) * len(self.specs[p][0]), numpy_dtype(self.specs[p][1])))
        context = ocp.Context()
        context.array.saving.use_ocdbt = False  # one zarr3 directory per parameter (replaced below)
        context.array.saving.use_zarr3 = True
        with context:
            ocp.save(self.staging, skeleton, custom_metadata=custom)
        self._arrays = {}
        self._remaining = {}
        for path_, (shape, dtype) in self.specs.items():
            directory = os.path.join(self.staging, STATE_DIR, leaf_name(path_))
            shutil.rmtree(directory)
            chunk = chunk_shape(tuple(shape), numpy_dtype(dtype).itemsize, path_ in stacked)
            self._arrays[path_] = ts.open(_zarr_spec(directory, tuple(shape), dtype, chunk), create=True).result()
            self._remaining[path_] = math.prod(shape)
        if hf_config is None and hf_incompatibility(config) is None:
            hf_config = config_to_hf(config)
        if hf_config is not None:  # an ablation transformers cannot express (numerics §10) gets none
            with open(os.path.join(self.staging, "config.json"), "w") as f:
                json.dump(hf_config, f, indent=2)

    def write(self, path: Path, value: np.ndarray, index: tuple = ()) -> None:
        """Write ``value`` at ``index`` (a tuple of ints/slices on the leading dims) of parameter ``path``."""
        array = self._arrays[path]
        target = array[index] if index else array
        if tuple(target.shape) != tuple(value.shape):
            raise CheckpointError(f"{leaf_name(path)}{list(index)}: value of shape {list(value.shape)} does not fit "
                                  f"the slice {list(target.shape)}")
        dtype = numpy_dtype(self.specs[path][1])
        chunk = array.chunk_layout.write_chunk.shape[len(index):]
        for piece in pieces(tuple(value.shape), tuple(chunk)):  # one chunk at a time: bounded copies, no re-reads
            target[piece].write(np.asarray(value[piece], dtype=dtype)).result()
        self._remaining[path] -= int(np.prod(value.shape))

    def close(self) -> None:
        unwritten = sorted(leaf_name(p) for p, n in self._remaining.items() if n != 0)
        if unwritten:
            raise CheckpointError(f"checkpoint incomplete, parameters not (fully) written: {unwritten}")
        replace_dir(self.staging, self.path)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> ParamWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def is_param_checkpoint(path: str | os.PathLike) -> bool:
    return os.path.isdir(os.path.join(os.fspath(path), STATE_DIR)) and \
        os.path.exists(os.path.join(os.fspath(path), "_CHECKPOINT_METADATA"))


class ParamReader:
    """Read a checkpoint written by ``ParamWriter``: its ModelConfig, parameter specs and array slices."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.abspath(os.fspath(path))
        meta_file = os.path.join(self.path, "_CHECKPOINT_METADATA")
        if not os.path.exists(meta_file):
            raise CheckpointError(f"{self.path}: not an orbax checkpoint (no _CHECKPOINT_METADATA); convert a "
                                  "transformers directory with `python -m tools.convert_hf import`")
        with open(meta_file) as f:
            custom = json.load(f).get("custom_metadata") or {}
        if custom.get("format") != FORMAT:
            raise CheckpointError(f"{self.path}: orbax checkpoint of format {custom.get('format')!r}, expected "
                                  f"{FORMAT!r} (written by tools.convert_hf import)")
        self.config = ModelConfig.from_dict(custom["model_config"])
        self.metadata = custom
        with open(os.path.join(self.path, STATE_DIR, "_METADATA")) as f:
            tree = json.load(f)["tree_metadata"]
        self.paths: list[tuple[str, ...]] = [tuple(k["key"] for k in entry["key_metadata"]) for entry in tree.values()]
        self._arrays: dict[tuple[str, ...], Any] = {}

    def array(self, path: Path) -> Any:
        key = tuple(str(p) for p in path)
        if key not in self._arrays:
            directory = os.path.join(self.path, STATE_DIR, leaf_name(key))
            if not os.path.exists(os.path.join(directory, "zarr.json")):
                raise CheckpointError(f"{self.path}: parameter {leaf_name(key)} is missing")
            self._arrays[key] = ts.open(_zarr_spec(directory), open=True).result()
        return self._arrays[key]

    def shape(self, path: Path) -> tuple[int, ...]:
        return tuple(self.array(path).shape)

    def dtype(self, path: Path) -> np.dtype:
        return self.array(path).dtype.numpy_dtype

    def read(self, path: Path, index: tuple = ()) -> np.ndarray:
        array = self.array(path)
        return np.asarray((array[index] if index else array).read().result())


class StateReader:
    """``ParamReader``'s interface over parameters already in memory (a training checkpoint, ``load_params``).

    ``vocab_file``: where the run's compact vocabulary file belongs (``WORKDIR/compact_vocab.json``; it may be
    missing), or None for a run on real Qwen ids.
    """

    def __init__(self, path: str, config: ModelConfig, params: Mapping, vocab_file: str | None = None):
        self.path, self.config, self.metadata, self.vocab_file = path, config, {}, vocab_file
        self._leaves: dict[tuple[str, ...], np.ndarray] = {}

        def walk(tree: Mapping, prefix: tuple[str, ...]) -> None:
            for key, value in tree.items():
                if isinstance(value, Mapping):
                    walk(value, prefix + (str(key),))
                else:
                    self._leaves[prefix + (str(key),)] = np.asarray(value)

        walk(params, ())
        self.paths = list(self._leaves)

    def shape(self, path: Path) -> tuple[int, ...]:
        return tuple(self._leaves[tuple(str(p) for p in path)].shape)

    def dtype(self, path: Path) -> np.dtype:
        return self._leaves[tuple(str(p) for p in path)].dtype

    def read(self, path: Path, index: tuple = ()) -> np.ndarray:
        value = self._leaves[tuple(str(p) for p in path)]
        return value[index] if index else value


def open_params(path: str | os.PathLike) -> ParamReader | StateReader:
    """A reader for our converted checkpoint, or for a training run (workdir / step dir, via
    ``qwen35_jax.train.checkpoint.load_params``; read into memory, fine at training-demo scale)."""
    path = os.fspath(path)
    if is_param_checkpoint(path):
        return ParamReader(path)
    try:
        from flax import nnx

        from qwen35_jax.data.text_dataset import VOCAB_FILE
        from qwen35_jax.train.checkpoint import load_meta, load_params

        directory, meta = load_meta(path)
        directory = os.path.abspath(directory)
        config, state = load_params(directory)
    except (ImportError, FileNotFoundError, ValueError) as e:
        raise CheckpointError(f"{path}: neither a checkpoint written by tools.convert_hf import nor a training run "
                              f"({e})") from e
    # meta["vocab_file"] is None for a run on real ids (a stray file in its workdir is then ignored); checkpoints
    # older than that key look for the file. The workdir is two levels above WORKDIR/checkpoints/<step>.
    name = meta.get("vocab_file", VOCAB_FILE)
    vocab_file = os.path.join(os.path.dirname(os.path.dirname(directory)), name) if name else None
    return StateReader(directory, config, nnx.to_pure_dict(state), vocab_file)
