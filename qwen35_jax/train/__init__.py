"""Training building blocks shared by the experiment scripts."""

from qwen35_jax.train.losses import masked_cross_entropy, masked_mean, token_nll

__all__ = ["masked_cross_entropy", "masked_mean", "token_nll"]
