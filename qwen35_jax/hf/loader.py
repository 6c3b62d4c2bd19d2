"""``load_pretrained``: a transformers Qwen3.5 / Qwen3-Next checkpoint directory → our NNX model."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.hf.keys import checkpoint_rules, fuse_per_expert_keys
from qwen35_jax.hf.safetensors_io import CheckpointError, iter_tensors
from qwen35_jax.model import Qwen35ForCausalLM

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
        # the tensors present decide (spec §2.9).
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


def state_from_hf_tensors(config: ModelConfig, tensors: dict[str, np.ndarray], abstract_state: dict) -> dict:
    """Fill a pure-dict copy of ``abstract_state`` from HF tensors; raise listing every problem at once."""
    tensors = fuse_per_expert_keys(canonical_names(tensors))
    buffers = {}
    problems: dict[str, list[str]] = {"missing tensors": [], "unexpected tensors": [], "mis-shaped tensors": []}
    used: set[str] = set()
    for stacked in checkpoint_rules(config):
        rule = stacked.rule
        missing = [name for name in rule.hf if name not in tensors]
        if missing:
            problems["missing tensors"] += missing
            continue
        used.update(rule.hf)
        try:
            converted = rule.to_ours([tensors[name] for name in rule.hf])
        except ValueError as e:  # a reshape that cannot work: the HF tensor has the wrong size
            shapes = [f"{name} {list(tensors[name].shape)}" for name in rule.hf]
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
            if stacked.block is None:
                buffers[path] = value
            else:
                buffers.setdefault(path, {})[stacked.block] = value
    problems["unexpected tensors"] = sorted(set(tensors) - used)
    if any(problems.values()):
        raise CheckpointError("checkpoint does not match the model config:\n" + _describe(problems))

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


def load_pretrained(path: str | os.PathLike, *, dtype: str | None = None, param_dtype: str | None = None,
                    **config_overrides: Any) -> Qwen35ForCausalLM:
    """Load a transformers checkpoint directory (config.json + safetensors) into ``Qwen35ForCausalLM``.

    Accepts text-only (``*ForCausalLM``) and VL (``*ForConditionalGeneration``) key layouts, fused or per-expert
    MoE tensors, tied or untied heads. Missing, unexpected or mis-shaped tensors raise ``CheckpointError`` listing
    all of them. ``dtype``/``param_dtype`` override the compute / parameter dtypes (default float32).
    """
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise CheckpointError(f"{path}: no config.json (expected a transformers checkpoint directory)")
    overrides = dict(config_overrides)
    if dtype is not None:
        overrides["dtype"] = dtype
    if param_dtype is not None:
        overrides["param_dtype"] = param_dtype
    tensors = dict(iter_tensors(path))
    config = config_for_checkpoint(ModelConfig.from_hf(path, **overrides), set(canonical_names(tensors)))
    abstract = nnx.eval_shape(lambda: Qwen35ForCausalLM(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    pure = state_from_hf_tensors(config, tensors, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)
