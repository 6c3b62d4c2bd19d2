"""Build tiny random transformers Qwen3.5 / Qwen3-Next models and save reference fixtures for parity tests.

Runs in the *reference* environment (Python 3.11, torch CPU, transformers >= 5.23), from the repository root:

    .venv-ref/bin/python -m tools.hf_reference.make_fixtures --out build/hf_fixtures [--cases dense_untied,moe]

For every case it writes ``OUT/<case>/`` = ``save_pretrained`` output (config.json + model.safetensors) plus
``OUT/<case>/reference.npz`` and one ``OUT/manifest.json`` (versions, per-case class / shapes / checks).
``reference.npz`` holds ``input_ids`` int64 [B, T] and ``logits`` float32 [B, T, V] (fp32, eval, no_grad,
position ids = arange(T) for every row) and ``logits_bf16`` (the same model run in bf16); MoE cases add
``router_logits`` float32 [L_moe, B*T, E], ``aux_loss`` (scalar, no mask) and ``aux_mask`` / ``aux_loss_masked``
(``load_balancing_loss_func`` on the same router
logits with a padding mask); padded cases add ``attention_mask`` int64 [B, T]. The VL cases (``vl_dense``,
``vl_moe``) take their inputs (real images, processor output, ``get_rope_index`` positions, vision outputs) from
``vl_case.py`` and need Pillow and scikit-learn in the reference environment. See README.md beside this file.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import json
import math
import platform
import re
import shutil
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file

BASE_SEED = 20260
# Perturbation: every >=2-D weight gets p += gain / sqrt(fan_in) * randn (fan_in = last dim); OUTER_GAIN for the
# embedding, LM head and router (O(1) logits, clear top-k margins), INNER_GAIN for all other matrices (a lower
# fp32 noise floor). Norm weights, A_log, dt_bias and conv1d taps get p += VECTOR_SCALE * randn.
OUTER_GAIN = 1.0
INNER_GAIN = 0.5
VECTOR_SCALE = 0.3
OUTER_WEIGHTS = ("embed_tokens.weight", "lm_head.weight", "mlp.gate.weight")
# A = exp(A_log) is spread log-uniformly over [1e-2, 10**0.5] across the value heads of every GDN layer before the
# perturbation (HF draws U(0.01, 16)): every layer then has long-memory heads (per-token decay ~0.99, state crosses
# the 64-token chunk boundaries) and fast-forgetting heads. Only-fast heads make tiny GDN outputs that the gated
# RMSNorm amplifies, which raised the fp32 noise floor of the logits ~20x in our measurements.
A_SPREAD = (-2.0, 0.5)  # log10 range
MIN_ROUTER_GAP = 1e-4  # required logit gap between the k-th and (k+1)-th expert of every token
PAD_TOKEN = 0
AUX_MASK_PAD = 9  # aux_loss_masked masks the first 9 tokens of the last row

TEXT_SIZES: dict[str, Any] = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    linear_conv_kernel_dim=4,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    max_position_embeddings=4096,
)
# rotary dim = head_dim * 0.25 = 8 -> 4 frequencies; sum(mrope_section) must be 4.
ROPE_QWEN35: dict[str, Any] = {
    "rope_type": "default",
    "rope_theta": 1e7,
    "partial_rotary_factor": 0.25,
    "mrope_section": [2, 1, 1],
    "mrope_interleaved": True,
}
# Qwen3-Next: plain 1-D partial rope; 5e6 is the released 80B config's value (differs from 1e7 on purpose).
ROPE_NEXT: dict[str, Any] = {"rope_type": "default", "rope_theta": 5e6, "partial_rotary_factor": 0.25}
MOE_SIZES: dict[str, Any] = dict(
    num_experts=8,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=48,
)


@dataclasses.dataclass(frozen=True)
class Case:
    """One fixture: which HF class to build, its config, the input shape and what it is meant to stress."""

    name: str
    model_class: str
    config_class: str
    config: dict[str, Any]
    seq_len: int
    stresses: str
    batch: int = 2
    left_pad: int = 0  # left padding of the last sequence; > 0 adds an attention_mask
    other_expert_layout: bool = False  # rewrite save_pretrained's expert tensors in the other layout
    weights_from: str | None = None  # reuse another case's seed (identical weights and inputs)

    @property
    def is_vl(self) -> bool:
        return "vision_config" in self.config

    @property
    def text_config(self) -> dict[str, Any]:
        return self.config["text_config"] if self.is_vl else self.config

    @property
    def is_moe(self) -> bool:
        return "num_experts" in self.text_config

    @property
    def seed_name(self) -> str:
        return self.weights_from or self.name


def _qwen35_text(num_layers: int, tie: bool) -> dict[str, Any]:
    return dict(TEXT_SIZES, num_hidden_layers=num_layers, tie_word_embeddings=tie, rope_parameters=dict(ROPE_QWEN35))


def _qwen35_moe_text(num_layers: int) -> dict[str, Any]:
    config = dict(_qwen35_text(num_layers, tie=False), **MOE_SIZES)
    del config["intermediate_size"]  # not a Qwen3_5MoeTextConfig field (strict configs would keep it as an extra)
    return config


def _next_text(num_layers: int) -> dict[str, Any]:
    return dict(
        TEXT_SIZES,
        **MOE_SIZES,
        num_hidden_layers=num_layers,
        tie_word_embeddings=False,
        rope_parameters=dict(ROPE_NEXT),
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    )


def _vl(text_config: dict[str, Any]) -> dict[str, Any]:
    """A nested ``Qwen3_5Config`` / ``Qwen3_5MoeConfig`` dict (numerics §6 snippet sizes) with one MTP layer."""
    from tools.hf_reference.vl_case import TOKENS, VISION_SIZES

    return dict(text_config=dict(text_config, mtp_num_hidden_layers=1), vision_config=dict(VISION_SIZES),
                tie_word_embeddings=text_config["tie_word_embeddings"], **TOKENS)


_VL_STRESS = (
    "REAL images (sklearn china.jpg 427x640 -> grid 6x8, flower crop 200x350 -> 6x10) through transformers' "
    "Qwen2VLImageProcessorPil, two images in row 0, image + 3-frame video (grid 2x4x6, timestamps) in row 1; "
    "vision tower (bilinear pos-embed resampling 8x8 -> each grid, 2D rope, per-image/per-frame attention, "
    "2x2 merger), mRoPE get_rope_index positions, embedding scatter; Hub layout + mtp.* tensors"
)
_MOE_STRESS = (
    "Qwen3.5-MoE: 8 experts top-2, shared expert + sigmoid gate, router logits, aux loss, "
    "T=70 (2 GDN chunks), H_v=2*H_k, untied head"
)
CASES: dict[str, Case] = {
    c.name: c
    for c in [
        Case(
            "dense_untied",
            "Qwen3_5ForCausalLM",
            "Qwen3_5TextConfig",
            _qwen35_text(8, tie=False),
            70,
            "two [GDN,GDN,GDN,attn] blocks, T=70 (not a multiple of the 64-token GDN chunk), H_v=2*H_k, "
            "GQA 4q/2kv, partial rope 8/32 dims, untied head",
        ),
        Case(
            "dense_tied",
            "Qwen3_5ForCausalLM",
            "Qwen3_5TextConfig",
            _qwen35_text(4, tie=True),
            130,
            "tied embedding/head (no lm_head.weight on disk), T=130 (3 GDN chunks, ragged last chunk)",
        ),
        Case(
            "moe",
            "Qwen3_5MoeForCausalLM",
            "Qwen3_5MoeTextConfig",
            _qwen35_moe_text(4),
            70,
            _MOE_STRESS + "; experts in the layout save_pretrained writes",
        ),
        Case(
            "moe_fused",
            "Qwen3_5MoeForCausalLM",
            "Qwen3_5MoeTextConfig",
            _qwen35_moe_text(4),
            70,
            _MOE_STRESS + "; same weights as `moe`, experts rewritten in the other on-disk layout",
            other_expert_layout=True,
            weights_from="moe",
        ),
        Case(
            "next",
            "Qwen3NextForCausalLM",
            "Qwen3NextConfig",
            _next_text(4),
            130,
            "Qwen3-Next: grouped in_proj_qkvz / in_proj_ba, 1-D partial rope (theta 5e6), MoE with "
            "norm_topk_prob, T=130, untied head",
        ),
        Case(
            "dense_padded",
            "Qwen3_5ForCausalLM",
            "Qwen3_5TextConfig",
            _qwen35_text(4, tie=False),
            70,
            "second sequence left-padded by 9 tokens with attention_mask (GDN input zeroing + attention "
            "padding mask); only positions with attention_mask == 1 are meaningful",
            left_pad=9,
        ),
        # Vision-language cases: inputs, positions and vision outputs come from tools/hf_reference/vl_case.py.
        Case(
            "vl_dense",
            "Qwen3_5ForConditionalGeneration",
            "Qwen3_5Config",
            _vl(_qwen35_text(4, tie=False)),
            46,
            "Qwen3.5 VL dense: " + _VL_STRESS,
        ),
        Case(
            "vl_moe",
            "Qwen3_5MoeForConditionalGeneration",
            "Qwen3_5MoeConfig",
            _vl(_qwen35_moe_text(4)),
            46,
            "Qwen3.5 VL MoE (8 experts top-2 + shared): " + _VL_STRESS + "; main experts fused, MTP experts per "
            "expert",
        ),
    ]
}


class NearTieError(RuntimeError):
    """Top-k routing is too close to a tie for another implementation to reproduce it reliably."""


def case_seed(case: Case, attempt: int = 0) -> int:
    """A stable per-case seed (identical for cases that share weights); ``attempt`` skips near-tie draws."""
    return BASE_SEED + zlib.crc32(case.seed_name.encode()) % 10_000 + 100_000 * attempt


def build_model(case: Case, seed: int) -> torch.nn.Module:
    """Instantiate the real transformers class in fp32 and perturb every parameter."""
    torch.manual_seed(seed)
    config = getattr(transformers, case.config_class)(**copy.deepcopy(case.config))  # HF mutates rope dicts
    model = getattr(transformers, case.model_class)(config).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        spread_gdn_decay_(model)
        perturb_(model, gen)
    return model


def spread_gdn_decay_(model: torch.nn.Module) -> None:
    for name, param in model.named_parameters():
        if name.endswith("linear_attn.A_log"):
            param.copy_(torch.logspace(*A_SPREAD, param.numel()).log())


def perturbation_scale(name: str, param: torch.Tensor) -> float:
    if param.ndim < 2 or name.endswith("conv1d.weight"):
        return VECTOR_SCALE
    if name.endswith("patch_embed.proj.weight"):  # Conv3d [D, C, T, P, P]: its fan-in is C*T*P*P, not the last dim
        return INNER_GAIN / math.sqrt(math.prod(param.shape[1:]))
    gain = OUTER_GAIN if name.endswith(OUTER_WEIGHTS) else INNER_GAIN
    return gain / math.sqrt(param.shape[-1])


def perturb_(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Add noise to every parameter so no term hides behind a 0/1 init (tied weights are perturbed once)."""
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
        param.add_(noise * perturbation_scale(name, param))


