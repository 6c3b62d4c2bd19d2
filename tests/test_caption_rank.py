"""qwen35_jax.train.caption_ranking: the jitted caption scorer equals an eager model call with the model's own mRoPE
positions, ranking runs end to end on a tiny random VL model, and a checkpoint of another vocabulary is refused."""

import numpy as np
import pytest
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.data.captions import prepare_caption_data, ranking_batches
from qwen35_jax.model import Qwen35ForCausalLM
from qwen35_jax.train.caption_ranking import check_compatible, evaluate_ranking, make_log_likelihood

TINY_VL = dict(
    vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
    intermediate_size=64, linear_num_key_heads=1, linear_num_value_heads=2, linear_key_head_dim=16,
    linear_value_head_dim=16, partial_rotary_factor=0.5, mrope_section=(2, 1, 1), mtp_num_hidden_layers=0,
    gdn_impl="recurrent",
    vision=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                num_position_embeddings=16),
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    rng = np.random.default_rng(1)
    rows = [np.concatenate([rng.integers(0, 17, size=64), [label]]) for label in range(10) for _ in range(4)]
    csv = tmp_path_factory.mktemp("digits") / "digits.csv"
    np.savetxt(csv, np.asarray(rows), fmt="%d", delimiter=",")
    data = prepare_caption_data({"sources": "digits", "digits_csv": str(csv), "seq_len": 12, "batch_size": 8,
                                 "heldout_fraction": 0.5, "num_candidates": 3}, str(tmp_path_factory.mktemp("w")))
    config = ModelConfig.from_dict(TINY_VL).replace(**data.model_overrides())
    params = nnx.state(Qwen35ForCausalLM(config, rngs=nnx.Rngs(0)), nnx.Param)
    return data, config, params


def test_scorer_matches_eager_model(setup):
    data, config, params = setup
    batch, _ = next(ranking_batches(data.ranking["digits"], data.layout, 8))
    got = make_log_likelihood(config, params)(batch)
    model = nnx.merge(nnx.graphdef(Qwen35ForCausalLM(config, rngs=nnx.Rngs(1))), params)
    # eager call without positions: the model derives mRoPE positions from the concrete prompt itself
    logits = np.asarray(model(batch["input_ids"], segment_ids=batch["segment_ids"], pixel_values=batch["pixel_values"],
                              image_grid_thw=batch["image_grid_thw"]).logits, np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, batch["targets"][..., None].astype(np.int64), -1)[..., 0]
    want = (picked * batch["loss_mask"]).sum(-1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.all(got < 0)


def test_evaluate_ranking_end_to_end(setup):
    data, config, params = setup
    results = evaluate_ranking(config, params, data)
    ranking = data.ranking["digits"]
    r = results["digits"]
    assert r["images"] == len(ranking.images) and r["candidates"] == 3
    assert 0.0 <= r["top1"] <= 1.0 and 1.0 <= r["mean_rank"] <= 3.0
    assert 0.0 <= r["pmi"]["top1"] <= 1.0 and 1.0 <= r["pmi"]["mean_rank"] <= 3.0


def test_incompatible_checkpoint_is_refused(setup):
    data, config, params = setup
    with pytest.raises(ValueError, match="vocab_size"):
        check_compatible(config.replace(vocab_size=config.vocab_size + 1), data)
