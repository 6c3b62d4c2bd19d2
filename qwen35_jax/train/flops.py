"""Model FLOPs per trained token and MFU (DESIGN.md §6).

Per token, forward + backward (3x the forward):

* matmuls: ``6 · N_active`` with ``N_active`` the active text parameters without the input embedding
  (``param_count``: non-expert weights + the top-k routed experts; the LM head is a matmul and is included);
* causal attention: per full-attention layer ``6 · T · H_q · d_head`` (scores + values, ``2 · 2 · T · H_q · d``
  forward, halved by the causal mask, x3);
* GDN core (chunked delta rule): per linear-attention layer ``24 · H_v · d_k · d_v`` (``8 · H_v · d_k · d_v``
  forward, x3).

``peak_flops_per_device`` knows common accelerators by ``device_kind``; elsewhere (CPU) MFU is reported only when
``train.peak_flops_per_device`` is set.
"""

from __future__ import annotations

import jax

from qwen35_jax.config import FULL_ATTENTION, ModelConfig
from qwen35_jax.param_count import count_parameters

# Dense bf16 peak FLOP/s per device (chip), by substring of ``jax.Device.device_kind`` (first match wins).
_PEAK_FLOPS = (
    ("TPU v6", 918e12), ("TPU v5p", 459e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5", 459e12),
    ("TPU v4", 275e12), ("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("B200", 2250e12),
)


def training_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Model FLOPs (forward + backward) per trained token at sequence length ``seq_len``."""
    matmul = 6.0 * count_parameters(config).active_text_without_input_embedding
    num_full = sum(t == FULL_ATTENTION for t in config.layer_types)
    num_linear = config.num_hidden_layers - num_full
    attention = num_full * 6.0 * seq_len * config.num_attention_heads * config.head_dim
    gdn = num_linear * 24.0 * config.linear_num_value_heads * config.linear_key_head_dim * config.linear_value_head_dim
    return matmul + attention + gdn


def peak_flops_per_device(device: jax.Device | None = None, override: float = 0.0) -> float | None:
    """``override`` when > 0, else the table value for the device kind, else None (unknown, e.g. CPU)."""
    if override > 0:
        return float(override)
    kind = (device or jax.devices()[0]).device_kind
    return next((peak for name, peak in _PEAK_FLOPS if name.lower() in kind.lower()), None)
