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


# The longest test files on 2 CPU cores (`--durations`, most of it compiling), in that order. `make test` runs the
# suite on two pytest-xdist workers, a file per worker at a time in collection order (`--dist loadfile`): starting
# these first keeps one worker from finishing a long file alone at the end.
LONGEST_FILES_FIRST = (
    "train/test_multiprocess_runs.py", "test_colab_notebook.py", "train/test_resume.py", "test_cli_errors.py",
    "train/test_decay_branch.py",
    "model/test_model.py", "parallel/test_gdn_context_parallel.py", "ops/test_gated_delta_rule.py",
    "ops/test_gdn_triton_smem.py", "train/test_context_parallel_training.py", "parallel/test_aot_tool.py",
    "infer/test_generate.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}

    def file_rank(item: pytest.Item) -> int:
        return rank.get(item.nodeid.split("::", 1)[0].removeprefix("tests/"), len(rank))

    items.sort(key=file_rank)  # stable: each file's tests stay together and in order, other files keep theirs
