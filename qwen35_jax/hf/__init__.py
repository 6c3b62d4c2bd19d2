"""Hugging Face transformers checkpoints: config and weight conversion, loading.

``load_pretrained(path)`` reads a transformers directory or our orbax checkpoint (optionally sharded over a mesh);
``import_hf`` / ``export_hf`` (``python -m tools.convert_hf``) convert between the two, streaming.
"""

from qwen35_jax.hf.convert import export_hf, import_hf
from qwen35_jax.hf.loader import load_pretrained
from qwen35_jax.hf.safetensors_io import CheckpointError

__all__ = ["CheckpointError", "export_hf", "import_hf", "load_pretrained"]
