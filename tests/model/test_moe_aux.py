"""The pooled load-balancing loss (numerics §3) on transformers' own router logits, with and without a padding mask."""

import jax
import numpy as np
import pytest

from qwen35_jax.model.moe import load_balancing_loss, route, router_stats


@pytest.mark.parametrize("case", ["moe", "next"])
def test_aux_loss_matches_transformers_on_its_router_logits(hf_fixtures, case):
    reference = np.load(hf_fixtures / case / "reference.npz")
    router_logits = reference["router_logits"]  # [layers, B*T, E]
    top_k = 2

    def pooled(mask):
        stats = [router_stats(*route(layer, top_k, True)[::2], mask) for layer in router_logits]
        return float(load_balancing_loss(jax.tree.map(lambda *xs: sum(xs), *stats)))

    unmasked = np.ones(router_logits.shape[1], bool)
    assert abs(pooled(unmasked) - float(reference["aux_loss"])) <= 1e-5
    masked = reference["aux_mask"].reshape(-1).astype(bool)
    assert abs(pooled(masked) - float(reference["aux_loss_masked"])) <= 1e-5
    assert abs(pooled(masked) - pooled(unmasked)) > 1e-5  # the mask matters for this input
