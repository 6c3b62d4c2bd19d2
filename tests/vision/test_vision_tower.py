"""Vision tower forward (numerics §2.10) against transformers' Qwen3_5VisionModel on real processed images."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qwen35_jax.config import VisionConfig
from qwen35_jax.model.vision import VisionTower, vision_geometry

VL_CASES = ["vl_dense", "vl_moe"]


@pytest.mark.parametrize("case", VL_CASES)
def test_image_and_video_outputs_match_transformers(vl_case, case):
    ref, model = vl_case(case)
    out = model.visual(jnp.asarray(ref["pixel_values"]), ref["image_grid_thw"])
    err_hidden = np.abs(np.asarray(out.last_hidden_state) - ref["image_last_hidden"]).max()
    err_pool = np.abs(np.asarray(out.pooler_output) - ref["image_embeds"]).max()
    video = model.visual(jnp.asarray(ref["pixel_values_videos"]), ref["video_grid_thw"]).pooler_output
    err_video = np.abs(np.asarray(video) - ref["video_embeds"]).max()
    print(f"{case}: pooler max|d| {err_pool:.2e}, video {err_video:.2e}, pre-merger {err_hidden:.2e} "
          f"(scale {np.abs(ref['image_last_hidden']).max():.1f})")
    assert out.pooler_output.shape == ref["image_embeds"].shape
    assert err_pool <= 1e-5 and err_video <= 1e-5
    assert err_hidden <= 1e-5 * max(1.0, np.abs(ref["image_last_hidden"]).max())


def test_jit_with_static_grid_matches_eager(vl_case):
    ref, model = vl_case("vl_dense")
    grid = tuple(map(tuple, ref["image_grid_thw"].tolist()))
    pixels = jnp.asarray(ref["pixel_values"])
    jitted = nnx.jit(lambda m, p: m.visual(p, grid).pooler_output)(model, pixels)
    np.testing.assert_allclose(jitted, model.visual(pixels, grid).pooler_output, atol=1e-6)


def test_position_table_resampling_is_identity_on_its_own_grid_and_exact_at_corners():
    geo = vision_geometry(((1, 8, 8),), 2, 8)
    # On the table's own 8x8 grid every patch takes exactly one entry (weight 1 at its own index).
    own = geo.taps[np.arange(64), np.argmax(geo.weights, axis=1)]
    np.testing.assert_array_equal(own, geo.rows * 8 + geo.cols)
    np.testing.assert_allclose(geo.weights.max(axis=1), 1.0)
    # align_corners=True: on any grid the four corner patches read the four corner entries exactly.
    geo = vision_geometry(((1, 6, 10),), 2, 8)
    for r, c, entry in [(0, 0, 0), (0, 9, 7), (5, 0, 56), (5, 9, 63)]:
        i = np.flatnonzero((geo.rows == r) & (geo.cols == c))[0]
        assert geo.taps[i][np.argmax(geo.weights[i])] == entry and geo.weights[i].max() == pytest.approx(1.0)
    np.testing.assert_allclose(geo.weights.sum(axis=1), 1.0, rtol=1e-6)


@pytest.fixture(scope="module")
def tiny_tower() -> VisionTower:
    config = VisionConfig(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=24,
                          num_position_embeddings=16)
    return VisionTower(config, param_dtype=jnp.float32, rngs=nnx.Rngs(0))


def test_attention_stays_inside_each_image_and_frame(tiny_tower):
    """Changing one image (or one video frame) leaves the other image's / frame's outputs untouched."""
    tower, config = tiny_tower, tiny_tower.config
    grid = ((2, 4, 4), (1, 2, 4))  # a 2-slice video-like entry (16 patches per slice) then an 8-patch image
    pixels = jax.random.normal(jax.random.key(0), (40, config.patch_dim))
    base = tower(pixels, grid).pooler_output
    changed = tower(pixels.at[16:32].multiply(-3.0), grid).pooler_output  # second slice of the first entry
    np.testing.assert_allclose(changed[:4], base[:4], atol=1e-6)  # first slice: its 4 merged tokens
    np.testing.assert_allclose(changed[8:], base[8:], atol=1e-6)  # the image
    assert np.abs(np.asarray(changed[4:8] - base[4:8])).max() > 1e-3


def test_bad_inputs_raise_clear_errors(tiny_tower):
    tower, config = tiny_tower, tiny_tower.config
    with pytest.raises(ValueError, match="pixel_values must be"):
        tower(jnp.zeros((15, config.patch_dim)), [[1, 4, 4]])
    with pytest.raises(ValueError, match="multiples of spatial_merge_size"):
        tower(jnp.zeros((12, config.patch_dim)), [[1, 3, 4]])
    with pytest.raises(ValueError, match=r"shape \[num_images, 3\]"):
        tower(jnp.zeros((16, config.patch_dim)), [1, 4, 4])
    with pytest.raises(ValueError, match="must be concrete"):
        jax.jit(lambda g: tower(jnp.zeros((16, config.patch_dim)), g).pooler_output)(jnp.array([[1, 4, 4]]))


def test_bf16_vision_tower_stays_close(hf_fixtures, vl_case):
    from qwen35_jax.hf import load_pretrained

    ref, _ = vl_case("vl_dense")
    model = load_pretrained(hf_fixtures / "vl_dense", dtype="bfloat16")
    out = model.visual(jnp.asarray(ref["pixel_values"]), ref["image_grid_thw"]).pooler_output
    assert out.dtype == jnp.bfloat16
    err = np.abs(np.asarray(out.astype(jnp.float32)) - ref["image_embeds"]).max()
    print(f"bf16 pooler max|d| {err:.2e}")
    assert err <= 2e-2 * np.abs(ref["image_embeds"]).max()


@pytest.mark.parametrize("case", VL_CASES)
def test_vision_and_mtp_key_rules_round_trip(hf_fixtures, vl_case, case):
    """Every ``model.visual.*`` / ``mtp.*`` rule maps the checkpoint tensors to ours and back unchanged."""
    from safetensors.numpy import load_file

    from qwen35_jax.hf.keys import checkpoint_rules, fuse_per_expert_keys

    _, model = vl_case(case)
    tensors = fuse_per_expert_keys(load_file(hf_fixtures / case / "model.safetensors"))
    checked = 0
    for stacked in checkpoint_rules(model.config):
        rule = stacked.rule
        if not rule.hf[0].startswith(("model.visual.", "mtp.")):
            continue
        back = rule.to_hf(rule.to_ours([tensors[name] for name in rule.hf]))
        for name, value in zip(rule.hf, back, strict=True):
            np.testing.assert_array_equal(value, tensors[name], err_msg=name)
            checked += 1
    assert checked == sum(1 for k in tensors if k.startswith(("model.visual.", "mtp.")))


def test_gradients_reach_every_vision_parameter(tiny_tower):
    grid = ((1, 4, 4), (1, 2, 4))
    pixels = jax.random.normal(jax.random.key(1), (24, tiny_tower.config.patch_dim))

    def loss(tower):
        return jnp.mean(tower(pixels, grid).pooler_output ** 2)

    grads = nnx.grad(loss)(tiny_tower)
    for path, g in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(grads, nnx.Param))):
        assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).max()) > 0, jax.tree_util.keystr(path)
