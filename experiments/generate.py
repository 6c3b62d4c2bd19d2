"""Generate text from a training run, a converted checkpoint or a transformers directory.

  python -m experiments.generate --workdir runs/demo --prompt "To be, or not to be" [--max_new_tokens 64]
  python -m experiments.generate --hf_dir path/to/Qwen3.5-0.8B --prompt "..." --temperature 0.7 --top_p 0.9
  python -m experiments.generate --ckpt ckpts/qwen35_0p8b --prompt "..." --top_k 20 --prompt "a second prompt"
  python -m experiments.generate --hf_dir path/to/Qwen3.5-0.8B --chat --prompt "Give me a short introduction to JAX."

The model runs on the mesh of the experiment config (``config.mesh``: ``--config``, or the config the training run
saved in its workdir), built by the same constructor as in training, in this one process on its local devices even
for a run trained on several processes (``--multihost`` starts ``jax.distributed`` as the config says). Prompts are
encoded with the real Qwen3.5 tokenizer (``qwen35_jax.data``); a run trained on a compact vocabulary
(``WORKDIR/compact_vocab.json``) maps prompt ids into it and generated ids back (unknown prompt ids become
``<unk>``; ``<unk>`` itself is never generated: it is masked before sampling). Prints each continuation, then prefill
time, decode tokens/s and compile time (separately).
``--chat`` sends each prompt as a user turn through the checkpoint's own chat template (``--hf_dir``'s
``chat_template.jinja``, or ``--chat_template FILE``; non-thinking mode unless ``--thinking``) and prints the rendered
prompt. Generation stops at ``<|endoftext|>`` (and ``<|im_end|>``) unless ``--no_stop``. A missing checkpoint or a bad
flag ends with one ``error: ...`` line (``QWEN35_JAX_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from qwen35_jax.train.cli import define_experiment_config, run

# Flags exist only when this file runs as a program: importing it (tests, notebooks) defines none, so several
# command-line modules can be imported in one process.
if __name__ == "__main__":
    _WORKDIR = flags.DEFINE_string("workdir", None, "training run directory (qwen35_jax.train checkpoints)")
    _CONFIG = define_experiment_config("config", "experiment config whose mesh to run on (default: the "
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
    _CHAT = flags.DEFINE_bool("chat", False, "wrap each prompt in the checkpoint's chat template as a user turn")
    _CHAT_TEMPLATE = flags.DEFINE_string("chat_template", None, "Jinja chat template file for --chat (default: "
                                         "--hf_dir's chat_template.jinja / tokenizer_config.json)")
    _THINKING = flags.DEFINE_bool("thinking", False, "with --chat: let the model think first (enable_thinking)")
    _MULTIHOST = flags.DEFINE_bool("multihost", False, "start jax.distributed as the config's multihost section says "
                                   "(a cluster); default: this one process on its local devices")

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
    runtime = runtime_from_config(config, distributed=_MULTIHOST.value)
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


def chat_prompts(prompts: list[str]) -> list[str]:
    """Each prompt as a user turn rendered by the chat template of --chat_template or --hf_dir."""
    from qwen35_jax.data import load_chat_template, render_chat

    if _CHAT_TEMPLATE.value:
        with open(_CHAT_TEMPLATE.value, encoding="utf-8") as f:
            template = f.read()
    elif _HF_DIR.value:
        template = load_chat_template(_HF_DIR.value)
    else:
        raise app.UsageError("--chat needs a chat template: --hf_dir with its tokenizer files, or --chat_template FILE")
    return [render_chat(template, [{"role": "user", "content": p}], enable_thinking=_THINKING.value)
            for p in prompts]


def main(argv: list[str]) -> None:
    del argv
    if not _PROMPT.value:
        raise app.UsageError("--prompt is required (repeat it for several prompts)")
    from qwen35_jax.data import get_tokenizer
    from qwen35_jax.infer import Generator, SamplingConfig

    sampling = SamplingConfig(temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value)
    tokenizer = get_tokenizer()
    texts = list(_PROMPT.value)
    if _CHAT.value:
        texts = chat_prompts(texts)
    model, vocab = load_model(_DTYPE.value)
    prompts = [tokenizer.encode(t, allow_special=_CHAT.value) for t in texts]
    stops = [] if _NO_STOP.value else [tokenizer.special_id(n) for n in STOP_NAMES]
    banned = []
    if vocab is not None:
        from qwen35_jax.data.vocab import UNK_ID

        prompts = [vocab.to_compact(p).tolist() for p in prompts]
        stops = [int(s) for s in vocab.to_compact(stops) if s != UNK_ID]
        banned = [UNK_ID]
        print(f"compact vocabulary of {vocab.size:,} ids: <unk> (id {UNK_ID}) is masked before sampling (it stands "
              "for no text)")
    generator = Generator(model, sampling, stop_tokens=stops, banned_tokens=banned)
    result = generator(prompts, _MAX_NEW.value, seed=_SEED.value)
    for prompt, shown, tokens in zip(_PROMPT.value, texts, result.tokens, strict=True):
        text = vocab.decode(tokens, tokenizer.decode) if vocab is not None else tokenizer.decode(
            tokens, drop_padding=True)
        print(f"=== {prompt!r}\n{shown}{text}\n")  # with --chat, shown = the rendered prompt
    print(f"prefill {result.prefill_s * 1e3:.1f} ms | decode {result.decode_steps} steps x {len(prompts)} rows: "
          f"{result.decode_tokens_per_s:.1f} tokens/s | compile {result.compile_s:.1f} s")
    sys.stdout.flush()


if __name__ == "__main__":
    run(main)
