"""Hugging Face transformers checkpoints: config and weight conversion, loading."""

from qwen35_jax.hf.loader import load_pretrained
from qwen35_jax.hf.safetensors_io import CheckpointError

__all__ = ["CheckpointError", "load_pretrained"]
