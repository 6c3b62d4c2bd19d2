"""Model FLOPs per trained token, the accelerator table (peak FLOP/s, HBM) and MFU (DESIGN.md §6).

Per token, forward + backward (3x the forward):

* matmuls: ``6 · N_matmul`` with ``N_matmul`` the active text parameters (``param_count``: non-expert weights + the
  top-k routed experts) without the input embedding, which is a gather — unless it is also the (tied) LM head;
* causal attention: per full-attention layer ``6 · T · H_q · d_head`` (scores + values, ``2 · 2 · T · H_q · d``
  forward, halved by the causal mask, x3);
* GDN core (chunked delta rule): per linear-attention layer ``24 · H_v · d_k · d_v`` (``8 · H_v · d_k · d_v``
  forward, x3);
* the MTP loss (``train.mtp_loss_weight`` > 0, ``mtp_depth`` steps): per step ``6 · (N_mtp + H · V)`` (the MTP
  layer's active weights and fc, plus the shared LM head once more) and that layer's causal attention.

Any layer pattern (all attention, all GDN, numerics §10) counts its layers of each kind; a layer without the output
gate has ``nq · hd · H`` fewer q_proj weights, which ``param_count`` sees in the model itself.

This is the one FLOP formula: the training loop's MFU and ``tools.aot_compile``'s estimate both use it.
``ACCELERATORS`` knows common chips by TPU generation (as in a topology name, ``v5p:4x4x4``) and by
``jax.Device.device_kind``; elsewhere (CPU) MFU is reported only when ``train.peak_flops_per_device`` is set.
"""

from __future__ import annotations

import dataclasses

import jax

from qwen35_jax.config import FULL_ATTENTION, ModelConfig
from qwen35_jax.param_count import count_parameters

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str  # TPU generation as in topology names (v5p), or the GPU model
    device_kinds: tuple[str, ...]  # substrings of ``jax.Device.device_kind``
    peak_flops: float  # dense bf16 FLOP/s per chip
    hbm_bytes: float

    @property
    def hbm_gib(self) -> float:
        return self.hbm_bytes / GIB


# First match wins (``TPU v5`` after ``v5p`` / ``v5 lite``).
ACCELERATORS = (
    Accelerator("v6e", ("TPU v6",), 918e12, 32e9),
    Accelerator("v5p", ("TPU v5p",), 459e12, 95e9),
    Accelerator("v5e", ("TPU v5 lite", "TPU v5e"), 197e12, 16e9),
    Accelerator("v5", ("TPU v5",), 459e12, 95e9),
    Accelerator("v4", ("TPU v4",), 275e12, 32e9),
    Accelerator("h200", ("H200",), 989e12, 141e9),
    Accelerator("h100", ("H100",), 989e12, 80e9),
    Accelerator("a100", ("A100",), 312e12, 80e9),
    Accelerator("b200", ("B200",), 2250e12, 192e9),
)
TPU_GENERATIONS = ("v4", "v5e", "v5p", "v6e")


def accelerator_for_topology(topology: str) -> Accelerator:
    """The chip of a TPU topology name such as ``v5p:4x4x4``."""
    generation = topology.split(":")[0]
    found = next((a for a in ACCELERATORS if a.name == generation and generation in TPU_GENERATIONS), None)
    if found is None:
        raise ValueError(f"topology {topology!r}: unknown TPU generation {generation!r}; use one of "
                         f"{TPU_GENERATIONS} (e.g. v5p:4x4x4)")
    return found


def training_flops_per_token(config: ModelConfig, seq_len: int, mtp_depth: int = 0) -> float:
    """Model FLOPs (forward + backward) per trained token at sequence length ``seq_len``; ``mtp_depth`` > 0 adds
    that many MTP steps (training with ``train.mtp_loss_weight`` > 0)."""
    counts = count_parameters(config)
    matmul = 6.0 * (counts.active_text if config.tie_word_embeddings else counts.active_text_without_input_embedding)
    num_full = sum(t == FULL_ATTENTION for t in config.layer_types)
    num_linear = config.num_hidden_layers - num_full
    attention_layer = 6.0 * seq_len * config.num_attention_heads * config.head_dim
    gdn = num_linear * 24.0 * config.linear_num_value_heads * config.linear_key_head_dim * config.linear_value_head_dim
    mtp = 0.0
    if mtp_depth > 0 and config.mtp_num_hidden_layers:
        mtp = mtp_depth * (6.0 * (counts.active_mtp + config.hidden_size * config.vocab_size) + attention_layer)
    return matmul + num_full * attention_layer + gdn + mtp


def peak_flops_per_device(device: jax.Device | None = None, override: float = 0.0) -> float | None:
    """``override`` when > 0, else the table value for the device kind, else None (unknown, e.g. CPU)."""
    if override > 0:
        return float(override)
    kind = (device or jax.devices()[0]).device_kind.lower()
    return next((a.peak_flops for a in ACCELERATORS if any(k.lower() in kind for k in a.device_kinds)), None)
