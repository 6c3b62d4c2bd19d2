"""transformers-side checks for converted checkpoints and generation; runs in the *reference* environment.

  .venv-ref/bin/python -m tools.hf_reference.generation_reference logits --model_dir D.. --inputs ref.npz.. \
      --out o.npz..
  .venv-ref/bin/python -m tools.hf_reference.generation_reference generate --model_dir D.. --prompts p.json \
      --max_new_tokens 32 --out tokens.json.. [--bench_repeats 5]

(several model directories per call, paired with their --inputs / --out, to pay the torch start-up once)

``logits``: ``from_pretrained`` the directory (class from config.json ``architectures``), run the fp32 forward on
the model inputs stored in ``reference.npz`` (``input_ids`` and, for VL, pixel values / grids / token types) and
save ``logits``. ``generate``: greedy ``generate`` (no EOS stop, KV + GDN cache) on a left-padded batch of the
prompts (JSON list of id lists), saving the new tokens per prompt; with ``--bench_repeats`` also decode tokens/s
(median over repeats, after a warm-up run), for tools/bench_decode.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
import transformers

VL_INPUTS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "mm_token_type_ids")
PAD_ID = 0


def load(model_dir: str) -> torch.nn.Module:
    with open(f"{model_dir}/config.json") as f:
        architecture = json.load(f)["architectures"][0]
    return getattr(transformers, architecture).from_pretrained(model_dir, dtype=torch.float32).eval()


@torch.no_grad()
def logits(args: argparse.Namespace) -> None:
    if not len(args.model_dir) == len(args.inputs) == len(args.out):
        raise SystemExit("give as many --inputs and --out as --model_dir")
    for model_dir, inputs, out in zip(args.model_dir, args.inputs, args.out, strict=True):
        one_logits(model_dir, inputs, out)


def one_logits(model_dir: str, inputs: str, out_path: str) -> None:
    model = load(model_dir)
    ref = np.load(inputs)
    kwargs = {"input_ids": torch.from_numpy(ref["input_ids"])}
    kwargs.update({name: torch.from_numpy(ref[name]) for name in VL_INPUTS if name in ref.files})
    if "attention_mask" in ref.files:
        kwargs["attention_mask"] = torch.from_numpy(ref["attention_mask"])
    out = model(**kwargs, use_cache=False).logits.float().numpy()
    np.savez(out_path, logits=out)


def left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    return ids, mask


def generate(args: argparse.Namespace) -> None:
    if len(args.model_dir) != len(args.out):
        raise SystemExit("give as many --out as --model_dir")
    for model_dir, out in zip(args.model_dir, args.out, strict=True):
        one_generate(args, model_dir, out)


@torch.no_grad()
def one_generate(args: argparse.Namespace, model_dir: str, out_path: str) -> None:
    model = load(model_dir)
    with open(args.prompts) as f:
        prompts = json.load(f)
    ids, mask = left_pad(prompts)
    config = transformers.GenerationConfig(do_sample=False, max_new_tokens=args.max_new_tokens, eos_token_id=None,
                                           pad_token_id=PAD_ID, use_cache=True)

    def run() -> torch.Tensor:
        return model.generate(input_ids=ids, attention_mask=mask, generation_config=config)

    out = run()
    result: dict = {"tokens": out[:, ids.shape[1]:].tolist(), "transformers": transformers.__version__}
    if args.bench_repeats:
        times = []
        for _ in range(args.bench_repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        result["seconds_median"] = statistics.median(times)
        result["tokens_per_s"] = ids.shape[0] * args.max_new_tokens / statistics.median(times)
    with open(out_path, "w") as f:
        json.dump(result, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("logits")
    p.add_argument("--model_dir", required=True, nargs="+")
    p.add_argument("--inputs", required=True, nargs="+")
    p.add_argument("--out", required=True, nargs="+")
    g = sub.add_parser("generate")
    g.add_argument("--model_dir", required=True, nargs="+")
    g.add_argument("--prompts", required=True)
    g.add_argument("--max_new_tokens", type=int, default=32)
    g.add_argument("--bench_repeats", type=int, default=0)
    g.add_argument("--threads", type=int, default=1)
    g.add_argument("--out", required=True, nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(getattr(args, "threads", 1))
    transformers.logging.set_verbosity_error()
    {"logits": logits, "generate": generate}[args.command](args)


if __name__ == "__main__":
    main()
