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


@pytest.mark.parametrize("case", ["dense_untied", "moe", "next"])
def test_bf16_top1_agrees_with_fp32(hf_fixtures, case):
    reference, out, valid = _run(hf_fixtures, case, dtype="bfloat16")
    logits = np.asarray(out.logits.astype(jnp.float32))
    assert np.isfinite(logits).all()
    agree = (logits.argmax(-1) == reference["logits"].argmax(-1))[valid].mean()
    print(f"{case}: bf16 top-1 agreement {agree:.4f}")
    assert agree >= 0.99
