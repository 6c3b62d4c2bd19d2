"""transformers' side of ``tools/bench_train.py``: time one PyTorch training step of the benchmark config.

    .venv-ref/bin/python tools/hf_reference/bench_train_torch.py '<json spec from tools.bench_train>'

Builds ``Qwen3_5ForCausalLM`` (``Qwen3_5TextConfig``) or ``Qwen3_5MoeForCausalLM`` (``Qwen3_5MoeTextConfig``,
``output_router_logits=True`` so the load-balancing loss is part of the trained loss, like ours) in fp32 from the
spec's fields, with ``torch.set_num_threads(os.cpu_count())``; the step is ``model(input_ids, labels=input_ids)``
(shifted next-token cross-entropy inside transformers) → ``loss.backward()`` → ``torch.optim.AdamW.step()`` →
``zero_grad``. One warm-up step, one untimed forward + backward under ``FlopCounterMode`` (the step's GFLOP), then
``repeats`` timed steps. Prints one ``RESULT {json}`` line.
Runs in the reference environment only (torch + transformers, no jax).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import numpy as np
import torch
import transformers


def build(spec: dict) -> torch.nn.Module:
    fields = dict(spec["fields"])
    rope = {"rope_type": "default", "rope_theta": fields.pop("rope_theta"),
            "partial_rotary_factor": fields.pop("partial_rotary_factor"),
            "mrope_section": fields.pop("mrope_section"), "mrope_interleaved": True}
    if spec["config"] == "moe":
        config = transformers.Qwen3_5MoeTextConfig(**fields, rope_parameters=rope, output_router_logits=True)
        model_class = transformers.Qwen3_5MoeForCausalLM
    else:
        fields.pop("router_aux_loss_coef")
        config = transformers.Qwen3_5TextConfig(**fields, rope_parameters=rope)
        model_class = transformers.Qwen3_5ForCausalLM
    torch.manual_seed(spec["seed"])
    return model_class(config).to(torch.float32).train()


def count_gflop(model: torch.nn.Module, ids: torch.Tensor) -> float:
    """GFLOP of one forward + backward as PyTorch's ``FlopCounterMode`` counts them (matmuls and convolutions of
    transformers' own algorithm, e.g. the repeated k/v of GQA); the gradients are discarded."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        raise SystemExit("usage: bench_train_torch.py '<json spec>' (run by python -m tools.bench_train)")
    spec = json.loads(argv[1])
    torch.set_num_threads(os.cpu_count() or 1)
    model = build(spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["lr"], weight_decay=0.1)
    rng = np.random.default_rng(spec["seed"])  # the same draw as tools.bench_train.token_batch
    ids = torch.from_numpy(rng.integers(0, spec["fields"]["vocab_size"], size=(spec["batch"], spec["seq"]),
                                        dtype=np.int64))
    losses = []

    def step() -> None:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))

    step()  # warm-up
    gflop = count_gflop(model, ids)

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    times, cpu_times = [], []
    for _ in range(spec["repeats"]):
        start, start_cpu = time.perf_counter(), cpu()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(cpu() - start_cpu)
    result = {"times": times, "cpu_times": cpu_times, "compile_s": None, "gflop": gflop,
              "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "loss_first": losses[0], "loss_last": losses[-1], "threads": torch.get_num_threads(),
              "torch": torch.__version__, "transformers": transformers.__version__,
              "attn_implementation": model.config._attn_implementation,
              "experts_implementation": getattr(model.config, "_experts_implementation", None)}
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
