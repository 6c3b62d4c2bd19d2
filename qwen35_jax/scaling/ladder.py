"""A ladder of Qwen3.5-shaped models for scaling studies, sized by non-embedding parameters (numerics §12.5).

  fields = model_shape(width=128, layers=4, ffn="dense")     # ModelConfig fields of one rung
  rung = rung_for_params(2e6, ffn="moe")                    # the rung whose non-embedding count is nearest 2 M
  steps = steps_for_budget(model_config, 1e12, seq_len=128, batch_size=8)   # D = C / (FLOPs per token)

Every rung keeps Qwen3.5's layout: blocks of 3 Gated DeltaNet layers + 1 gated full-attention layer, partial
rotary (a quarter of each head), the sigmoid output gate, a dense SwiGLU FFN or a MoE (8 experts, top 2, a shared
expert). Width grows by heads, never by head size (16 for attention and GDN keys / values), so µP's width multiplier
(``model.mup_base_width``) is the ratio of hidden sizes and every attention / GDN scale stays a constant. Parameter
counts come from the model itself (``param_count``), FLOPs per token from ``train.flops`` (attention and GDN terms
included).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from qwen35_jax.config import ModelConfig
from qwen35_jax.param_count import non_embedding_parameters
from qwen35_jax.train.flops import training_flops_per_token

HEAD_DIM = 16  # attention and GDN head size of every rung (small: the CPU ladders start at 2 heads)
FFN_KINDS = ("dense", "moe")
WIDTH_STEP = 2 * HEAD_DIM  # an even number of heads: grouped-query attention and GDN key heads take half of them
# (width, layers): about a factor 2 in non-embedding parameters from one rung to the next.
RUNGS = ((32, 4), (32, 8), (64, 4), (64, 8), (96, 8), (128, 8), (192, 8), (256, 8), (256, 16), (384, 12), (512, 12),
         (512, 24))


@dataclasses.dataclass(frozen=True)
class Rung:
    width: int
    layers: int
    ffn: str
    non_embedding_params: int

    @property
    def name(self) -> str:
        return f"{self.ffn}_w{self.width}_l{self.layers}"


def model_shape(width: int, layers: int = 4, ffn: str = "dense") -> dict[str, Any]:
    """ModelConfig fields (shapes only) of a rung of ``width`` (a multiple of 64) and ``layers`` (a multiple of 4)."""
    if width % WIDTH_STEP or width < WIDTH_STEP:
        raise ValueError(f"width={width} must be a positive multiple of {WIDTH_STEP} (an even number of heads of "
                         f"{HEAD_DIM} channels)")
    if layers % 4 or layers < 4:
        raise ValueError(f"layers={layers} must be a positive multiple of 4 (3 GDN + 1 attention per block)")
    if ffn not in FFN_KINDS:
        raise ValueError(f"ffn={ffn!r}: choose one of {FFN_KINDS}")
    heads = width // HEAD_DIM
    moe = ffn == "moe"
    return {
        "hidden_size": width, "num_hidden_layers": layers, "full_attention_interval": 4,
        "num_attention_heads": heads, "num_key_value_heads": heads // 2, "head_dim": HEAD_DIM,
        "linear_num_key_heads": heads // 2, "linear_num_value_heads": heads,
        "linear_key_head_dim": HEAD_DIM, "linear_value_head_dim": HEAD_DIM,
        "partial_rotary_factor": 0.25, "mrope_section": (1, 1, 0),  # 4 rotated channels: 2 frequencies
        "intermediate_size": 0 if moe else 3 * width,
        "num_experts": 8 if moe else 0, "num_experts_per_tok": 2 if moe else 0,
        "moe_intermediate_size": width // 2 if moe else 0, "shared_expert_intermediate_size": width // 2 if moe else 0,
    }


def rung_config(base: ModelConfig, width: int, layers: int, ffn: str = "dense") -> ModelConfig:
    """``base`` (vocabulary, dtypes, parametrisation, ...) with the shape of one rung."""
    return base.replace(layer_types=None, **model_shape(width, layers, ffn))


def ladder(base: ModelConfig, ffn: str = "dense") -> list[Rung]:
    """Every rung of ``RUNGS`` with its non-embedding parameter count, smallest first."""
    return [Rung(w, n, ffn, non_embedding_parameters(rung_config(base, w, n, ffn))) for w, n in RUNGS]


def rung_for_params(target: float, base: ModelConfig, ffn: str = "dense") -> Rung:
    """The rung whose non-embedding count is nearest ``target`` in log space."""
    return min(ladder(base, ffn), key=lambda r: abs(math.log(r.non_embedding_params / target)))


def steps_for_budget(config: ModelConfig, flops: float, *, seq_len: int, batch_size: int) -> int:
    """Training steps that spend ``flops`` (forward + backward) on ``config`` at ``batch_size x seq_len`` tokens per
    step: D = C / (FLOPs per token), rounded to whole steps (at least 1)."""
    tokens = flops / training_flops_per_token(config, seq_len)
    return max(1, round(tokens / (seq_len * batch_size)))
