"""Multimodal fusion and mRoPE positions (numerics §2.11) against transformers' Qwen3.5 VL models."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qwen35_jax.model.multimodal import expand_image_tokens, expand_prompt, get_rope_index, scatter_embeddings

VL_CASES = ["vl_dense", "vl_moe"]


def _vision_kwargs(ref) -> dict:
    return dict(pixel_values=jnp.asarray(ref["pixel_values"]), image_grid_thw=ref["image_grid_thw"],
                pixel_values_videos=jnp.asarray(ref["pixel_values_videos"]), video_grid_thw=ref["video_grid_thw"])


@pytest.mark.parametrize("case", VL_CASES)
def test_fp32_logits_match_transformers(vl_case, case):
    """vl_dense: the eager call derives positions and token types itself; vl_moe: the jitted call with explicit
    ``get_rope_index`` positions and static grids (how a training step calls it)."""
    ref, model = vl_case(case)
    ids = jnp.asarray(ref["input_ids"])
    if case == "vl_dense":
        out = model(ids, **_vision_kwargs(ref))
    else:
        positions, _ = get_rope_index(ref["input_ids"], ref["mm_token_type_ids"], ref["image_grid_thw"],
                                      ref["video_grid_thw"])
        grids = {"image_grid_thw": ref["image_grid_thw"], "video_grid_thw": ref["video_grid_thw"]}

        @nnx.jit
        def forward(m, ids, positions, pixel_values, pixel_values_videos):
            return m(ids, positions=positions, pixel_values=pixel_values, pixel_values_videos=pixel_values_videos,
                     **grids)

        out = forward(model, ids, jnp.asarray(positions), jnp.asarray(ref["pixel_values"]),
                      jnp.asarray(ref["pixel_values_videos"]))
    err = np.abs(np.asarray(out.logits) - ref["logits"]).max()
    print(f"{case}: max |dlogits| = {err:.3e} (logit scale {np.abs(ref['logits']).max():.2f})")
    assert err <= 1e-4
    if "aux_loss" in ref:
        assert abs(float(out.aux_loss) - float(ref["aux_loss"])) <= 1e-5


def test_rope_index_equals_transformers(vl_case):
    ref, model = vl_case("vl_dense")
    positions, deltas = get_rope_index(ref["input_ids"], ref["mm_token_type_ids"], ref["image_grid_thw"],
                                       ref["video_grid_thw"])
    np.testing.assert_array_equal(positions, ref["position_ids"])
    np.testing.assert_array_equal(deltas, ref["rope_deltas"])
    # Derived token types and a padding mask (masked tokens skipped, position 0).
    positions, deltas = get_rope_index(ref["input_ids"], None, ref["image_grid_thw"], ref["video_grid_thw"],
                                       ref["position_mask"], config=model.config)
    np.testing.assert_array_equal(positions, ref["position_ids_masked"])
    np.testing.assert_array_equal(deltas, ref["rope_deltas_masked"])


def test_rope_index_spec_example():
    """Spec §2.11: ids [t,t,t,VS,IMG×6,VE,t,t,t] with grid (1,4,6)."""
    types = np.array([[0] * 4 + [1] * 6 + [0] * 4])
    positions, deltas = get_rope_index(np.zeros_like(types), types, [[1, 4, 6]])
    np.testing.assert_array_equal(positions[:, 0], [[0, 1, 2, 3, 4, 4, 4, 4, 4, 4, 7, 8, 9, 10],
                                                    [0, 1, 2, 3, 4, 4, 4, 5, 5, 5, 7, 8, 9, 10],
                                                    [0, 1, 2, 3, 4, 5, 6, 4, 5, 6, 7, 8, 9, 10]])
    assert deltas.tolist() == [[-3]]


def test_scatter_in_order_and_under_jit():
    ids = jnp.array([[5, 9, 9, 5], [9, 5, 5, 9]])
    embeds = jnp.zeros((2, 4, 3))
    features = jnp.arange(12.0).reshape(4, 3) + 1
    eager = scatter_embeddings(embeds, ids, features, 9)
    np.testing.assert_array_equal(eager[0, 1], features[0])
    np.testing.assert_array_equal(eager[0, 2], features[1])
    np.testing.assert_array_equal(eager[1, 0], features[2])
    np.testing.assert_array_equal(eager[1, 3], features[3])
    np.testing.assert_array_equal(eager[0, 0], embeds[0, 0])
    jitted = nnx.jit(lambda e, i, f: scatter_embeddings(e, i, f, 9))(embeds, ids, features)
    np.testing.assert_array_equal(eager, jitted)


def test_prompt_expansion():
    text = "a<|vision_start|><|image_pad|><|vision_end|>b<|vision_start|><|image_pad|><|vision_end|>c"
    out = expand_prompt(text, [[1, 4, 6], [1, 2, 2]])
    assert out.count("<|image_pad|>") == 6 + 1
    assert out.startswith("a<|vision_start|>" + "<|image_pad|>" * 6 + "<|vision_end|>b")
    video = expand_prompt("x<|video_pad|>y", video_grid_thw=[[2, 4, 4]], video_timestamps=[[0.25, 1.25]])
    slice_ = "<|vision_start|>" + "<|video_pad|>" * 4 + "<|vision_end|>"
    assert video == "x<0.2 seconds>" + slice_ + "<1.2 seconds>" + slice_ + "y"
    assert expand_image_tokens([1, 7, 2, 7], [[1, 2, 4], [1, 2, 2]], 7) == [1, 7, 7, 2, 7]


def test_mismatched_image_tokens_raise_clear_errors(vl_case):
    ref, model = vl_case("vl_dense")
    ids = np.array(ref["input_ids"])
    ids[0, 6] = 7  # one <|image_pad|> fewer than the vision tower produces
    with pytest.raises(ValueError, match="image features and image tokens do not match"):
        model(jnp.asarray(ids), **_vision_kwargs(ref))
    with pytest.raises(ValueError, match="run of 11 image tokens"):
        get_rope_index(ids, None, ref["image_grid_thw"], ref["video_grid_thw"], config=model.config)
    with pytest.raises(ValueError, match="more image runs than images"):
        get_rope_index(ref["input_ids"], ref["mm_token_type_ids"], ref["image_grid_thw"][:2], ref["video_grid_thw"])
    with pytest.raises(ValueError, match="2 image run"):
        get_rope_index(ref["input_ids"][:1], ref["mm_token_type_ids"][:1], ref["image_grid_thw"])
    with pytest.raises(ValueError, match="1 <|image_pad|> placeholder"):
        expand_prompt("<|image_pad|>", [[1, 2, 2], [1, 2, 2]])
    with pytest.raises(ValueError, match="2 image token"):
        expand_image_tokens([7, 7], [[1, 2, 2]], 7)
