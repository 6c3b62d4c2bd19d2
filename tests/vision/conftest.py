"""Shared loaders for the vision-language fixtures (``vl_dense`` / ``vl_moe`` from tools/hf_reference)."""

import functools
import pathlib

import numpy as np
import pytest

VL_CASES = ["vl_dense", "vl_moe"]


@functools.cache
def _load(case_dir: pathlib.Path):
    from qwen35_jax.hf import load_pretrained

    return dict(np.load(case_dir / "reference.npz")), load_pretrained(case_dir)


@pytest.fixture(scope="session")
def vl_case(hf_fixtures):
    """``vl_case(name) -> (reference arrays, fp32 model)``, loaded once per session."""

    def get(name: str):
        case_dir = hf_fixtures / name
        if not (case_dir / "reference.npz").exists():
            pytest.fail(f"VL fixture {name!r} missing under {hf_fixtures}: rebuild with `python -m "
                        "tools.hf_reference.make_fixtures --out DIR --cases vl_dense,vl_moe` in the reference env "
                        "(needs pillow and scikit-learn there)")
        return _load(case_dir)

    return get
