"""MTP head (numerics §2.9) against an independent float64 NumPy implementation on the VL fixtures' ``mtp.*`` weights.

The fixtures carry Hub-named ``mtp.*`` tensors (dense: one full-attention layer with a SwiGLU MLP; MoE: a MoE layer
with per-expert tensors), so loading them also checks the MTP key rules.
"""

import functools
import pathlib
import types

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from qwen35_jax.model.mtp import mtp_loss, mtp_steps

CASES = ["vl_dense", "vl_moe"]
EPS = 1e-6


@functools.cache
def _load(case_dir: pathlib.Path):
    from qwen35_jax.hf import load_pretrained

    model = load_pretrained(case_dir)
    weights = {k: v.astype(np.float64) for k, v in load_file(case_dir / "model.safetensors").items()}
    return model, weights, dict(np.load(case_dir / "reference.npz"))


@pytest.fixture
def case_data(hf_fixtures, request):
    case_dir = hf_fixtures / request.param
    if not (case_dir / "model.safetensors").exists():
        pytest.fail(f"fixture {request.param!r} missing under {hf_fixtures}: build it with tools.hf_reference")
    return _load(case_dir)


# ------------------------------------------------------------------------------------------- NumPy reference (§2)


def rms(x, w):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + EPS) * (1.0 + w)


def silu(x):
    return x / (1.0 + np.exp(-x))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def mrope(x, positions, section, theta, rotary):
    """Interleaved partial mRoPE of §2.3.1 on ``x [B, T, N, D]`` with ``positions [3, B, T]``."""
    half = rotary // 2
    angles = np.zeros(positions.shape[1:] + (half,))
    for j in range(half):
        axis = 1 if (j % 3 == 1 and j < 3 * section[1]) else 2 if (j % 3 == 2 and j < 3 * section[2]) else 0
        angles[..., j] = positions[axis] * theta ** (-2.0 * j / rotary)
    emb = np.concatenate([angles, angles], -1)[:, :, None, :]
    rot = x[..., :rotary]
    rotated = np.concatenate([-rot[..., half:], rot[..., :half]], -1)
    return np.concatenate([rot * np.cos(emb) + rotated * np.sin(emb), x[..., rotary:]], -1)


def attention(x, w, p, cfg, positions, segments):
    b, t, _ = x.shape
    nq, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    qg = (x @ w[p + "q_proj.weight"].T).reshape(b, t, nq, 2 * hd)
    q, gate = qg[..., :hd], qg[..., hd:]
    k = (x @ w[p + "k_proj.weight"].T).reshape(b, t, nkv, hd)
    v = (x @ w[p + "v_proj.weight"].T).reshape(b, t, nkv, hd)
    q, k = rms(q, w[p + "q_norm.weight"]), rms(k, w[p + "k_norm.weight"])
    q = mrope(q, positions, cfg.mrope_section, cfg.rope_theta, cfg.rotary_dim)
    k = mrope(k, positions, cfg.mrope_section, cfg.rope_theta, cfg.rotary_dim)
    allowed = np.tril(np.ones((t, t), bool))[None] & (segments[:, :, None] == segments[:, None, :])
    out = np.zeros((b, t, nq, hd))
    for h in range(nq):
        kv = h // (nq // nkv)
        s = np.einsum("bqd,bkd->bqk", q[:, :, h], k[:, :, kv]) / np.sqrt(hd)
        out[:, :, h] = np.einsum("bqk,bkd->bqd", softmax(np.where(allowed, s, -np.inf)), v[:, :, kv])
    out = out * sigmoid(gate)
    return out.reshape(b, t, nq * hd) @ w[p + "o_proj.weight"].T


def swiglu(x, gate, up, down):
    return (silu(x @ gate.T) * (x @ up.T)) @ down.T


def ffn(x, w, p, cfg):
    if not cfg.is_moe:
        return swiglu(x, w[p + "gate_proj.weight"], w[p + "up_proj.weight"], w[p + "down_proj.weight"])
    probs = softmax(x @ w[p + "gate.weight"].T)
    top = np.argsort(-probs, -1)[..., : cfg.num_experts_per_tok]
    top_w = np.take_along_axis(probs, top, -1)
    top_w = top_w / top_w.sum(-1, keepdims=True)
    routed = np.zeros_like(x)
    for e in range(cfg.num_experts):
        weight = (top_w * (top == e)).sum(-1, keepdims=True)
        ex = f"{p}experts.{e}."
        routed += weight * swiglu(x, w[ex + "gate_proj.weight"], w[ex + "up_proj.weight"], w[ex + "down_proj.weight"])
    shared = swiglu(x, w[p + "shared_expert.gate_proj.weight"], w[p + "shared_expert.up_proj.weight"],
                    w[p + "shared_expert.down_proj.weight"])
    return routed + sigmoid(x @ w[p + "shared_expert_gate.weight"].T) * shared


