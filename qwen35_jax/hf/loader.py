"""``load_pretrained``: a transformers Qwen3.5 / Qwen3-Next checkpoint directory → our NNX model."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.hf.config_io import config_from_hf
from qwen35_jax.hf.keys import checkpoint_rules, fuse_per_expert_keys
from qwen35_jax.hf.safetensors_io import CheckpointError, iter_tensors
from qwen35_jax.model import Qwen35ForCausalLM
from qwen35_jax.model.build import build_model
from qwen35_jax.parallel.rules import state_shardings
from qwen35_jax.parallel.runtime import Runtime

log = logging.getLogger(__name__)
VL_TEXT_PREFIX = "model.language_model."
MTP_LAYER = re.compile(r"^mtp\.layers\.(\d+)\.")


def canonical_names(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """VL checkpoints nest the text model under ``model.language_model.``; map it to ``model.``."""
    return {("model." + k[len(VL_TEXT_PREFIX):] if k.startswith(VL_TEXT_PREFIX) else k): v for k, v in tensors.items()}


def config_for_checkpoint(config: ModelConfig, names: set[str]) -> ModelConfig:
    """Drop the MTP head / vision tower the config describes when the checkpoint does not carry them."""
    changes: dict[str, Any] = {}
    mtp_layers = len({int(m[1]) for m in map(MTP_LAYER.match, names) if m})
    if mtp_layers != config.mtp_num_hidden_layers:
        # transformers' config classes do not declare this field and its save_pretrained drops mtp.* tensors, so
        # the tensors present decide (numerics §2.9).
        log.info("checkpoint has %d MTP layer(s), config.json says %d: using the checkpoint's", mtp_layers,
                 config.mtp_num_hidden_layers)
        changes["mtp_num_hidden_layers"] = mtp_layers
    if config.vision is not None and not any(n.startswith("model.visual.") for n in names):
        log.info("checkpoint has no model.visual.* tensors: building the text model only")
        changes["vision"] = None
    return config.replace(**changes) if changes else config


def _get(tree: dict, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _describe(problems: dict[str, list[str]]) -> str:
    lines = []
    for kind, items in problems.items():
        if items:
            shown = items[:40] + ([f"... and {len(items) - 40} more"] if len(items) > 40 else [])
            lines.append(f"{kind} ({len(items)}):\n  " + "\n  ".join(shown))
    return "\n".join(lines)


def describe_problems(problems: dict[str, list[str]]) -> str:
    return _describe(problems)


def convert_tensors(config: ModelConfig, tensors: Mapping[str, Any], abstract_state: dict,
                    emit: Callable[[tuple, int | None, np.ndarray], None]) -> None:
    """Run every rule of ``config`` over ``tensors`` (canonical, fused-expert names → arrays, possibly loaded
    lazily by ``__getitem__``) and ``emit(path, block, value)`` each converted parameter (``block`` = index in the
    scanned stack or None). Every missing / unexpected / mis-shaped tensor is collected and raised at the end as one
    ``CheckpointError``; with zero-strided dummy arrays this is a cheap dry run."""
    problems: dict[str, list[str]] = {"missing tensors": [], "unexpected tensors": [], "mis-shaped tensors": []}
    used: set[str] = set()
    for stacked in checkpoint_rules(config):
        rule = stacked.rule
        missing = [name for name in rule.hf if name not in tensors]
        if missing:
            problems["missing tensors"] += missing
            continue
        used.update(rule.hf)
        inputs = [tensors[name] for name in rule.hf]
        try:
            converted = rule.to_ours(inputs)
        except ValueError as e:  # a reshape that cannot work: the HF tensor has the wrong size
            shapes = [f"{name} {list(a.shape)}" for name, a in zip(rule.hf, inputs, strict=True)]
            problems["mis-shaped tensors"].append(f"{', '.join(shapes)}: {e}")
            continue
        for path, value in zip(rule.ours, converted, strict=True):
            target = _get(abstract_state, path)
            want = target.shape[1:] if stacked.block is not None else target.shape
            if tuple(value.shape) != tuple(want):
                problems["mis-shaped tensors"].append(
                    f"{', '.join(rule.hf)} → {'.'.join(map(str, path))}: got {list(value.shape)}, config expects "
                    f"{list(want)}")
                continue
            if not any(problems.values()):
                emit(path, stacked.block, value)
    problems["unexpected tensors"] = sorted(set(tensors) - used)
    if any(problems.values()):
        raise CheckpointError("checkpoint does not match the model config:\n" + _describe(problems))


def state_from_hf_tensors(config: ModelConfig, tensors: dict[str, np.ndarray], abstract_state: dict) -> dict:
    """Fill a pure-dict copy of ``abstract_state`` from HF tensors; raise listing every problem at once."""
    tensors = fuse_per_expert_keys(canonical_names(tensors))
    buffers: dict = {}

    def emit(path: tuple, block: int | None, value: np.ndarray) -> None:
        if block is None:
            buffers[path] = value
        else:
            buffers.setdefault(path, {})[block] = value

    convert_tensors(config, tensors, abstract_state, emit)

    def fill(tree: dict, prefix: tuple) -> dict:
        out = {}
        for key, value in tree.items():
            path = prefix + (key,)
            if isinstance(value, dict):
                out[key] = fill(value, path)
                continue
            if path not in buffers:
                raise CheckpointError(f"no checkpoint tensor maps to parameter {'.'.join(map(str, path))}")
            found = buffers[path]
            array = np.stack([found[b] for b in range(value.shape[0])]) if isinstance(found, dict) else found
            out[key] = jnp.asarray(array, dtype=value.dtype)
        return out

    return fill(abstract_state, ())


def _place(abstract_state: nnx.State, read: Callable[[tuple, tuple], np.ndarray], runtime: Runtime) -> dict:
    """Pure dict of jax Arrays on ``runtime.mesh``, each built shard by shard with ``read(path, index)`` (only this
    host's shards)."""
    import jax

    shardings = nnx.to_pure_dict(state_shardings(abstract_state, runtime.mesh, runtime.rules))
    abstract = nnx.to_pure_dict(abstract_state)

    def fill(tree: dict, sharding_tree: dict, prefix: tuple) -> dict:
        out = {}
        for key, value in tree.items():
            path = prefix + (key,)
            if isinstance(value, dict):
                out[key] = fill(value, sharding_tree[key], path)
                continue
            seen: dict[tuple, np.ndarray] = {}  # replicated shards: read each distinct slice once per host

            def shard(index: tuple, path: tuple = path, dtype: Any = value.dtype, seen: dict = seen) -> np.ndarray:
                key = tuple((s.start, s.stop, s.step) for s in index)
                if key not in seen:
                    seen[key] = np.asarray(read(path, index), dtype=dtype)
                return seen[key]

            out[key] = jax.make_array_from_callback(tuple(value.shape), sharding_tree[key], shard)
        return out

    return fill(abstract, shardings, ())


def load_pretrained(path: str | os.PathLike, *, dtype: str | None = None, param_dtype: str | None = None,
                    runtime: Runtime | None = None, **config_overrides: Any) -> Qwen35ForCausalLM:
    """Load a transformers checkpoint directory (config.json + safetensors), or our orbax checkpoint written by
    ``tools.convert_hf import``, into ``Qwen35ForCausalLM`` built for ``runtime`` (default ``Runtime.local()``).

    Accepts text-only (``*ForCausalLM``) and VL (``*ForConditionalGeneration``) key layouts, fused or per-expert
    MoE tensors, tied or untied heads. Missing, unexpected or mis-shaped tensors raise ``CheckpointError`` listing
    all of them. ``dtype``/``param_dtype`` override the compute / parameter dtypes (default float32).

    A runtime with a mesh (``Runtime.for_mesh``): every parameter is created directly with its NamedSharding (the
    runtime's rules) by ``jax.make_array_from_callback``. From an orbax checkpoint each host reads only the slices
    of its addressable shards (tensorstore); a transformers directory is converted on the host first (convert it
    once with ``tools.convert_hf import`` for slice-wise reads at scale).
    """
    from qwen35_jax.hf.orbax_io import ParamReader, is_param_checkpoint

    path = os.fspath(path)
    runtime = Runtime.local() if runtime is None else runtime
    overrides = dict(config_overrides)
    if dtype is not None:
        overrides["dtype"] = dtype
    if param_dtype is not None:
        overrides["param_dtype"] = param_dtype
    if is_param_checkpoint(path):
        reader = ParamReader(path)
        overrides.setdefault("param_dtype", "float32")
        config = reader.config.replace(**overrides)
        graphdef, state = nnx.split(build_model(config, runtime, abstract=True))
        from qwen35_jax.hf.param_check import check_against_model

        check_against_model(reader, config)
        if runtime.mesh is None:
            pure = jax_tree_of(nnx.to_pure_dict(state), lambda p, v: jnp.asarray(reader.read(p), dtype=v.dtype))
        else:
            pure = _place(state, lambda p, index: reader.read(p, index), runtime)
        nnx.replace_by_pure_dict(state, pure)
        return nnx.merge(graphdef, state)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise CheckpointError(f"{path}: no config.json (expected a transformers checkpoint directory or an orbax "
                              "checkpoint written by tools.convert_hf import)")
    tensors = dict(iter_tensors(path))
    config = config_for_checkpoint(config_from_hf(path, **overrides), set(canonical_names(tensors)))
    graphdef, state = nnx.split(build_model(config, runtime, abstract=True))
    pure = state_from_hf_tensors(config, tensors, nnx.to_pure_dict(state))
    if runtime.mesh is not None:
        host = pure
        pure = _place(state, lambda p, index: np.asarray(_get(host, p))[index], runtime)
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def jax_tree_of(tree: dict, leaf: Callable[[tuple, Any], Any], prefix: tuple = ()) -> dict:
    """Map ``leaf(path, value)`` over a nested dict."""
    return {k: jax_tree_of(v, leaf, prefix + (k,)) if isinstance(v, dict) else leaf(prefix + (k,), v)
            for k, v in tree.items()}
