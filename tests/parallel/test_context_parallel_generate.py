"""Generation from a model whose sequence is split over devices: the prompt is prefilled context-parallel (padded to
whole GDN chunks per device), decoding runs unsplit; greedy tokens equal the one-device model's."""

import numpy as np
from parallel_helpers import mesh_runtime, random_model, tiny_config

from qwen35_jax.infer import Generator

CONFIG = tiny_config(gdn_impl="chunked", num_experts=0, num_experts_per_tok=0, intermediate_size=32,
                     num_hidden_layers=4, layer_types=("linear_attention",) * 3 + ("full_attention",))


def test_long_prompt_prefilled_over_sequence_shards_decodes_like_one_device():
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, CONFIG.vocab_size, size=n).tolist() for n in (150, 61)]
    expected = Generator(random_model(CONFIG))(prompts, max_new_tokens=6)
    runtime = mesh_runtime(sequence=2, fsdp=4)
    generator = Generator(random_model(CONFIG, runtime=runtime))
    assert generator.prompt_multiple == 128  # 150 tokens prefill as 256: two devices x two 64-token chunks
    assert generator(prompts, max_new_tokens=6).tokens == expected.tokens