def make_inputs(case: Case, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random token ids [B, T]; with ``left_pad`` the last row starts with pad tokens masked out."""
    gen = torch.Generator().manual_seed(seed + 2)
    ids = torch.randint(0, case.config["vocab_size"], (case.batch, case.seq_len), generator=gen, dtype=torch.long)
    if not case.left_pad:
        return ids, None
    mask = torch.ones_like(ids)
    ids[-1, : case.left_pad] = PAD_TOKEN
    mask[-1, : case.left_pad] = 0
    return ids, mask


@torch.no_grad()
def forward(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None, moe: bool) -> Any:
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
    if moe:
        kwargs["output_router_logits"] = True
    return model(**kwargs)


def moe_module(model: torch.nn.Module) -> Any:
    """The modeling module of the model's class (holds ``load_balancing_loss_func``)."""
    return importlib.import_module(type(model).__module__)


def router_min_gap(router_logits: torch.Tensor, top_k: int) -> float:
    """Smallest logit gap between the k-th and (k+1)-th expert over all layers and tokens."""
    top = torch.topk(router_logits.double(), top_k + 1, dim=-1).values
    return float((top[..., top_k - 1] - top[..., top_k]).min())


def logit_stats(logits: torch.Tensor, mask: torch.Tensor | None) -> dict[str, float]:
    valid = logits.reshape(-1, logits.shape[-1]) if mask is None else logits[mask.bool()]
    probs = valid.double().softmax(-1)
    return {
        "std": float(valid.std()),
        "max_abs": float(valid.abs().max()),
        "mean_max_prob": float(probs.max(-1).values.mean()),
        "mean_std_over_positions": float(valid.std(0).mean()),
    }


def reference_arrays(
    case: Case, model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None, info: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Run the fp32 forward and collect everything reference.npz stores (fills ``info`` with checks)."""
    out = forward(model, ids, mask, case.is_moe)
    logits = out.logits.float()
    if mask is not None:
        assert torch.isfinite(logits[mask.bool()]).all(), "non-finite logits at valid positions"
    else:
        assert torch.isfinite(logits).all(), "non-finite logits"
    arrays = {"input_ids": ids.numpy().astype(np.int64), "logits": logits.numpy().astype(np.float32)}
    info["logits_stats"] = logit_stats(logits, mask)
    if mask is not None:
        arrays["attention_mask"] = mask.numpy().astype(np.int64)
        info["padding_check_max_abs_diff"] = padding_check(case, model, ids, logits)
    else:
        info["decode_vs_prefill_max_abs_diff"] = decode_check(case, model, ids, logits)
    if case.is_moe:
        arrays.update(moe_arrays(case, model, out, info))
    arrays["logits_bf16"] = bf16_logits(case, model, ids, mask)
    return arrays


def bf16_logits(case: Case, model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None) -> np.ndarray:
    """The reference's own bf16 forward: how far bf16 alone moves these logits (calibrates our bf16 test)."""
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    return forward(model_bf16, ids, mask, case.is_moe).logits.float().numpy().astype(np.float32)


def padding_check(case: Case, model: torch.nn.Module, ids: torch.Tensor, logits: torch.Tensor) -> float:
    """Valid positions of the left-padded row must equal an unpadded run of the same tokens (rope is relative)."""
    alone = forward(model, ids[-1:, case.left_pad :], None, case.is_moe).logits
    diff = float((logits[-1, case.left_pad :] - alone[0]).abs().max())
    assert diff < 1e-4, f"{case.name}: padded row differs from unpadded run by {diff}"
    return diff


@torch.no_grad()
def decode_check(case: Case, model: torch.nn.Module, ids: torch.Tensor, logits: torch.Tensor) -> float:
    """Token-by-token decode with HF's cache (recurrent GDN + conv-state update) vs the chunked full forward.

    Two fp32 summation orders of the same function: the difference is an empirical fp32 noise floor for the case.
    """
    cache = transformers.DynamicCache(config=model.config)
    steps = []
    for t in range(ids.shape[1]):
        out = model(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True)
        cache = out.cache
        steps.append(out.logits.float())
    diff = float((torch.cat(steps, dim=1) - logits).abs().max())
    assert diff < 1e-3, f"{case.name}: decode differs from prefill by {diff}"
    return diff


def moe_arrays(case: Case, model: torch.nn.Module, out: Any, info: dict[str, Any]) -> dict[str, np.ndarray]:
    """Router logits [L_moe, B*T, E], the unmasked aux loss, and a masked aux loss on the same router logits."""
    router = torch.stack([r.float() for r in out.router_logits])
    text_config = getattr(model.config, "text_config", model.config)  # VL configs nest the MoE sizes
    top_k, num_experts = text_config.num_experts_per_tok, text_config.num_experts
    gap = router_min_gap(router, top_k)
    info["router_min_topk_logit_gap"] = gap
    if gap <= MIN_ROUTER_GAP:
        raise NearTieError(f"{case.name}: top-k router logit gap {gap:.2e}")
    aux = out.aux_loss.float()
    aux_mask = torch.ones(case.batch, case.seq_len, dtype=torch.long)
    aux_mask[-1, :AUX_MASK_PAD] = 0
    aux_masked = moe_module(model).load_balancing_loss_func(tuple(out.router_logits), num_experts, top_k, aux_mask)
    info["aux_loss"], info["aux_loss_masked"] = float(aux), float(aux_masked)
    return {
        "router_logits": router.numpy().astype(np.float32),
        "aux_loss": np.asarray(aux.item(), dtype=np.float32),
        "aux_mask": aux_mask.numpy().astype(np.int64),
        "aux_loss_masked": np.asarray(float(aux_masked), dtype=np.float32),
    }


# ---------------------------------------------------------------------------------------------- expert layouts

_PER_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_FUSED = re.compile(r"^(.*\.mlp\.experts)\.(gate_up_proj|down_proj)$")


def expert_layout(keys: list[str]) -> str:
    if any(_PER_EXPERT.match(k) for k in keys):
        return "per_expert"
    if any(_FUSED.match(k) for k in keys):
        return "fused"
    return "none"


def fuse_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-expert keys -> Hub layout gate_up_proj [E, 2*I, H] (gate rows first) and down_proj [E, H, I]."""
    out, groups = {}, {}
    for key, value in state.items():
        m = _PER_EXPERT.match(key)
        if m is None:
            out[key] = value
        else:
            groups.setdefault(m.group(1), {})[(int(m.group(2)), m.group(3))] = value
    for prefix, parts in groups.items():
        num = 1 + max(e for e, _ in parts)
        out[f"{prefix}.gate_up_proj"] = torch.stack(
            [torch.cat([parts[(e, "gate_proj")], parts[(e, "up_proj")]], dim=0) for e in range(num)]
        )
        out[f"{prefix}.down_proj"] = torch.stack([parts[(e, "down_proj")] for e in range(num)])
    return {k: v.contiguous() for k, v in out.items()}


def split_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fused gate_up_proj / down_proj -> per-expert ``experts.{e}.{gate,up,down}_proj.weight``."""
    out = {}
    for key, value in state.items():
        m = _FUSED.match(key)
        if m is None:
            out[key] = value
        elif m.group(2) == "gate_up_proj":
            inter = value.shape[1] // 2
            for e in range(value.shape[0]):
                out[f"{m.group(1)}.{e}.gate_proj.weight"] = value[e, :inter]
                out[f"{m.group(1)}.{e}.up_proj.weight"] = value[e, inter:]
        else:
            for e in range(value.shape[0]):
                out[f"{m.group(1)}.{e}.down_proj.weight"] = value[e]
    return {k: v.contiguous() for k, v in out.items()}


def rewrite_expert_layout(case_dir: Path) -> tuple[str, str]:
    """Rewrite model.safetensors in the layout save_pretrained did not use; returns (before, after)."""
    path = case_dir / "model.safetensors"
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    state = load_file(path)
    before = expert_layout(list(state))
    state = fuse_experts(state) if before == "per_expert" else split_experts(state)
    save_file(state, path, metadata=metadata or {"format": "pt"})
    return before, expert_layout(list(state))


# ---------------------------------------------------------------------------------------------- driver


def write_vl_checkpoint(case_dir: Path, draw: Draw) -> dict[str, Any]:
    """Turn ``save_pretrained``'s VL output into the Hub layout: fused main experts plus ``mtp.*`` tensors."""
    from tools.hf_reference.vl_case import add_mtp_and_hub_layout, mtp_tensors

    gen = torch.Generator().manual_seed(draw.seed + 3)
    mtp = mtp_tensors(draw.model, gen, perturb_)
    return add_mtp_and_hub_layout(case_dir / "model.safetensors", mtp, fuse_experts)


def tensor_table(case_dir: Path) -> dict[str, list[int]]:
    with safe_open(case_dir / "model.safetensors", "pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in sorted(f.keys())}


def reload_check(case: Case, case_dir: Path, ids: torch.Tensor, mask: torch.Tensor | None, logits: np.ndarray,
                 vl_kwargs: dict[str, torch.Tensor] | None = None) -> float:
    """``from_pretrained`` the written directory and require bit-identical logits."""
    cls = getattr(transformers, case.model_class)
    reloaded = cls.from_pretrained(case_dir, dtype=torch.float32).eval()
    if vl_kwargs is not None:
        with torch.no_grad():
            again = reloaded(**vl_kwargs, use_cache=False).logits.float().numpy()
    else:
        again = forward(reloaded, ids, mask, case.is_moe).logits.float().numpy()
    diff = float(np.abs(again - logits).max())
    assert np.array_equal(again, logits), f"{case.name}: reloaded logits differ by {diff}"
    return diff


@dataclasses.dataclass
class Draw:
    """A built model with its inputs, reference arrays and check results."""

    seed: int
    model: torch.nn.Module
    ids: torch.Tensor
    mask: torch.Tensor | None
    arrays: dict[str, np.ndarray]
    info: dict[str, Any]
    vl_kwargs: dict[str, torch.Tensor] | None = None  # VL cases: the full model kwargs (pixel values, grids, ...)


def draw_vl_case(case: Case, seed: int, attempt: int) -> Draw:
    """VL case: real images through the HF processor, fp32 forward, vision outputs, ``get_rope_index`` positions."""
    from tools.hf_reference.vl_case import make_vl_inputs, vl_reference_arrays

    model = build_model(case, seed)
    kwargs, stored = make_vl_inputs(seed)
    info: dict[str, Any] = {"seed_attempt": attempt}
    arrays, out = vl_reference_arrays(model, kwargs, stored, case.is_moe, info)
    info["logits_stats"] = logit_stats(out.logits.float(), None)
    if case.is_moe:
        arrays.update(moe_arrays(case, model, out, info))
    return Draw(seed, model, kwargs["input_ids"], None, arrays, info, vl_kwargs=kwargs)


def draw_case(case: Case, max_attempts: int = 8) -> Draw:
    """Build and run the case, re-drawing (deterministically) while the MoE routing has a near-tie."""
    for attempt in range(max_attempts):
        seed = case_seed(case, attempt)
        if case.is_vl:
            try:
                return draw_vl_case(case, seed, attempt)
            except NearTieError as err:
                print(f"{err}; re-drawing")
                continue
        model = build_model(case, seed)
        ids, mask = make_inputs(case, seed)
        info: dict[str, Any] = {"seed_attempt": attempt}
        try:
            return Draw(seed, model, ids, mask, reference_arrays(case, model, ids, mask, info), info)
        except NearTieError as err:
            print(f"{err}; re-drawing")
    raise RuntimeError(f"{case.name}: no tie-free draw in {max_attempts} attempts")


def make_case(case: Case, out_dir: Path) -> dict[str, Any]:
    """Build, run and save one case; returns its manifest entry."""
    t0 = time.time()
    draw = draw_case(case)
    info, arrays = draw.info, draw.arrays
    case_dir = out_dir / case.name
    if case_dir.exists():
        shutil.rmtree(case_dir)
    draw.model.save_pretrained(case_dir)
    with safe_open(case_dir / "model.safetensors", "pt") as f:
        layout = expert_layout(list(f.keys()))
    if case.other_expert_layout:
        saved_layout, layout = rewrite_expert_layout(case_dir)
        info["save_pretrained_expert_layout"] = saved_layout
    if case.is_vl:
        info.update(write_vl_checkpoint(case_dir, draw))
        layout = "fused (main) + per_expert (mtp)" if case.is_moe else "none"
    np.savez(case_dir / "reference.npz", **arrays)
    info["reload_max_abs_diff"] = reload_check(case, case_dir, draw.ids, draw.mask, arrays["logits"], draw.vl_kwargs)
    cfg = draw.model.config
    return {
        "class": case.model_class,
        "config_class": case.config_class,
        "model_type": cfg.model_type,
        "batch": case.batch,
        "seq_len": case.seq_len,
        "left_pad": case.left_pad,
        "stresses": case.stresses,
        "seed": draw.seed,
        "weights_from": case.weights_from,
        "layer_types": list(getattr(cfg, "text_config", cfg).layer_types),
        "tie_word_embeddings": bool(cfg.tie_word_embeddings),
        "attn_implementation": cfg._attn_implementation,
        "experts_implementation": cfg._experts_implementation if case.is_moe else None,
        "expert_layout_on_disk": layout,
        "arrays": {k: list(v.shape) for k, v in arrays.items()},
        "tensors": tensor_table(case_dir),
        **info,
        "seconds": round(time.time() - t0, 2),
    }


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
    }


def write_manifest(out_dir: Path, entries: dict[str, Any]) -> None:
    """Merge with an existing manifest so ``--cases`` subsets keep the other cases' entries."""
    path = out_dir / "manifest.json"
    old = json.loads(path.read_text()).get("cases", {}) if path.exists() else {}
    manifest = {
        "generator": "tools.hf_reference.make_fixtures",
        "versions": versions(),
        "perturbation": {
            "matrices": f"p += gain/sqrt(fan_in) * randn, fan_in = last dim, gain {OUTER_GAIN} for {OUTER_WEIGHTS}, "
            f"{INNER_GAIN} otherwise",
            "vectors": f"p += {VECTOR_SCALE} * randn (norm weights, A_log, dt_bias, conv1d taps)",
            "A_log": f"set to log(logspace{A_SPREAD}) over the value heads of each GDN layer before perturbing",
        },
        "position_ids": "arange(T) for every row (HF forward default; padding does not shift positions)",
        "cases": {**old, **entries},
    }
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {list(CASES)}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    names = [n for n in args.cases.split(",") if n]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; choose from {list(CASES)}")
    torch.set_num_threads(1)  # tiny ops: threads only add contention; also keeps reductions reproducible
    transformers.logging.set_verbosity_error()  # silences the "falling back to PyTorch kernels" notices
    transformers.utils.logging.disable_progress_bar()
    args.out.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name in names:
        entries[name] = make_case(CASES[name], args.out)
        print(
            f"{name}: {entries[name]['seconds']}s  logits std {entries[name]['logits_stats']['std']:.3f}"
            + (f"  aux_loss {entries[name]['aux_loss']:.6f}" if "aux_loss" in entries[name] else "")
        )
    write_manifest(args.out, entries)
    print(f"wrote {len(entries)} case(s) and manifest.json to {args.out}")


if __name__ == "__main__":
    main()
