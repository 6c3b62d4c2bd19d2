"""Released model sizes (numerics §4) as ``ModelConfig`` keyword dicts; ``configs/*.py`` build on these."""

from __future__ import annotations

from typing import Any

VISION_SMALL = dict(depth=12, hidden_size=768, intermediate_size=3072, num_heads=12)
VISION_MEDIUM = dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16)
VISION_LARGE = dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16)

QWEN35_COMMON: dict[str, Any] = dict(
    vocab_size=248320, head_dim=256, linear_num_key_heads=16, linear_key_head_dim=128, linear_value_head_dim=128,
    linear_conv_kernel_dim=4, rms_norm_eps=1e-6, rope_theta=1e7, partial_rotary_factor=0.25,
    mrope_section=(11, 11, 10), max_position_embeddings=262144, mtp_num_hidden_layers=1, variant="qwen3_5",
)
MOE_COMMON: dict[str, Any] = dict(router_aux_loss_coef=0.001, norm_topk_prob=True)


def _qwen35(hidden: int, layers: int, heads: int, kv_heads: int, value_heads: int, vision: dict[str, int],
            tie: bool, **rest: Any) -> dict[str, Any]:
    return dict(QWEN35_COMMON, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv_heads, linear_num_value_heads=value_heads, tie_word_embeddings=tie,
                vision=dict(vision, out_hidden_size=hidden), **rest)


PRESETS: dict[str, dict[str, Any]] = {
    "qwen35_0p8b": _qwen35(1024, 24, 8, 2, 16, VISION_SMALL, True, intermediate_size=3584),
    "qwen35_2b": _qwen35(2048, 24, 8, 2, 16, VISION_MEDIUM, True, intermediate_size=6144),
    "qwen35_4b": _qwen35(2560, 32, 16, 4, 32, VISION_MEDIUM, True, intermediate_size=9216),
    "qwen35_9b": _qwen35(4096, 32, 16, 4, 32, VISION_LARGE, False, intermediate_size=12288),
    "qwen35_27b": _qwen35(5120, 64, 24, 4, 48, VISION_LARGE, False, intermediate_size=17408),
    "qwen35_35b_a3b": _qwen35(2048, 40, 16, 2, 32, VISION_LARGE, False, num_experts=256, num_experts_per_tok=8,
                              moe_intermediate_size=512, shared_expert_intermediate_size=512, **MOE_COMMON),
    "qwen35_122b_a10b": _qwen35(3072, 48, 32, 2, 64, VISION_LARGE, False, num_experts=256, num_experts_per_tok=8,
                                moe_intermediate_size=1024, shared_expert_intermediate_size=1024, **MOE_COMMON),
    "qwen35_397b_a17b": _qwen35(4096, 60, 32, 2, 64, VISION_LARGE, False, num_experts=512, num_experts_per_tok=10,
                                moe_intermediate_size=1024, shared_expert_intermediate_size=1024, **MOE_COMMON),
    # Qwen3-Next: text-only, grouped GDN projections, 1-D RoPE (numerics §2.12); rope_theta from the release config.
    "qwen3_next_80b_a3b": dict(
        QWEN35_COMMON, variant="qwen3_next", vocab_size=151936, mrope_section=None, rope_theta=5e6,
        hidden_size=2048, num_hidden_layers=48, num_attention_heads=16, num_key_value_heads=2,
        linear_num_value_heads=32, intermediate_size=5120, num_experts=512, num_experts_per_tok=10,
        moe_intermediate_size=512, shared_expert_intermediate_size=512, tie_word_embeddings=False,
        bos_token_id=151643, eos_token_id=151645, **MOE_COMMON),
}

# Published checkpoint totals (numerics §4, "PC"): text + vision + MTP, exact.
PUBLISHED_TOTALS = {
    "qwen35_0p8b": 873_438_784, "qwen35_2b": 2_274_069_824, "qwen35_4b": 4_659_865_088,
    "qwen35_9b": 9_653_104_368, "qwen35_27b": 27_781_427_952, "qwen35_35b_a3b": 35_951_822_704,
    "qwen35_122b_a10b": 125_086_497_008, "qwen35_397b_a17b": 403_397_928_944,
    "qwen3_next_80b_a3b": 81_324_862_720,
}


def preset(name: str, **overrides: Any) -> dict[str, Any]:
    """A copy of preset ``name`` with ``overrides`` applied (unknown names list the valid ones)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    out = dict(PRESETS[name])
    out.update(overrides)
    return out
