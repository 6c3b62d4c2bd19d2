"""Peak host memory of streaming conversion on a synthetic multi-GB checkpoint (``/usr/bin/time -v``).

  python -m tools.bench_convert --workdir /tmp/bench_convert [--hidden 2048 --layers 8 --experts 16 --keep]

Writes a random bf16 MoE checkpoint in the Hub layout (fused experts; wide and shallow: ~2.5 GB with the defaults)
streamingly, then runs ``tools.convert_hf import`` and ``export`` each in a child process under
``/usr/bin/time -v`` and prints the wall time and maximum RSS of both next to the checkpoint and largest-tensor
sizes, and checks the round trip bit for bit on a sample of tensors. Needs Debian's ``time`` (apt-get install time).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import ml_dtypes
import numpy as np

from qwen35_jax.config import ModelConfig
from qwen35_jax.hf.config_io import config_to_hf
from qwen35_jax.hf.convert import HFSource, SafetensorsShardWriter
from qwen35_jax.hf.keys import checkpoint_rules

TIME = "/usr/bin/time"


def synthetic_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=16,
        num_key_value_heads=4, head_dim=128, intermediate_size=0, linear_num_key_heads=16, linear_num_value_heads=32,
        linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4, num_experts=args.experts,
        num_experts_per_tok=2, moe_intermediate_size=args.moe_intermediate,
        shared_expert_intermediate_size=args.moe_intermediate, tie_word_embeddings=False, mtp_num_hidden_layers=0,
        mrope_section=(11, 11, 10), partial_rotary_factor=0.5, param_dtype="bfloat16")


def write_synthetic(config: ModelConfig, directory: str, seed: int = 0) -> tuple[int, int]:
    """Random weights for every rule of ``config``, written rule by rule; returns (total bytes, largest tensor)."""
    from flax import nnx

    from qwen35_jax.model import Qwen35ForCausalLM

    abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Qwen35ForCausalLM(config, rngs=nnx.Rngs(0)))))
    rules = checkpoint_rules(config)
    os.makedirs(directory)
    writer = SafetensorsShardWriter(directory, [n for r in rules for n in r.rule.hf], max_shard_bytes=1 << 30)
    rng = np.random.default_rng(seed)
    total = largest = 0
    for stacked in rules:
        ours = []
        for path in stacked.rule.ours:
            leaf = abstract
            for key in path:
                leaf = leaf[key]
            shape = leaf.shape[1:] if stacked.block is not None else leaf.shape
            ours.append((rng.standard_normal(shape, np.float32) * 0.02).astype(ml_dtypes.bfloat16))
        for name, array in zip(stacked.rule.hf, stacked.rule.to_hf(ours), strict=True):
            writer.add(name, array)
            total += array.nbytes
            largest = max(largest, array.nbytes)
    writer.close()
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config_to_hf(config), f, indent=2)
    return total, largest


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, max RSS MiB) of ``cmd`` under ``/usr/bin/time -v``."""
    proc = subprocess.run([TIME, "-v", *cmd], capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)[1]) / 1024
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", proc.stderr)[1]
    seconds = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.split(":"))))
    return seconds, rss


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=65536)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--moe_intermediate", type=int, default=1024)
    parser.add_argument("--keep", action="store_true", help="keep the synthetic and converted checkpoints")
    args = parser.parse_args(argv)
    if not os.path.exists(TIME):
        raise SystemExit(f"{TIME} is missing: apt-get install time")
    if os.path.exists(args.workdir):
        raise SystemExit(f"--workdir {args.workdir} exists; remove it or choose another")
    hf_dir, ckpt, back = (os.path.join(args.workdir, n) for n in ("hf", "ckpt", "hf_back"))
    config = synthetic_config(args)
    total, largest = write_synthetic(config, hf_dir)
    python = sys.executable
    import_s, import_rss = timed([python, "-m", "tools.convert_hf", "import", "--hf_dir", hf_dir, "--out", ckpt])
    export_s, export_rss = timed([python, "-m", "tools.convert_hf", "export", "--ckpt", ckpt, "--out", back])
    original, exported = HFSource(hf_dir), HFSource(back)
    names = sorted(original)
    sample = names[:: max(1, len(names) // 12)] + [n for n in names if n.endswith("gate_up_proj")][:1]
    identical = all(np.array_equal(original[n].view(np.uint16), exported[n].view(np.uint16)) for n in sample)
    gib = 1 << 30
    print(f"synthetic bf16 checkpoint: {total / gib:.2f} GiB, {len(names)} tensors, largest {largest / 2**20:.0f} MiB "
          f"(hidden {args.hidden}, {args.layers} layers, {args.experts} experts, vocab {args.vocab})")
    print(f"{'step':<8}{'wall s':>8}{'max RSS MiB':>13}")
    print(f"{'import':<8}{import_s:>8.1f}{import_rss:>13.0f}")
    print(f"{'export':<8}{export_s:>8.1f}{export_rss:>13.0f}")
    print(f"round trip bit-identical on {len(sample)} sampled tensors: {identical}")
    if not args.keep:
        shutil.rmtree(args.workdir)
    if not identical:
        raise SystemExit("round trip mismatch")


if __name__ == "__main__":
    main()
