"""Hugging Face transformers checkpoints: config and weight conversion, loading.

``config_from_hf(path_or_dict)`` / ``config_to_hf(config)`` map a transformers ``config.json`` to our ModelConfig.

``load_pretrained(path)`` reads a transformers directory or our orbax checkpoint (optionally sharded over a mesh);
``import_hf`` / ``export_hf`` (``python -m tools.convert_hf``) convert between the two, streaming.
"""

from qwen35_jax.hf.config_io import config_from_hf, config_to_hf
from qwen35_jax.hf.convert import export_hf, import_hf
from qwen35_jax.hf.loader import load_pretrained
from qwen35_jax.hf.safetensors_io import CheckpointError

__all__ = ["CheckpointError", "config_from_hf", "config_to_hf", "export_hf", "import_hf", "load_pretrained"]
