"""Test setup: 8 virtual CPU devices (sharding tests) and the transformers reference fixtures."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import json  # noqa: E402
import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = pathlib.Path(os.environ.get("HF_FIXTURES", REPO / "build" / "hf_fixtures"))


@pytest.fixture(scope="session")
def hf_fixtures() -> pathlib.Path:
    """Directory of tiny random transformers checkpoints + reference logits (built by `make test`)."""
    if not (FIXTURES / "manifest.json").exists():
        pytest.fail(f"reference fixtures missing at {FIXTURES}: run `make fixtures` (builds them with the real "
                    "transformers classes in .venv-ref)")
    return FIXTURES


@pytest.fixture(scope="session")
def hf_manifest(hf_fixtures: pathlib.Path) -> dict:
    return json.loads((hf_fixtures / "manifest.json").read_text())
