"""Compute kernels with several implementations (reference, XLA, Pallas)."""

from qwen35_jax.ops.gated_delta_rule import gated_delta_rule, gated_delta_rule_decode_step

__all__ = ["gated_delta_rule", "gated_delta_rule_decode_step"]
