"""Parameter counts computed from the model definition itself (abstract init: no memory is allocated)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.model.build import build_model
from qwen35_jax.parallel.runtime import Runtime
from qwen35_jax.presets import PUBLISHED_TOTALS


@dataclasses.dataclass(frozen=True)
class ParamCounts:
    total: int
    text: int
    vision: int
    mtp: int
    active_text: int  # non-expert text weights + top-k routed experts (numerics §5 "active text incl. emb+head")
    input_embedding: int
    active_mtp: int = 0  # MTP weights with only the top-k routed experts (per MTP step; excludes the shared head)

    @property
    def active_text_without_input_embedding(self) -> int:
        return self.active_text - self.input_embedding


def count_parameters(config: ModelConfig) -> ParamCounts:
    abstract = build_model(config, Runtime.local(), abstract=True)
    parts = {"text": 0, "vision": 0, "mtp": 0}
    routed = {"text": 0, "vision": 0, "mtp": 0}
    for path, param in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
        size = int(np.prod(param.shape))
        part = {"visual": "vision", "mtp": "mtp"}.get(str(path[0]), "text")
        parts[part] += size
        if "expert" in (param.get_metadata().get("out_sharding") or ()):
            routed[part] += size

    def active(part: str) -> int:
        kept = routed[part] * config.num_experts_per_tok // config.num_experts if config.is_moe else 0
        return parts[part] - routed[part] + kept

    embedding = config.vocab_size * config.hidden_size
    return ParamCounts(total=sum(parts.values()), text=parts["text"], vision=parts["vision"], mtp=parts["mtp"],
                       active_text=active("text"), input_embedding=embedding, active_mtp=active("mtp"))


EMBEDDING_NAMES = ("embed_tokens", "lm_head")  # the input embedding and the untied LM head (the MTP shares both)


def non_embedding_count(params: Any) -> int:
    """Size of a model's parameter tree (``nnx.state(model, nnx.Param)``, or the train state's ``params``) without
    its top-level ``embed_tokens`` and ``lm_head``: the N of scaling laws."""
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        top = str(getattr(path[0], "key", getattr(path[0], "name", path[0]))) if path else ""
        if top not in EMBEDDING_NAMES:
            total += int(np.prod(leaf.shape))
    return total


def non_embedding_parameters(config: ModelConfig) -> int:
    """Every parameter of ``config``'s model (text, vision, MTP) except the input embedding and the untied LM head."""
    return non_embedding_count(nnx.state(build_model(config, Runtime.local(), abstract=True), nnx.Param))


def format_counts(name: str, config: ModelConfig) -> str:
    counts = count_parameters(config)
    rows = [
        ("total (text + vision + MTP)", counts.total),
        ("text", counts.text),
        ("vision", counts.vision),
        ("MTP", counts.mtp),
        ("active text (incl. input embedding)", counts.active_text),
        ("active text (excl. input embedding)", counts.active_text_without_input_embedding),
    ]
    lines = [f"{name}:"] + [f"  {label:<38} {value:>19,}" for label, value in rows]
    published = PUBLISHED_TOTALS.get(name)
    if published is not None:
        verdict = "matches" if published == counts.total else f"DIFFERS by {counts.total - published:+,}"
        lines.append(f"  {'published checkpoint total':<38} {published:>19,}  ({verdict})")
    return "\n".join(lines)
