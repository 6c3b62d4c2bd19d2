"""Convert checkpoints between transformers (safetensors) and ours (orbax), streaming tensor by tensor.

  python -m tools.convert_hf import --hf_dir D --out CKPT [--dtype bf16|fp32|auto] [--overwrite]
  python -m tools.convert_hf export --ckpt CKPT|WORKDIR --out D [--per_expert] [--dtype ...] [--max_shard_gb 5]
                                    [--keep_compact_vocab] [--overwrite]

Dense, MoE (fused or per-expert expert tensors in; fused out unless --per_expert), VL, MTP and Qwen3-Next
checkpoints. Peak host memory is bounded by a small multiple of the largest tensor (one layer's experts for MoE).
An existing output is never replaced without --overwrite. See qwen35_jax/hf/convert.py. A missing or corrupt
checkpoint, an existing output or a bad value ends with one ``error: ...`` line and status 1 (``QWEN35_JAX_DEBUG=1``
shows the traceback; see qwen35_jax/train/cli.py).

A training run on a compact vocabulary (WORKDIR/compact_vocab.json, configs/tiny.py) is exported in the real
248,320-id Qwen vocabulary, usable with the Qwen tokenizer: each known id gets the run's embedding / LM-head row,
the ids the run never saw get zero rows (logit exactly 0). Train with --config.data.compact_vocab=False for a model
meaningful over every id; --keep_compact_vocab exports the compact rows as they are, with compact_vocab.json.
"""

from __future__ import annotations

import argparse
import sys
import time

from qwen35_jax.hf.convert import export_hf, import_hf
from qwen35_jax.train.cli import CommandLineError, report_user_error


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors raise CommandLineError (one ``error:`` line, status 2) instead of printing usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CommandLineError(f"{message} (see {self.prog} --help)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _Parser(prog="python -m tools.convert_hf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="transformers directory -> our orbax checkpoint")
    imp.add_argument("--hf_dir", required=True, help="directory with config.json and *.safetensors")
    imp.add_argument("--out", required=True, help="checkpoint directory to create")
    imp.add_argument("--dtype", default="auto", help="bf16 | fp32 | auto (the checkpoint's own float dtype)")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    exp = sub.add_parser("export", help="our orbax checkpoint -> transformers directory")
    exp.add_argument("--ckpt", required=True, help="checkpoint written by `import`, or a training workdir")
    exp.add_argument("--out", required=True, help="transformers directory to create")
    exp.add_argument("--per_expert", action="store_true", help="write experts.{e}.*_proj.weight instead of fused")
    exp.add_argument("--dtype", default="auto", help="bf16 | fp32 | auto (keep the stored dtypes)")
    exp.add_argument("--max_shard_gb", type=float, default=5.0, help="safetensors shard size limit")
    exp.add_argument("--keep_compact_vocab", action="store_true",
                     help="a compact-vocabulary run: keep its compact rows (writes compact_vocab.json next to "
                          "config.json) instead of the full Qwen vocabulary")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    try:
        args = parse_args(argv)
        if args.command == "import":
            config = import_hf(args.hf_dir, args.out, dtype=args.dtype, overwrite=args.overwrite)
            print(f"imported {args.hf_dir} -> {args.out} ({config.num_hidden_layers} layers, "
                  f"param dtype {config.param_dtype}) in {time.perf_counter() - start:.1f}s")
        else:
            if args.max_shard_gb <= 0:
                raise ValueError(f"--max_shard_gb={args.max_shard_gb} is invalid: must be > 0")
            files = export_hf(args.ckpt, args.out, per_expert=args.per_expert, dtype=args.dtype,
                              overwrite=args.overwrite, max_shard_bytes=int(args.max_shard_gb * (1 << 30)),
                              keep_compact_vocab=args.keep_compact_vocab)
            print(f"exported {args.ckpt} -> {args.out} ({len(files)} shard(s)) in {time.perf_counter() - start:.1f}s")
    except BaseException as error:  # a user error (CheckpointError, FileExistsError, ...): one line, status 1
        status = report_user_error(error)
        if status is None:
            raise
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
