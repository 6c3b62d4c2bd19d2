"""Generation: sampling rules and the jit-compiled generate loop over the model's own cache-aware forward
(``Qwen35ForCausalLM.init_cache``: KV for attention layers, conv window + fp32 state for GDN layers)."""

from qwen35_jax.infer.generate import GenerationResult, Generator, forward_with_cache, greedy_without_cache, left_pad
from qwen35_jax.infer.sampling import SamplingConfig, filter_logits, sample
from qwen35_jax.model.cache import HybridCache

__all__ = ["GenerationResult", "Generator", "HybridCache", "SamplingConfig", "filter_logits", "forward_with_cache",
           "greedy_without_cache", "left_pad", "sample"]
