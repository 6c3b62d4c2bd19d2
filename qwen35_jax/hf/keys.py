"""Name and layout map between transformers checkpoints and our parameters (numerics §6.1, §2.12).

Each ``Rule`` ties one group of HF tensors to one group of our parameters, with the conversion both ways (HF
``nn.Linear`` weights are ``[out, in]``; ours are ``[in, *out]`` with explicit head axes). One HF tensor can feed
several of ours (``in_proj_qkv`` → q, k, v) and vice versa. Per-expert HF keys are fused before matching
(``fuse_per_expert_keys``), so rules only know the Hub's fused ``experts.gate_up_proj`` / ``experts.down_proj``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from qwen35_jax.config import FULL_ATTENTION, LINEAR_ATTENTION, ModelConfig
from qwen35_jax.hf.config_io import check_hf_compatible

Arrays = list[np.ndarray]
Path = tuple[str | int, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: tuple[str, ...]
    ours: tuple[Path, ...]
    to_ours: Callable[[Arrays], Arrays]
    to_hf: Callable[[Arrays], Arrays]


def same(hf: str, ours: Path) -> Rule:
    return Rule((hf,), (ours,), lambda a: [a[0]], lambda a: [a[0]])


def linear(hf: str, ours: Path, out_shape: tuple[int, ...] = ()) -> Rule:
    """HF ``[out, in]`` ↔ ours ``[in, *out_shape]`` (``out_shape`` splits the output features into heads)."""
    def to_ours(a: Arrays) -> Arrays:
        w = a[0].T
        return [w.reshape(w.shape[0], *out_shape) if out_shape else w]

    return Rule((hf,), (ours,), to_ours, lambda a: [a[0].reshape(a[0].shape[0], -1).T])


def linear_heads_in(hf: str, ours: Path, in_shape: tuple[int, ...]) -> Rule:
    """HF ``[out, heads·dim]`` ↔ ours ``[heads, dim, out]`` (output projections)."""
    return Rule((hf,), (ours,), lambda a: [a[0].T.reshape(*in_shape, a[0].shape[0])],
                lambda a: [a[0].reshape(-1, a[0].shape[-1]).T])


def split_linear(hf: str, ours: tuple[Path, ...], shapes: tuple[tuple[int, ...], ...]) -> Rule:
    """One HF ``[Σ out, in]`` weight whose output rows are consecutive blocks, one block per parameter of ours."""
    sizes = [int(np.prod(s)) for s in shapes]

    def to_ours(a: Arrays) -> Arrays:
        blocks = np.split(a[0], np.cumsum(sizes)[:-1], axis=0)
        return [b.T.reshape(b.shape[1], *s) for b, s in zip(blocks, shapes, strict=True)]

    def to_hf(a: Arrays) -> Arrays:
        return [np.concatenate([w.reshape(w.shape[0], -1).T for w in a], axis=0)]

    return Rule((hf,), ours, to_ours, to_hf)


def split_conv(hf: str, ours: tuple[Path, ...], shapes: tuple[tuple[int, ...], ...]) -> Rule:
    """Depthwise ``conv1d.weight [C, 1, K]`` ↔ per-part ``[K, heads, dim]``."""
    sizes = [int(np.prod(s)) for s in shapes]

    def to_ours(a: Arrays) -> Arrays:
        taps = a[0][:, 0, :].T  # [K, C]
        parts = np.split(taps, np.cumsum(sizes)[:-1], axis=1)
        return [b.reshape(b.shape[0], *s) for b, s in zip(parts, shapes, strict=True)]

    def to_hf(a: Arrays) -> Arrays:
        return [np.concatenate([w.reshape(w.shape[0], -1) for w in a], axis=1).T[:, None, :]]

    return Rule((hf,), ours, to_ours, to_hf)


def grouped_linear(hf: str, ours: tuple[Path, ...], parts: tuple[int, ...], groups: int,
                   shapes: tuple[tuple[int, ...], ...]) -> Rule:
    """Qwen3-Next grouped projection: rows are ``groups`` blocks, each ``[part_0 | part_1 | ...]`` (numerics §2.12)."""
    def to_ours(a: Arrays) -> Arrays:
        w = a[0].reshape(groups, sum(parts), -1)
        blocks = np.split(w, np.cumsum(parts)[:-1], axis=1)  # each [groups, part, in]
        return [b.reshape(-1, b.shape[-1]).T.reshape(b.shape[-1], *s) for b, s in zip(blocks, shapes, strict=True)]

    def to_hf(a: Arrays) -> Arrays:
        blocks = [w.reshape(w.shape[0], groups, -1).transpose(1, 2, 0) for w in a]  # each [groups, part, in]
        return [np.concatenate(blocks, axis=1).reshape(-1, a[0].shape[0])]

    return Rule((hf,), ours, to_ours, to_hf)


def fused_experts(prefix: str, ours: Path, moe_size: int) -> Rule:
    """Hub ``experts.gate_up_proj [E, 2I, H]`` (gate rows first) + ``down_proj [E, H, I]`` ↔ ours gate/up
    ``[E, H, I]`` and down ``[E, I, H]``."""
    def to_ours(a: Arrays) -> Arrays:
        gate_up, down = a
        return [gate_up[:, :moe_size].transpose(0, 2, 1), gate_up[:, moe_size:].transpose(0, 2, 1),
                down.transpose(0, 2, 1)]

    def to_hf(a: Arrays) -> Arrays:
        gate, up, down = a
        return [np.concatenate([gate, up], axis=2).transpose(0, 2, 1), down.transpose(0, 2, 1)]

    return Rule((f"{prefix}experts.gate_up_proj", f"{prefix}experts.down_proj"),
                (ours + ("experts_gate",), ours + ("experts_up",), ours + ("experts_down",)), to_ours, to_hf)


def mlp_rules(prefix: str, ours: Path) -> list[Rule]:
    return [linear(f"{prefix}{name}.weight", ours + (name,)) for name in ("gate_proj", "up_proj", "down_proj")]


def absent_shared_expert(prefix: str, hidden: int) -> Rule:
    """``shared_expert_intermediate_size = 0``: we have no shared expert, transformers always builds one (numerics
    §10). Its width-0 tensors and gate have no parameter of ours; they are written as empty / zero tensors (the
    shared output is exactly 0 whatever the gate), and on import the projections must be empty."""
    names = tuple(f"{prefix}shared_expert.{n}.weight" for n in ("gate_proj", "up_proj", "down_proj"))

    def to_ours(a: Arrays) -> Arrays:
        if any(x.size for x in a[:3]):
            raise ValueError("shared_expert_intermediate_size is 0 but the shared expert's projections are not empty")
        return []

    def to_hf(a: Arrays) -> Arrays:
        empty = np.zeros((0, hidden), np.float32)
        return [empty, empty, empty.T, np.zeros((1, hidden), np.float32)]

    return Rule((*names, f"{prefix}shared_expert_gate.weight"), (), to_ours, to_hf)


def ffn_rules(config: ModelConfig, prefix: str, ours: Path) -> list[Rule]:
    if not config.is_moe:
        return mlp_rules(prefix, ours)
    rules = [linear(f"{prefix}gate.weight", ours + ("router",)),
             fused_experts(prefix, ours, config.moe_intermediate_size)]
    if config.shared_expert_intermediate_size:
        rules += mlp_rules(f"{prefix}shared_expert.", ours + ("shared_expert",))
        rules.append(linear(f"{prefix}shared_expert_gate.weight", ours + ("shared_expert_gate",)))
    else:
        rules.append(absent_shared_expert(prefix, config.hidden_size))
    return rules


def gdn_rules(config: ModelConfig, prefix: str, ours: Path) -> list[Rule]:
    hk, hv = config.linear_num_key_heads, config.linear_num_value_heads
    dk, dv = config.linear_key_head_dim, config.linear_value_head_dim
    qkv_shapes = ((hk, dk), (hk, dk), (hv, dv))
    rules = [
        split_conv(f"{prefix}conv1d.weight", (ours + ("conv_q",), ours + ("conv_k",), ours + ("conv_v",)),
                   qkv_shapes),
        same(f"{prefix}A_log", ours + ("A_log",)),
        same(f"{prefix}dt_bias", ours + ("dt_bias",)),
        same(f"{prefix}norm.weight", ours + ("norm", "weight")),
        linear_heads_in(f"{prefix}out_proj.weight", ours + ("out_proj",), (hv, dv)),
    ]
    if config.variant == "qwen3_next":
        r = hv // hk
        rules += [
            grouped_linear(f"{prefix}in_proj_qkvz.weight", tuple(ours + (n,) for n in ("in_proj_q", "in_proj_k",
                                                                                   "in_proj_v", "in_proj_z")),
                           (dk, dk, r * dv, r * dv), hk, ((hk, dk), (hk, dk), (hv, dv), (hv, dv))),
            grouped_linear(f"{prefix}in_proj_ba.weight", (ours + ("in_proj_b",), ours + ("in_proj_a",)), (r, r), hk,
                           ((hv,), (hv,))),
        ]
    else:
        rules += [
            split_linear(f"{prefix}in_proj_qkv.weight", (ours + ("in_proj_q",), ours + ("in_proj_k",),
                                                         ours + ("in_proj_v",)), qkv_shapes),
            linear(f"{prefix}in_proj_z.weight", ours + ("in_proj_z",), (hv, dv)),
            linear(f"{prefix}in_proj_b.weight", ours + ("in_proj_b",)),
            linear(f"{prefix}in_proj_a.weight", ours + ("in_proj_a",)),
        ]
    return rules


def attention_rules(config: ModelConfig, prefix: str, ours: Path) -> list[Rule]:
    nq, nkv, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    return [
        linear(f"{prefix}q_proj.weight", ours + ("q_proj",), (nq, 2 * hd)),
        linear(f"{prefix}k_proj.weight", ours + ("k_proj",), (nkv, hd)),
        linear(f"{prefix}v_proj.weight", ours + ("v_proj",), (nkv, hd)),
        linear_heads_in(f"{prefix}o_proj.weight", ours + ("o_proj",), (nq, hd)),
        same(f"{prefix}q_norm.weight", ours + ("q_norm", "weight")),
        same(f"{prefix}k_norm.weight", ours + ("k_norm", "weight")),
    ]


def decoder_layer_rules(config: ModelConfig, layer_type: str, prefix: str, ours: Path) -> list[Rule]:
    rules = [same(f"{prefix}input_layernorm.weight", ours + ("input_layernorm", "weight")),
             same(f"{prefix}post_attention_layernorm.weight", ours + ("post_attention_layernorm", "weight"))]
    if layer_type == LINEAR_ATTENTION:
        rules += gdn_rules(config, f"{prefix}linear_attn.", ours + ("linear_attn",))
    else:
        rules += attention_rules(config, f"{prefix}self_attn.", ours + ("self_attn",))
    return rules + ffn_rules(config, f"{prefix}mlp.", ours + ("mlp",))


def vision_rules(config: ModelConfig, prefix: str = "model.visual.") -> list[Rule]:
    vision = config.vision
    ours: Path = ("visual",)

    def affine(hf: str, path: Path) -> list[Rule]:
        return [linear(f"{hf}.weight", path + ("kernel",)), same(f"{hf}.bias", path + ("bias",))]

    def norm(hf: str, path: Path) -> list[Rule]:
        return [same(f"{hf}.weight", path + ("weight",)), same(f"{hf}.bias", path + ("bias",))]

    d = vision.hidden_size
    rules = [
        Rule((f"{prefix}patch_embed.proj.weight",), (ours + ("patch_embed", "kernel"),),
             lambda a: [a[0].reshape(d, -1).T],
             lambda a: [a[0].T.reshape(d, vision.in_channels, vision.temporal_patch_size, vision.patch_size,
                                       vision.patch_size)]),
        same(f"{prefix}patch_embed.proj.bias", ours + ("patch_embed", "bias")),
        same(f"{prefix}pos_embed.weight", ours + ("pos_embed",)),
        *norm(f"{prefix}merger.norm", ours + ("merger_norm",)),
        *affine(f"{prefix}merger.linear_fc1", ours + ("merger_fc1",)),
        *affine(f"{prefix}merger.linear_fc2", ours + ("merger_fc2",)),
    ]
    for b in range(vision.depth):
        hf, path = f"{prefix}blocks.{b}.", ours + ("blocks", b)
        rules += [*norm(f"{hf}norm1", path + ("norm1",)), *norm(f"{hf}norm2", path + ("norm2",)),
                  *affine(f"{hf}attn.qkv", path + ("qkv",)), *affine(f"{hf}attn.proj", path + ("proj",)),
                  *affine(f"{hf}mlp.linear_fc1", path + ("fc1",)), *affine(f"{hf}mlp.linear_fc2", path + ("fc2",))]
    return rules


@dataclasses.dataclass(frozen=True)
class StackedRule:
    """A rule whose parameters of ours live in the scanned stack at leading index ``block``."""

    rule: Rule
    block: int | None  # None: the parameter is not stacked


def checkpoint_rules(config: ModelConfig, text_prefix: str = "model.") -> list[StackedRule]:
    """Every rule for ``config`` (text stack, head, MTP and vision as the config has them); ValueError for a config
    transformers cannot express (``config_io.hf_incompatibility``)."""
    check_hf_compatible(config)
    rules = [StackedRule(same(f"{text_prefix}embed_tokens.weight", ("embed_tokens",)), None),
             StackedRule(same(f"{text_prefix}norm.weight", ("norm", "weight")), None)]
    if not config.tie_word_embeddings:
        rules.append(StackedRule(linear("lm_head.weight", ("lm_head",)), None))
    period = len(config.block_pattern)
    for index, layer_type in enumerate(config.layer_types):
        block, slot = divmod(index, period)
        for rule in decoder_layer_rules(config, layer_type, f"{text_prefix}layers.{index}.",
                                        ("decoder", "blocks", "layers", slot)):
            rules.append(StackedRule(rule, block))
    if config.mtp_num_hidden_layers:
        mtp_rules = [same("mtp.pre_fc_norm_embedding.weight", ("mtp", "pre_fc_norm_embedding", "weight")),
                     same("mtp.pre_fc_norm_hidden.weight", ("mtp", "pre_fc_norm_hidden", "weight")),
                     linear("mtp.fc.weight", ("mtp", "fc")),
                     same("mtp.norm.weight", ("mtp", "norm", "weight"))]
        for i in range(config.mtp_num_hidden_layers):
            mtp_rules += decoder_layer_rules(config, FULL_ATTENTION, f"mtp.layers.{i}.", ("mtp", "layers", i))
        rules += [StackedRule(r, None) for r in mtp_rules]
    if config.vision is not None:
        rules += [StackedRule(r, None) for r in vision_rules(config)]
    return rules


PER_EXPERT = re.compile(r"^(?P<prefix>.*\.experts\.)(?P<expert>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight$")


def group_per_expert_keys(names: Iterable[str]) -> tuple[list[str], dict[str, dict[str, list[str]]]]:
    """Split names into plain ones and per-expert groups ``{prefix: {proj: [name of expert 0, 1, ...]}}``.

    Raises ``ValueError`` naming the prefix when a group lacks a projection or an expert.
    """
    plain: list[str] = []
    grouped: dict[str, dict[str, dict[int, str]]] = {}
    for name in names:
        match = PER_EXPERT.match(name)
        if match is None:
            plain.append(name)
        else:
            grouped.setdefault(match["prefix"], {}).setdefault(match["proj"], {})[int(match["expert"])] = name
    out: dict[str, dict[str, list[str]]] = {}
    for prefix, projections in grouped.items():
        counts = {proj: sorted(experts) for proj, experts in projections.items()}
        expected = list(range(len(counts.get("gate_proj", []))))
        if set(counts) != {"gate_proj", "up_proj", "down_proj"} or any(v != expected for v in counts.values()):
            raise ValueError(f"incomplete per-expert tensors under {prefix!r}: found experts "
                             f"{ {proj: f'{len(v)} of 0..{max(v) if v else -1}' for proj, v in counts.items()} }")
        out[prefix] = {proj: [experts[e] for e in expected] for proj, experts in projections.items()}
    return plain, out


def fuse_expert_group(per_proj: Mapping[str, list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-expert ``{gate_proj,up_proj,down_proj}: [[I, H] or [H, I] per expert]`` → fused (gate_up, down)."""
    gate_up = np.concatenate([np.stack(per_proj["gate_proj"]), np.stack(per_proj["up_proj"])], axis=1)
    return gate_up, (np.stack(per_proj["down_proj"]) if len(per_proj["down_proj"]) else None)


def split_expert_group(prefix: str, gate_up: np.ndarray, down: np.ndarray) -> dict[str, np.ndarray]:
    """Fused (gate_up ``[E, 2I, H]``, down ``[E, H, I]``) → per-expert ``{prefix}{e}.{proj}.weight`` tensors."""
    inter = gate_up.shape[1] // 2
    out = {}
    for e in range(gate_up.shape[0]):
        out[f"{prefix}{e}.gate_proj.weight"] = gate_up[e, :inter]
        out[f"{prefix}{e}.up_proj.weight"] = gate_up[e, inter:]
        out[f"{prefix}{e}.down_proj.weight"] = down[e]
    return out


def fuse_per_expert_keys(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rewrite ``experts.{e}.{gate,up,down}_proj.weight`` (save_pretrained / MTP layout) into the fused layout."""
    plain, groups = group_per_expert_keys(tensors)
    out = {name: tensors[name] for name in plain}
    for prefix, projections in groups.items():
        out[f"{prefix}gate_up_proj"], out[f"{prefix}down_proj"] = fuse_expert_group(
            {proj: [tensors[n] for n in names] for proj, names in projections.items()})
    return out
