"""Generation: the hybrid decoding cache (KV for attention layers, conv window + fp32 state for GDN layers),
sampling rules and the jit-compiled generate loop."""

from qwen35_jax.infer.cache import HybridCache, init_cache
from qwen35_jax.infer.generate import GenerationResult, Generator, forward_with_cache, greedy_without_cache, left_pad
from qwen35_jax.infer.sampling import SamplingConfig, filter_logits, sample

__all__ = ["GenerationResult", "Generator", "HybridCache", "SamplingConfig", "filter_logits", "forward_with_cache",
           "greedy_without_cache", "init_cache", "left_pad", "sample"]
