"""Logits of our model equal those of the real transformers classes (fixtures from tools/hf_reference)."""

import jax.numpy as jnp
import numpy as np
import pytest

from qwen35_jax.hf import load_pretrained

CASES = ["dense_untied", "dense_tied", "moe", "moe_fused", "next", "dense_padded"]


def _run(fixtures, case: str, dtype: str = "float32"):
    reference = np.load(fixtures / case / "reference.npz")
    model = load_pretrained(fixtures / case, dtype=dtype, param_dtype=dtype)
    kwargs = {}
    valid = np.ones(reference["input_ids"].shape, bool)
    if "attention_mask" in reference:
        kwargs["attention_mask"] = jnp.asarray(reference["attention_mask"])
        valid = reference["attention_mask"].astype(bool)
    out = model(jnp.asarray(reference["input_ids"]), **kwargs)
    return reference, out, valid


@pytest.mark.parametrize("case", CASES)
def test_fp32_logits_match_transformers(hf_fixtures, case):
    reference, out, valid = _run(hf_fixtures, case)
    logits = np.asarray(out.logits, np.float32)
    assert logits.shape == reference["logits"].shape
    err = np.abs(logits - reference["logits"])[valid].max()
    print(f"{case}: max |dlogits| = {err:.3e} (logit scale {np.abs(reference['logits']).max():.2f})")
    assert err <= 1e-4
    if "aux_loss" in reference:
        assert abs(float(out.aux_loss) - float(reference["aux_loss"])) <= 1e-5


@pytest.mark.parametrize("case", ["dense_untied", "dense_tied", "moe", "next"])
def test_bf16_is_as_close_to_fp32_as_the_reference_bf16(hf_fixtures, case):
    """bf16 top-1 agreement with the fp32 reference, calibrated by transformers' own bf16 run of the same model.

    These perturbed random models have flat, chaotic logits (bf16 moves them by ~0.4 at the 99th percentile), so
    even transformers in bf16 agrees with its fp32 top-1 on only ~87-97 % of positions; we require ours to be
    within 3 points of that and never non-finite.
    """
    reference, out, valid = _run(hf_fixtures, case, dtype="bfloat16")
    logits = np.asarray(out.logits.astype(jnp.float32))
    assert np.isfinite(logits).all()
    top1 = reference["logits"].argmax(-1)
    ours = (logits.argmax(-1) == top1)[valid].mean()
    theirs = (reference["logits_bf16"].argmax(-1) == top1)[valid].mean()
    print(f"{case}: bf16 top-1 agreement ours {ours:.4f}, transformers bf16 {theirs:.4f}")
    assert ours >= theirs - 0.03
