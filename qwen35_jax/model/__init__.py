"""Flax NNX modules of the Qwen3.5 family."""

from qwen35_jax.model.qwen35 import CausalLMOutput, Qwen35ForCausalLM

__all__ = ["CausalLMOutput", "Qwen35ForCausalLM"]
