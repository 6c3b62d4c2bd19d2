"""Generate text from a training run, a converted checkpoint or a transformers directory.

  python -m experiments.generate --workdir runs/demo --prompt "To be, or not to be" [--max_new_tokens 64]
  python -m experiments.generate --hf_dir path/to/Qwen3.5-0.8B --prompt "..." --temperature 0.7 --top_p 0.9
  python -m experiments.generate --ckpt ckpts/qwen35_0p8b --prompt "..." --top_k 20 --prompt "a second prompt"

The model runs on the mesh of the experiment config (``config.mesh``: ``--config``, or the config the training run
saved in its workdir), built by the same constructor as in training. Prompts are encoded with the real Qwen3.5
tokenizer (``qwen35_jax.data``); a run trained on a compact vocabulary (``WORKDIR/compact_vocab.json``) maps prompt
ids into it and generated ids back (unknown prompt ids become ``<unk>``). Prints each continuation, then prefill
time, decode tokens/s and compile time (separately).
Generation stops at ``<|endoftext|>`` (and ``<|im_end|>``) unless ``--no_stop``.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

# Flags exist only when this file runs as a program: importing it (tests, notebooks) defines none, so several
# command-line modules can be imported in one process.
if __name__ == "__main__":
    _WORKDIR = flags.DEFINE_string("workdir", None, "training run directory (qwen35_jax.train checkpoints)")
    _CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config whose mesh to run on (default: the "
                                              "config saved in --workdir; else every device on fsdp)")
    _STEP = flags.DEFINE_integer("step", None, "checkpoint step of --workdir (default: the newest)")
    _HF_DIR = flags.DEFINE_string("hf_dir", None, "transformers checkpoint directory (config.json + safetensors)")
    _CKPT = flags.DEFINE_string("ckpt", None, "checkpoint written by `python -m tools.convert_hf import`")
    _PROMPT = flags.DEFINE_multi_string("prompt", None, "prompt text (repeat the flag for a batch)")
    _MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "tokens to generate per prompt")
    _TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy")
    _TOP_K = flags.DEFINE_integer("top_k", 0, "0 = off")
    _TOP_P = flags.DEFINE_float("top_p", 1.0, "1 = off")
    _SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
    _DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype")
    _NO_STOP = flags.DEFINE_bool("no_stop", False, "do not stop at end-of-text tokens")

STOP_NAMES = ("<|endoftext|>", "<|im_end|>")


def load_model(dtype: str):
    """(model, CompactVocab or None) from exactly one of --workdir / --hf_dir / --ckpt, built on the mesh of the
    experiment config (--config, else the one the training run saved in --workdir, else all devices on fsdp)."""
    from qwen35_jax.train.restore import runtime_from_config

    sources = [name for name, flag in (("--workdir", _WORKDIR), ("--hf_dir", _HF_DIR), ("--ckpt", _CKPT))
               if flag.value]
    if len(sources) != 1:
        raise app.UsageError(f"give exactly one of --workdir, --hf_dir, --ckpt (got {sources or 'none'})")
    config = _CONFIG.value
    if config is None and _WORKDIR.value:
        from qwen35_jax.train.workdir import load_experiment_config

        config = load_experiment_config(_WORKDIR.value)
    runtime = runtime_from_config(config)
    print("mesh: " + (", ".join(f"{k}={v}" for k, v in runtime.mesh.shape.items() if v > 1) or "one device"))
    if _WORKDIR.value:
        from qwen35_jax.data import CompactVocab
        from qwen35_jax.data.text_dataset import VOCAB_FILE
        from qwen35_jax.train.restore import restore_model

        model, _ = restore_model(_WORKDIR.value, runtime, step=_STEP.value, dtype=dtype)
        vocab_file = os.path.join(_WORKDIR.value, VOCAB_FILE)
        return model, (CompactVocab.load(vocab_file) if os.path.exists(vocab_file) else None)
    from qwen35_jax.hf import load_pretrained

    return load_pretrained(_HF_DIR.value or _CKPT.value, dtype=dtype, runtime=runtime), None


def main(argv: list[str]) -> None:
    del argv
    if not _PROMPT.value:
        raise app.UsageError("--prompt is required (repeat it for several prompts)")
    from qwen35_jax.data import get_tokenizer
    from qwen35_jax.infer import Generator, SamplingConfig

    sampling = SamplingConfig(temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value)
    tokenizer = get_tokenizer()
    model, vocab = load_model(_DTYPE.value)
    prompts = [tokenizer.encode(p) for p in _PROMPT.value]
    stops = [] if _NO_STOP.value else [tokenizer.special_id(n) for n in STOP_NAMES]
    if vocab is not None:
        prompts = [vocab.to_compact(p).tolist() for p in prompts]
        stops = [int(s) for s in vocab.to_compact(stops) if s != 0]
    generator = Generator(model, sampling, stop_tokens=stops)
    result = generator(prompts, _MAX_NEW.value, seed=_SEED.value)
    for prompt, tokens in zip(_PROMPT.value, result.tokens, strict=True):
        text = vocab.decode(tokens, tokenizer.decode) if vocab is not None else tokenizer.decode(
            [t for t in tokens if t < tokenizer.vocab_size])
        print(f"=== {prompt!r}\n{prompt}{text}\n")
    print(f"prefill {result.prefill_s * 1e3:.1f} ms | decode {result.decode_steps} steps x {len(prompts)} rows: "
          f"{result.decode_tokens_per_s:.1f} tokens/s | compile {result.compile_s:.1f} s")
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
