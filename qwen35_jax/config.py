"""Model configuration: every field of numerics §4 as a frozen dataclass, validated up front.

Field names follow Hugging Face's ``Qwen3_5TextConfig`` / ``Qwen3_5MoeTextConfig`` / ``Qwen3NextConfig`` so a
``config.json`` maps one to one (``qwen35_jax.hf.config_from_hf`` / ``config_to_hf``; this module knows nothing of
HF files). A few fields are ours (``variant``, ``dtype``, ``param_dtype``, ``remat_policy``, ``gdn_impl``,
``attention_block_q``, ``scan_unroll``): they choose the architecture family and how the model runs, never what it
computes. Three HF fields also take values of ours for ablations, each default being Qwen3.5's (numerics §10):
``full_attention_interval=0`` (no full-attention layer), ``attn_output_gate=False`` and ``partial_rotary_factor=0``
(NoPE).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

LINEAR_ATTENTION = "linear_attention"
FULL_ATTENTION = "full_attention"
VARIANTS = ("qwen3_5", "qwen3_next")
DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")
PARAMETRIZATIONS = ("sp", "mup")


def _fail(field: str, value: Any, fix: str) -> None:
    raise ValueError(f"ModelConfig.{field}={value!r} is invalid: {fix}")


def derive_layer_types(num_layers: int, full_attention_interval: Any) -> tuple[str, ...]:
    """``[linear x (N-1), full]`` repeated for interval N >= 1 (1 = all attention); 0 = all linear (numerics §10).
    Other values give an empty pattern, which validation then rejects naming ``full_attention_interval``."""
    interval = full_attention_interval
    if not isinstance(interval, int) or isinstance(interval, bool) or interval < 0 or not isinstance(num_layers, int):
        return ()
    if interval == 0:
        return (LINEAR_ATTENTION,) * num_layers
    return tuple(FULL_ATTENTION if (i + 1) % interval == 0 else LINEAR_ATTENTION for i in range(num_layers))


@dataclasses.dataclass(frozen=True, kw_only=True)
class VisionConfig:
    """Vision tower sizes (numerics §2.10, §4)."""

    depth: int = 27
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_heads: int = 16
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    out_hidden_size: int = 4096
    num_position_embeddings: int = 2304
    hidden_act: str = "gelu_pytorch_tanh"

    def __post_init__(self) -> None:
        for name in ("depth", "hidden_size", "intermediate_size", "num_heads", "patch_size", "temporal_patch_size",
                     "spatial_merge_size", "in_channels", "out_hidden_size", "num_position_embeddings"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"VisionConfig.{name}={getattr(self, name)!r} is invalid: must be a positive integer")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"VisionConfig.num_heads={self.num_heads} is invalid: must divide hidden_size "
                             f"{self.hidden_size}")
        side = math.isqrt(self.num_position_embeddings)
        if side * side != self.num_position_embeddings:
            raise ValueError(f"VisionConfig.num_position_embeddings={self.num_position_embeddings} is invalid: must "
                             "be a perfect square (the learned table is a square grid, e.g. 2304 = 48²)")

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Qwen3.5 / Qwen3-Next text model (+ optional vision tower and MTP head) configuration."""

    # Shapes (numerics §4).
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int = 256
    intermediate_size: int = 0
    linear_num_key_heads: int = 16
    linear_num_value_heads: int = 16
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
    linear_conv_kernel_dim: int = 4
    layer_types: tuple[str, ...] | None = None
    # Derives layer_types when they are None: every N-th layer is full attention; 0 = none (all Gated DeltaNet, an
    # ablation of ours: numerics §10).
    full_attention_interval: int = 4
    # MoE (num_experts == 0 means a dense SwiGLU FFN of width intermediate_size).
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    norm_topk_prob: bool = True
    router_aux_loss_coef: float = 0.001
    # Embedding / head.
    tie_word_embeddings: bool = False
    # Position encoding (numerics §2.3.1).
    rope_theta: float = 1e7
    # Fraction of each attention head rotated; 0 = NoPE (ours, numerics §10), 1 = full rotary.
    partial_rotary_factor: float = 0.25
    mrope_section: tuple[int, ...] | None = (11, 11, 10)
    max_position_embeddings: int = 262144
    # Misc fixed-by-architecture fields, kept so HF configs round-trip and wrong values are rejected.
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    attention_bias: bool = False
    # False (ours, numerics §10): no sigmoid output gate, q_proj yields only the queries. transformers always gates.
    attn_output_gate: bool = True
    # Multi-token prediction (numerics §2.9) and vision tower (numerics §2.10).
    mtp_num_hidden_layers: int = 1
    mtp_use_dedicated_embeddings: bool = False
    vision: VisionConfig | None = None
    # Special tokens (numerics §2.11; per-checkpoint values are read from config.json).
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    image_token_id: int = 248056
    video_token_id: int = 248057
    vision_start_token_id: int = 248053
    vision_end_token_id: int = 248054
    # Ours: architecture family and execution.
    variant: str = "qwen3_5"
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    gdn_impl: str = "auto"
    # > 0: full attention runs over blocks of this many queries (each block's scores recomputed in the backward),
    # memory O(block x T) instead of O(T^2) — for long sequences. 0 = all queries at once (at T = 4096 the blocked
    # form did not lower the 35B-A3B training step's peak on TPU: 18.70 vs 18.58 GiB). Same values either way.
    attention_block_q: int = 0
    # Hybrid blocks per iteration of the layer scan (``lax.scan(unroll=...)``); >= num_blocks unrolls the stack.
    # Unrolled, XLA keeps each block's backward residuals as separate buffers instead of filling stacked
    # [num_blocks, ...] ones: up to 15 % off the tools.bench_train step on CPU (2 blocks; README). Compile time and
    # program size grow with it, so keep 1 for deep models.
    scan_unroll: int = 1
    # Ours: how initialisation, learning rates and output multipliers scale with width (numerics §12). "sp" is the
    # standard parametrisation every checkpoint uses; "mup" the maximal-update one, equal to "sp" at hidden_size =
    # mup_base_width (0: this model's hidden_size, i.e. the model is its own base).
    parametrization: str = "sp"
    mup_base_width: int = 0

    def __post_init__(self) -> None:
        if self.layer_types is None:
            object.__setattr__(self, "layer_types", derive_layer_types(self.num_hidden_layers,
                                                                       self.full_attention_interval))
        else:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if self.mrope_section is not None:
            object.__setattr__(self, "mrope_section", tuple(int(s) for s in self.mrope_section))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if isinstance(self.vision, Mapping):
            object.__setattr__(self, "vision", VisionConfig(**self.vision))
        self._validate()

    # ----------------------------------------------------------------------------------------------- validation
    def _validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                     "head_dim", "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
                     "linear_value_head_dim", "linear_conv_kernel_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                _fail(name, value, "must be a positive integer")
        interval = self.full_attention_interval
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < 0:
            _fail("full_attention_interval", interval, "every N-th layer is full attention: use N >= 1, or 0 for no "
                  "full-attention layer (all Gated DeltaNet)")
        if self.variant not in VARIANTS:
            _fail("variant", self.variant, f"choose one of {VARIANTS}")
        if self.num_attention_heads % self.num_key_value_heads:
            _fail("num_attention_heads", self.num_attention_heads,
                  f"must be a multiple of num_key_value_heads={self.num_key_value_heads} (grouped-query attention)")
        if self.linear_num_value_heads % self.linear_num_key_heads:
            _fail("linear_num_value_heads", self.linear_num_value_heads,
                  f"must be a multiple of linear_num_key_heads={self.linear_num_key_heads} (each key head serves "
                  "linear_num_value_heads / linear_num_key_heads value heads)")
        if len(self.layer_types) != self.num_hidden_layers:
            _fail("layer_types", f"<{len(self.layer_types)} entries>",
                  f"needs exactly num_hidden_layers={self.num_hidden_layers} entries, or leave it None to derive "
                  f"the pattern from full_attention_interval={self.full_attention_interval}")
        unknown = sorted(set(self.layer_types) - {LINEAR_ATTENTION, FULL_ATTENTION})
        if unknown:
            _fail("layer_types", unknown, f"entries must be {LINEAR_ATTENTION!r} or {FULL_ATTENTION!r}")
        factor = self.partial_rotary_factor
        rotated = self.head_dim * factor if isinstance(factor, (int, float)) and not isinstance(factor, bool) else -1
        if not (0 <= rotated <= self.head_dim and rotated == int(rotated) and int(rotated) % 2 == 0):
            _fail("partial_rotary_factor", factor, f"head_dim={self.head_dim} * partial_rotary_factor must be an even "
                  f"integer in [0, head_dim] (0 = NoPE, 0.25 = Qwen3.5, 1 = full rotary)")
        rotary = self.rotary_dim
        section = self.mrope_section
        if section is not None and rotary == 0:
            _fail("mrope_section", section, "partial_rotary_factor=0 (NoPE) rotates nothing: set mrope_section=None")
        if section is not None and (len(section) != 3 or min(section) < 0 or sum(section) != rotary // 2):
            _fail("mrope_section", section, f"needs 3 entries (T, H, W) >= 0 summing to rotary_dim / 2 = "
                  f"{rotary // 2} (head_dim={self.head_dim} * partial_rotary_factor={factor} / 2), or None for "
                  "1-D rotary positions")
        if self.num_experts < 0:
            _fail("num_experts", self.num_experts, "must be >= 0 (0 = dense FFN)")
        if self.is_moe:
            if not 0 < self.num_experts_per_tok <= self.num_experts:
                _fail("num_experts_per_tok", self.num_experts_per_tok,
                      f"must be in [1, num_experts={self.num_experts}]")
            if self.moe_intermediate_size <= 0:
                _fail("moe_intermediate_size", self.moe_intermediate_size, "must be positive for a MoE model")
            if self.shared_expert_intermediate_size < 0:
                _fail("shared_expert_intermediate_size", self.shared_expert_intermediate_size, "must be >= 0")
        elif self.intermediate_size <= 0:
            _fail("intermediate_size", self.intermediate_size, "must be positive for a dense model (num_experts=0)")
        if self.variant == "qwen3_5" and self.is_moe and not self.norm_topk_prob:
            _fail("norm_topk_prob", self.norm_topk_prob, "Qwen3.5 always renormalises top-k weights (numerics §2.7)")
        if self.hidden_act != "silu":
            _fail("hidden_act", self.hidden_act, "Qwen3.5 uses 'silu'")
        if self.attention_bias:
            _fail("attention_bias", self.attention_bias, "Qwen3.5 projections have no bias; set it to False")
        if not isinstance(self.attn_output_gate, bool):
            _fail("attn_output_gate", self.attn_output_gate, "must be True (Qwen3.5's sigmoid output gate) or False")
        if self.rms_norm_eps <= 0:
            _fail("rms_norm_eps", self.rms_norm_eps, "must be positive")
        if self.mtp_num_hidden_layers < 0:
            _fail("mtp_num_hidden_layers", self.mtp_num_hidden_layers, "must be >= 0 (0 = no MTP head)")
        if self.mtp_use_dedicated_embeddings:
            _fail("mtp_use_dedicated_embeddings", True, "not used by any released checkpoint; set it to False")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                _fail(name, getattr(self, name), f"choose one of {DTYPES}")
        if self.remat_policy not in REMAT_POLICIES:
            _fail("remat_policy", self.remat_policy, f"choose one of {REMAT_POLICIES}")
        if self.attention_block_q < 0:
            _fail("attention_block_q", self.attention_block_q, "use 0 (all queries at once) or a block size, e.g. 1024")
        if self.parametrization not in PARAMETRIZATIONS:
            _fail("parametrization", self.parametrization, f"choose one of {PARAMETRIZATIONS} (numerics §12)")
        if not isinstance(self.mup_base_width, int) or isinstance(self.mup_base_width, bool) or \
                self.mup_base_width < 0:
            _fail("mup_base_width", self.mup_base_width, "use 0 (this model is the base) or the hidden_size of the "
                  "base model whose learning rates transfer, e.g. 128")
        if self.parametrization == "mup" and self.vision is not None:
            _fail("parametrization", self.parametrization, "µP rules cover the text model (numerics §12), not the "
                  "vision tower yet; use parametrization='sp' for a vision-language model")
        if self.scan_unroll < 1:
            _fail("scan_unroll", self.scan_unroll, "use 1 (a rolled scan) or more blocks per scan iteration")
        if self.vision is not None:
            if self.variant != "qwen3_5":
                _fail("vision", "VisionConfig", "Qwen3-Next is text-only; set vision=None")
            if self.vision.out_hidden_size != self.hidden_size:
                _fail("vision", f"out_hidden_size={self.vision.out_hidden_size}",
                      f"the merger must project to the text hidden_size={self.hidden_size}")

    # ----------------------------------------------------------------------------------------------- derived sizes
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def linear_conv_dim(self) -> int:
        """Channels of the GDN causal conv: q and k of every key head, then v of every value head."""
        return 2 * self.linear_num_key_heads * self.linear_key_head_dim + \
            self.linear_num_value_heads * self.linear_value_head_dim

    @property
    def block_pattern(self) -> tuple[str, ...]:
        """Shortest repeating unit of ``layer_types``; the stack is scanned over repeats of it (a single layer for an
        all-attention or all-GDN stack, numerics §10)."""
        n = self.num_hidden_layers
        for period in range(1, n + 1):
            if n % period == 0 and self.layer_types == self.layer_types[:period] * (n // period):
                return self.layer_types[:period]
        raise AssertionError("unreachable: the whole stack is always a period")

    @property
    def width_multiplier(self) -> float:
        """µP's m = hidden_size / mup_base_width under parametrization "mup" (1 when the base width is 0 or equal);
        1 under "sp" (numerics §12)."""
        if self.parametrization != "mup" or self.mup_base_width == 0:
            return 1.0
        return self.hidden_size / self.mup_base_width

    @property
    def num_blocks(self) -> int:
        return self.num_hidden_layers // len(self.block_pattern)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------------------------------------- dict I/O
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["layer_types"] = list(self.layer_types)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """Build from a plain mapping (e.g. ``ConfigDict.to_dict()``); unknown keys are an error naming them."""
        values = dict(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; valid fields: {sorted(known)}")
        for name in ("layer_types", "mrope_section"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        if values.get("vision") is not None and not isinstance(values["vision"], VisionConfig):
            values["vision"] = VisionConfig(**dict(values["vision"]))
        return cls(**values)
