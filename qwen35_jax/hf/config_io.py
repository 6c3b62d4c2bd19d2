"""transformers ``config.json`` ↔ ``ModelConfig`` (numerics §4; HF-C field names).

  config = config_from_hf("path/to/hf_dir")            # or the config.json path, or a parsed dict
  hf = config_to_hf(config)                            # the transformers config.json dict
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from qwen35_jax.config import FULL_ATTENTION, ModelConfig, VisionConfig

DEFAULT_MROPE_SECTION = (11, 11, 10)  # what HF falls back to when a Qwen3.5 config omits it (numerics §2.3.1)
TEXT_MODEL_TYPES = {"qwen3_5_text": "qwen3_5", "qwen3_5_moe_text": "qwen3_5", "qwen3_next": "qwen3_next"}
VL_MODEL_TYPES = {"qwen3_5": "qwen3_5_text", "qwen3_5_moe": "qwen3_5_moe_text"}
# Fields copied verbatim when present (HF name == our name).
PLAIN_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "intermediate_size", "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
    "linear_value_head_dim", "linear_conv_kernel_dim", "full_attention_interval", "num_experts",
    "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size", "norm_topk_prob",
    "router_aux_loss_coef", "max_position_embeddings", "rms_norm_eps", "hidden_act", "attention_bias",
    "attn_output_gate", "mtp_num_hidden_layers", "mtp_use_dedicated_embeddings", "bos_token_id", "eos_token_id",
    "pad_token_id",
)
TOKEN_FIELDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
VISION_FIELDS = ("depth", "hidden_size", "intermediate_size", "num_heads", "patch_size", "temporal_patch_size",
                 "spatial_merge_size", "in_channels", "out_hidden_size", "num_position_embeddings", "hidden_act")


def hf_incompatibility(config: ModelConfig) -> str | None:
    """Why transformers' Qwen3.5 / Qwen3-Next classes cannot hold or run ``config`` (an ablation of ours, numerics
    §10), or None when they can."""
    if not config.attn_output_gate:
        return ("attn_output_gate=False: transformers' Qwen3.5 / Qwen3-Next attention always has the sigmoid output "
                "gate (its q_proj yields [query | gate] per head), so an ungated model has no transformers form")
    if config.width_multiplier != 1.0:
        return (f"parametrization='mup' at hidden_size={config.hidden_size} != mup_base_width="
                f"{config.mup_base_width}: its 1 / width multipliers on the LM head, router and shared-expert gate "
                "logits (numerics §12) have no transformers form")
    if FULL_ATTENTION not in config.layer_types:
        return ("no full-attention layer (full_attention_interval=0 or an all-linear layer_types): transformers' "
                "Qwen3.5 / Qwen3-Next forward needs at least one (its hybrid cache sizes the mask from one)")
    return None


def check_hf_compatible(config: ModelConfig) -> None:
    """Raise ValueError when ``config`` has no transformers form (``hf_incompatibility``); before any file is
    written by a conversion or export."""
    reason = hf_incompatibility(config)
    if reason is not None:
        raise ValueError(f"cannot express this model as a transformers checkpoint: {reason}. Keep it in our orbax "
                         "checkpoints (training workdirs, experiments.generate / eval load them directly)")


def _rope_fields(text: Mapping[str, Any], variant: str) -> dict[str, Any]:
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    out = {
        "rope_theta": float(rope.get("rope_theta", text.get("rope_theta", 10000.0))),
        "partial_rotary_factor": float(rope.get("partial_rotary_factor", text.get("partial_rotary_factor", 1.0))),
    }
    if rope.get("rope_type", "default") != "default":
        raise NotImplementedError(f"rope_type={rope['rope_type']!r} is not supported (only 'default')")
    rotary = int(text.get("head_dim", 256) * out["partial_rotary_factor"])
    section = tuple(rope.get("mrope_section") or DEFAULT_MROPE_SECTION)
    # Qwen3-Next and NoPE have no sections; (R/2, 0, 0) is what config_to_hf writes for our 1-D positions (None).
    one_d = rotary == 0 or (len(section) == 3 and section[1:] == (0, 0) and section[0] == rotary // 2)
    out["mrope_section"] = None if variant == "qwen3_next" or one_d else section
    return out


def model_config_kwargs_from_hf(hf: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``ModelConfig`` for a transformers config dict (VL or text-only)."""
    model_type = hf.get("model_type")
    if model_type in VL_MODEL_TYPES:
        text, vision = dict(hf["text_config"]), hf.get("vision_config")
        top = hf
    elif model_type in TEXT_MODEL_TYPES:
        text, vision, top = dict(hf), None, hf
    else:
        known = sorted(VL_MODEL_TYPES) + sorted(TEXT_MODEL_TYPES)
        raise ValueError(f"config.json model_type={model_type!r} is not a Qwen3.5 / Qwen3-Next config; expected one "
                         f"of {known}")
    variant = TEXT_MODEL_TYPES[text.get("model_type", VL_MODEL_TYPES.get(model_type, model_type))]
    if text.get("attn_output_gate", True) is False:
        raise ValueError("config.json has attn_output_gate=false, but transformers' Qwen3.5 / Qwen3-Next attention "
                         "ignores that field and always gates (q_proj holds [query | gate] per head): the weights "
                         "cannot be an ungated model; remove the field or set it to true")
    if variant == "qwen3_next" and (text.get("decoder_sparse_step", 1) != 1 or text.get("mlp_only_layers")):
        raise NotImplementedError("Qwen3-Next configs with dense layers (decoder_sparse_step != 1 or "
                                  "mlp_only_layers) are not supported: every released checkpoint is all-MoE")
    kwargs: dict[str, Any] = {name: text[name] for name in PLAIN_FIELDS if name in text}
    kwargs.setdefault("mtp_num_hidden_layers", 0)
    kwargs["variant"] = variant
    kwargs["layer_types"] = tuple(text["layer_types"]) if text.get("layer_types") else None
    kwargs["tie_word_embeddings"] = bool(top.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    kwargs.update(_rope_fields(text, variant))
    for name in TOKEN_FIELDS:
        if name in top:
            kwargs[name] = top[name]
    if vision is not None:
        kwargs["vision"] = VisionConfig(**{name: vision[name] for name in VISION_FIELDS if name in vision})
    return kwargs


def config_from_hf(source: str | os.PathLike | Mapping[str, Any], **overrides: Any) -> ModelConfig:
    """The ModelConfig of a transformers ``config.json`` (path to the file or its directory) or an already-parsed
    dict; ``overrides`` replace fields (e.g. ``dtype="bfloat16"``)."""
    if isinstance(source, Mapping):
        hf = dict(source)
    else:
        path = os.fspath(source)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        with open(path) as f:
            hf = json.load(f)
    kwargs = model_config_kwargs_from_hf(hf)
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """The transformers ``config.json`` dict for ``config`` (text-only ``*ForCausalLM``, or the VL wrapper when
    ``config.vision`` is set). Raises ValueError for a model transformers cannot express (``hf_incompatibility``)."""
    check_hf_compatible(config)
    moe = config.is_moe
    text: dict[str, Any] = {name: getattr(config, name) for name in PLAIN_FIELDS}
    if not moe:
        for name in ("num_experts", "num_experts_per_tok", "moe_intermediate_size",
                     "shared_expert_intermediate_size", "norm_topk_prob", "router_aux_loss_coef"):
            text.pop(name)
    text["layer_types"] = list(config.layer_types)
    text["tie_word_embeddings"] = config.tie_word_embeddings
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": config.rope_theta,
                               "partial_rotary_factor": config.partial_rotary_factor}
    if config.eos_token_id is not None and not isinstance(config.eos_token_id, int):
        text["eos_token_id"] = list(config.eos_token_id)
    if config.variant == "qwen3_next":
        text.update(model_type="qwen3_next", architectures=["Qwen3NextForCausalLM"], decoder_sparse_step=1,
                    mlp_only_layers=[])
        return text
    # mrope_section=None (1-D positions: every frequency follows the temporal row) is the section (R/2, 0, 0)
    # exactly, for any positions; transformers would otherwise fill in (11, 11, 10). NoPE writes (0, 0, 0).
    section = config.mrope_section or (config.rotary_dim // 2, 0, 0)
    text["rope_parameters"].update(mrope_section=list(section), mrope_interleaved=True)
    text["model_type"] = "qwen3_5_moe_text" if moe else "qwen3_5_text"
    if config.vision is None:
        text["architectures"] = ["Qwen3_5MoeForCausalLM" if moe else "Qwen3_5ForCausalLM"]
        return text
    vision = dataclasses.asdict(config.vision)
    vision["model_type"] = "qwen3_5_moe_vision" if moe else "qwen3_5_vision"
    vision["deepstack_visual_indexes"] = []
    out = {
        "model_type": "qwen3_5_moe" if moe else "qwen3_5",
        "architectures": ["Qwen3_5MoeForConditionalGeneration" if moe else "Qwen3_5ForConditionalGeneration"],
        "text_config": text,
        "vision_config": vision,
        "tie_word_embeddings": config.tie_word_embeddings,
    }
    out.update({name: getattr(config, name) for name in TOKEN_FIELDS})
    return out
