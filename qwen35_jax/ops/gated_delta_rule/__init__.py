"""Gated delta rule (Gated DeltaNet core): sequence op with several implementations, plus the decode step."""

from qwen35_jax.ops.gated_delta_rule.api import IMPLS, gated_delta_rule
from qwen35_jax.ops.gated_delta_rule.decode import gated_delta_rule_decode_step

__all__ = ["IMPLS", "gated_delta_rule", "gated_delta_rule_decode_step"]
