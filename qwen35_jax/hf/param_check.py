"""Does a stored parameter checkpoint fit a ModelConfig? Shared by ``loader`` (before reading) and ``convert``.

  check_against_model(ParamReader(path), config)   # raises CheckpointError listing every problem at once
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.hf.orbax_io import ParamReader, StateReader, leaf_name
from qwen35_jax.hf.safetensors_io import CheckpointError
from qwen35_jax.model.build import build_model
from qwen35_jax.parallel.runtime import Runtime

SHOWN = 40  # items listed per kind of problem


def describe_problems(problems: dict[str, list[str]]) -> str:
    """One block per non-empty kind: ``kind (count):`` then up to ``SHOWN`` items, indented."""
    lines = []
    for kind, items in problems.items():
        if items:
            shown = items[:SHOWN] + ([f"... and {len(items) - SHOWN} more"] if len(items) > SHOWN else [])
            lines.append(f"{kind} ({len(items)}):\n  " + "\n  ".join(shown))
    return "\n".join(lines)


def abstract_params(config: ModelConfig) -> dict:
    """The model's parameters as a nested pure dict of ShapeDtypeStructs (nothing allocated)."""
    abstract = build_model(config, Runtime.local(), abstract=True)
    return nnx.to_pure_dict(nnx.state(abstract))


def flat_paths(tree: dict, prefix: tuple = ()) -> dict[tuple, Any]:
    """``{(key, ..., key): leaf}`` of a nested dict."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_paths(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def check_against_model(reader: ParamReader | StateReader, config: ModelConfig) -> None:
    """Raise ``CheckpointError`` naming every missing, unexpected or mis-shaped parameter of ``reader``."""
    expected = {tuple(str(k) for k in path): v for path, v in flat_paths(abstract_params(config)).items()}
    stored = set(reader.paths)
    problems = {"missing parameters": sorted(leaf_name(p) for p in set(expected) - stored),
                "unexpected parameters": sorted(leaf_name(p) for p in stored - set(expected)),
                "mis-shaped parameters": []}
    for path in sorted(set(expected) & stored):
        shape = reader.shape(path)
        if shape != tuple(expected[path].shape):
            problems["mis-shaped parameters"].append(
                f"{leaf_name(path)}: stored {list(shape)}, config expects {list(expected[path].shape)}")
    if any(problems.values()):
        raise CheckpointError(f"{reader.path}: checkpoint does not match its model config:\n"
                              + describe_problems(problems))
