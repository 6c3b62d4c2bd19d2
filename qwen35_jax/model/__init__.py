"""Flax NNX modules of the Qwen3.5 family, and ``build_model`` (the model built for a ``Runtime``)."""

from qwen35_jax.model.build import build_model, model_shardings, validate_model
from qwen35_jax.model.qwen35 import CausalLMOutput, Qwen35ForCausalLM

__all__ = ["CausalLMOutput", "Qwen35ForCausalLM", "build_model", "model_shardings", "validate_model"]
