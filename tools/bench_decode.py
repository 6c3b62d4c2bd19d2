"""Decode speed on CPU: our jit-compiled generate loop vs transformers' ``generate``, same model, same run.

  HF_REF_PYTHON=.venv-ref/bin/python python -m tools.bench_decode --hf_dir build/hf_fixtures/dense_untied \
      [--batch 2 --prompt_len 16 --new_tokens 32 --repeats 5]

Both decode a left-padded batch greedily without stopping; ours reports the decode loop alone (prefill and compile
timed separately), transformers the whole ``generate`` call (its prefill is a small part at these sizes), median
over ``--repeats`` after a warm-up. Tokens/s counts every row's new tokens. Both sides must produce the same tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile

import numpy as np

from qwen35_jax.hf import load_pretrained
from qwen35_jax.infer import Generator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf_dir", required=True, help="a transformers checkpoint directory (tiny model)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompt_len", type=int, default=16)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch_threads", type=int, default=1)
    args = parser.parse_args(argv)
    ref_python = os.environ.get("HF_REF_PYTHON")
    if not ref_python:
        raise SystemExit("set HF_REF_PYTHON to the reference interpreter (.venv-ref/bin/python)")
    model = load_pretrained(args.hf_dir)
    rng = np.random.default_rng(0)
    # Rows of decreasing length (left padding exercised), ids in the model's vocabulary.
    prompts = [rng.integers(1, model.config.vocab_size, args.prompt_len - 3 * row).tolist()
               for row in range(args.batch)]
    generator = Generator(model)
    runs = [generator(prompts, args.new_tokens) for _ in range(args.repeats + 1)]
    compile_s = runs[0].compile_s
    ours = statistics.median(r.decode_tokens_per_s for r in runs[1:])
    prefill_ms = statistics.median(r.prefill_s for r in runs[1:]) * 1e3
    # Same accounting as transformers' number: every new token over prefill + decode.
    whole = statistics.median(args.batch * args.new_tokens / (r.prefill_s + r.decode_s) for r in runs[1:])
    with tempfile.TemporaryDirectory() as tmp:
        with open(f"{tmp}/prompts.json", "w") as f:
            json.dump(prompts, f)
        subprocess.run([ref_python, "-m", "tools.hf_reference.generation_reference", "generate", "--model_dir",
                        args.hf_dir, "--prompts", f"{tmp}/prompts.json", "--max_new_tokens", str(args.new_tokens),
                        "--bench_repeats", str(args.repeats), "--threads", str(args.torch_threads),
                        "--out", f"{tmp}/out.json"], check=True, capture_output=True)
        with open(f"{tmp}/out.json") as f:
            theirs = json.load(f)
    same = theirs["tokens"] == runs[-1].tokens
    print(f"model {args.hf_dir}: batch {args.batch}, prompts {[len(p) for p in prompts]} tokens, "
          f"{args.new_tokens} new tokens, median of {args.repeats}")
    print(f"{'implementation':<34}{'decode tok/s':>14}{'notes':>40}")
    print(f"{'ours (jit while_loop, cache)':<34}{ours:>14.1f}"
          f"{f'prefill {prefill_ms:.1f} ms, compile {compile_s:.1f} s':>40}")
    print(f"{'ours, whole generate':<34}{whole:>14.1f}{'prefill + decode (new tokens / time)':>40}")
    print(f"{'transformers generate (torch CPU)':<34}{theirs['tokens_per_s']:>14.1f}"
          f"{f'whole generate, {args.torch_threads} thread(s)':>40}")
    print(f"speed-up {ours / theirs['tokens_per_s']:.1f}x; identical tokens: {same}")


if __name__ == "__main__":
    main()