def numpy_mtp(w, cfg, hidden, ids, positions, segments, depth):
    """Chained §2.9 steps; returns per-step logits (step k at position t predicts token t+k+1)."""
    embed = w["model.language_model.embed_tokens.weight"]
    head = w["lm_head.weight"]
    p = "mtp.layers.0."
    out = []
    for k in range(1, depth + 1):
        nxt = np.zeros(hidden.shape)
        nxt[:, :-k] = embed[ids[:, k:]]
        x = np.concatenate([rms(nxt, w["mtp.pre_fc_norm_embedding.weight"]),
                            rms(hidden, w["mtp.pre_fc_norm_hidden.weight"])], -1) @ w["mtp.fc.weight"].T
        x = x + attention(rms(x, w[p + "input_layernorm.weight"]), w, p + "self_attn.", cfg, positions, segments)
        x = x + ffn(rms(x, w[p + "post_attention_layernorm.weight"]), w, p + "mlp.", cfg)
        hidden = rms(x, w["mtp.norm.weight"])
        out.append(hidden @ head.T)
    return out


def _inputs(ref):
    ids = ref["input_ids"]
    hidden = np.random.default_rng(0).normal(size=(*ids.shape, 64))
    segments = np.ones(ids.shape, np.int64)
    segments[0, 20:] = 2  # row 0 packs two documents
    return ids, hidden, ref["position_ids"], segments


@pytest.mark.parametrize("case_data", CASES, indirect=True)
def test_mtp_steps_match_numpy(case_data):
    model, weights, ref = case_data
    ids, hidden, positions, segments = _inputs(ref)
    expected = numpy_mtp(weights, model.config, hidden, ids, positions, segments, depth=2)
    steps = mtp_steps(model, jnp.asarray(hidden, jnp.float32), jnp.asarray(ids), depth=2,
                      segment_ids=jnp.asarray(segments), positions=jnp.asarray(positions))
    for k, (ours, theirs) in enumerate(zip(steps.logits, expected, strict=True), start=1):
        err = np.abs(np.asarray(ours, np.float64) - theirs).max()
        print(f"step {k}: max |dlogits| {err:.2e} (scale {np.abs(theirs).max():.2f})")
        assert err <= 1e-4
    valid = np.asarray(steps.valid[1])  # step 2: target t+3 must exist in the same document
    assert valid[0, :17].all() and not valid[0, 17:20].any() and valid[0, 20:43].all() and not valid[0, 43:].any()
    assert valid[1, :43].all() and not valid[1, 43:].any()


@pytest.mark.parametrize("case_data", ["vl_dense"], indirect=True)
def test_mtp_loss_is_weighted_mean_of_step_cross_entropies(case_data):
    model, weights, ref = case_data
    ids, hidden, positions, segments = _inputs(ref)
    loss_mask = np.ones(ids.shape, bool)
    loss_mask[1, 30:35] = False  # targets 30..34 of row 1 do not count
    expected_logits = numpy_mtp(weights, model.config, hidden, ids, positions, segments, depth=2)
    step_losses = []
    for k, logits in enumerate(expected_logits, start=1):
        t = ids.shape[1]
        nll, count = 0.0, 0
        for b in range(ids.shape[0]):
            for pos in range(t - k - 1):
                target = pos + k + 1
                if segments[b, target] == segments[b, pos] and loss_mask[b, target]:
                    row = logits[b, pos]
                    nll += np.log(np.exp(row - row.max()).sum()) + row.max() - row[ids[b, target]]
                    count += 1
        step_losses.append(nll / count)
    out = mtp_loss(model, jnp.asarray(hidden, jnp.float32), jnp.asarray(ids), depth=2, weight=0.5,
                   loss_mask=jnp.asarray(loss_mask), segment_ids=jnp.asarray(segments),
                   positions=jnp.asarray(positions))
    np.testing.assert_allclose(np.asarray(out.step_losses), step_losses, rtol=1e-5)
    assert float(out.loss) == pytest.approx(0.5 * np.mean(step_losses), rel=1e-5)
    assert float(out.aux_loss) == 0.0


@pytest.mark.parametrize("case_data", ["vl_dense"], indirect=True)
def test_mtp_errors(case_data):
    model, _, ref = case_data
    ids = jnp.asarray(ref["input_ids"])
    with pytest.raises(ValueError, match="depth must be >= 1"):
        mtp_steps(model, jnp.zeros((*ids.shape, 64)), ids, depth=0)
    with pytest.raises(ValueError, match="no MTP head"):
        mtp_steps(types.SimpleNamespace(mtp=None), jnp.zeros((*ids.shape, 64)), ids)
