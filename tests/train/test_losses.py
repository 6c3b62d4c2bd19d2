"""Masked next-token cross-entropy against a float64 NumPy computation."""

import jax.numpy as jnp
import numpy as np

from qwen35_jax.train.losses import masked_cross_entropy, masked_mean, token_nll


def _numpy_nll(logits, targets):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]


def test_token_nll_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 11)).astype(np.float32) * 10
    targets = rng.integers(0, 11, size=(2, 5))
    nll = token_nll(jnp.asarray(logits), jnp.asarray(targets))
    assert nll.dtype == jnp.float32 and nll.shape == (2, 5)
    np.testing.assert_allclose(nll, _numpy_nll(logits, targets), rtol=1e-5, atol=1e-5)


def test_bf16_logits_reduce_in_fp32():
    # bf16-exact logits whose NLL (log(1 + e^-8) = 3.4e-4) vanishes if the logsumexp is rounded to bf16 (its
    # spacing at 8 is 1/16).
    logits = np.array([[[8.0, 0.0]]], np.float32)
    nll = token_nll(jnp.asarray(logits, jnp.bfloat16), jnp.asarray([[0]]))
    assert nll.dtype == jnp.float32
    np.testing.assert_allclose(nll, _numpy_nll(logits, np.array([[0]])), rtol=1e-2)


def test_masked_cross_entropy_ignores_masked_positions():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 4, 7)).astype(np.float32)
    targets = rng.integers(0, 7, size=(3, 4))
    mask = rng.random((3, 4)) < 0.5
    mask[0, 0] = True
    expected = _numpy_nll(logits, targets)[mask].mean()
    got = masked_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Garbage at masked positions changes nothing.
    logits[~mask] = 1e4
    np.testing.assert_allclose(masked_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask)),
                               expected, rtol=1e-5)


def test_masked_mean_of_nothing_is_zero():
    assert float(masked_mean(jnp.ones((2, 3)), jnp.zeros((2, 3), bool))) == 0.0
