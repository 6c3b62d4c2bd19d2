"""Tiny hybrid Gated-DeltaNet / gated-attention MoE model on Shakespeare: the CPU demo (`make demo`).

  python -m experiments.train --config configs/tiny.py --workdir runs/demo
  python -m experiments.train --config configs/tiny.py:dense --workdir runs/demo_dense   # dense SwiGLU FFN
  python -m experiments.train --config configs/tiny.py --workdir runs/x --config.data.corpora=shakespeare,wiki_en

8 layers = 2 x (3 GDN + 1 attention), hidden 128, 8 experts top-2 + a shared expert (7.8 M parameters, 5.5 M of
them embedding / LM head). Trains on 41 of the 42 Shakespeare plays (Coriolanus is held out by the hash split of
qwen35_jax.data.prepared.documents) with the real Qwen3.5 tokenizer and a compact vocabulary of the 21,574 ids the
training plays use (+ <unk>); batches of 8 x 256 tokens, prepared into the workdir on the first run.

Expected: validation loss ~10.0 (= ln 21575, uniform) at step 0 and ~6.8 after 30 steps (>= 3 nats lower).
Measured with `make demo` (experiments.train + experiments.eval; prepared data, orbax checkpoints every 10 steps)
on a quiet 2-core machine with a warm compilation cache: 1 min 42 s wall (data 1.5 s, model init 14 s, train-step
compile 20 s, then 1,470-2,020 tokens/s).

  step         0      5     10     15     20     25     30
  train loss   -    9.84   8.38   7.11   6.84   6.80   6.65
  val loss   10.00                                       6.82   (-3.18 nats)

``:test`` is the shrunk variant the resume / NaN tests use (8 steps, checkpoint every 2).
"""

from __future__ import annotations

import ml_collections

from qwen35_jax.parallel import multihost

VARIANTS = ("moe", "dense", "test")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: ``moe`` (default), ``dense``, or ``test`` (the MoE model shrunk to hidden 32 / 4 layers / seq 32 /
    batch 2 / 256-id vocabulary for the resume and NaN tests: compiles in seconds)."""
    variant = arg or "moe"
    test = variant == "test"
    variant = "moe" if test else variant
    if variant not in VARIANTS:
        raise ValueError(f"configs/tiny.py:{variant} is unknown; choose one of {VARIANTS} (e.g. configs/tiny.py:dense)")
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict({
        "vocab_size": 248320,  # replaced by the compact vocabulary's size when data.compact_vocab
        "hidden_size": 128,
        "num_hidden_layers": 8,
        "full_attention_interval": 4,  # every 4th layer is gated attention, the rest GDN (3:1); 0 = all GDN
        "attn_output_gate": True,  # False: attention without the sigmoid output gate (an ablation, numerics §10)
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "intermediate_size": 256 if variant == "dense" else 0,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "linear_key_head_dim": 32,
        "linear_value_head_dim": 32,
        "linear_conv_kernel_dim": 4,
        "num_experts": 8 if variant == "moe" else 0,
        "num_experts_per_tok": 2 if variant == "moe" else 0,
        "moe_intermediate_size": 64 if variant == "moe" else 0,
        "shared_expert_intermediate_size": 64 if variant == "moe" else 0,
        "router_aux_loss_coef": 0.001,
        "tie_word_embeddings": False,
        "rope_theta": 1e7,
        "partial_rotary_factor": 0.25,
        "mrope_section": (2, 1, 1),  # rotary_dim / 2 = 32 * 0.25 / 2 = 4 frequencies
        "rms_norm_eps": 1e-6,
        "mtp_num_hidden_layers": 0,
        "dtype": "float32",
        "param_dtype": "float32",  # fp32 master weights; model.dtype=bfloat16 computes in bf16
        "remat_policy": "none",  # none | full | dots | dots_with_no_batch_dims
        "gdn_impl": "auto",
    })

    config.data = ml_collections.ConfigDict({
        # comma-separated: shakespeare, wiki_en, wiki_fr, wiki_es, files:<glob>, prepared:<dir> (tools.prepare_data)
        "corpora": "shakespeare",
        "weights": "",  # mixture, e.g. "shakespeare=0.7,wiki_en=0.3" ("": in proportion to training tokens)
        "workers": 0,  # grain worker processes building batches (0: threads of the training process)
        "seq_len": 256,
        "batch_size": 8,
        "seed": 0,  # shuffling
        "split_seed": 0,  # which documents are held out
        "validation_fraction": 0.05,
        "compact_vocab": True,
        "compact_vocab_max_size": 0,  # 0: every id the training text uses; N: the N - 1 most frequent + <unk>
        "mqar_fraction": 0.0,  # > 0: that share of each batch's rows are MQAR recall rows (qwen35_jax.data.mqar)
        "mqar_eval": "",  # e.g. "64x4,128x8": MQAR accuracy per (length x pairs) after training / in experiments.eval
    })

    config.train = ml_collections.ConfigDict({
        "steps": 30,
        "learning_rate": 3e-3,
        "warmup_steps": 6,
        "min_lr_ratio": 0.1,  # cosine decays to learning_rate * min_lr_ratio
        "weight_decay": 0.1,
        "b1": 0.9,
        "b2": 0.95,
        "grad_clip_norm": 1.0,
        "decay_embeddings": False,
        "grad_accum_steps": 1,
        "z_loss": 0.0,  # e.g. 1e-4: penalise logsumexp(logits)^2
        "aux_loss_coef": -1.0,  # < 0: model.router_aux_loss_coef
        "mtp_loss_weight": 0.0,  # > 0 (with model.mtp_num_hidden_layers=1): train the MTP head too
        "log_every": 5,
        "eval_every": 0,  # 0: validate only at the start and the end
        "eval_batches": 4,
        "max_nonfinite_in_a_row": 10,
        "debug_nan_steps": (),  # e.g. (3,): force a NaN loss at step 3 (the update is skipped and counted)
        "peak_flops_per_device": 0.0,  # 0: known accelerators by device kind (CPU: no MFU unless set)
    })

    config.checkpoint = ml_collections.ConfigDict({"every": 10, "keep": 3})
    # Mesh axis sizes (qwen35_jax.parallel.mesh); the defaults put every device on fsdp.
    config.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "sequence": 1, "expert": 1, "tensor": 1})
    # Several processes (qwen35_jax.parallel.multihost): --config.multihost.enabled=True and, where the cluster is not
    # detected, --config.multihost.{coordinator_address,num_processes,process_id}.
    config.multihost = multihost.config_section()

    if test:
        config.model.update(hidden_size=32, num_hidden_layers=4, num_experts=4, moe_intermediate_size=16,
                            shared_expert_intermediate_size=16, linear_key_head_dim=16, linear_value_head_dim=16,
                            head_dim=16, mrope_section=(1, 1, 0), gdn_impl="recurrent")
        config.data.update(seq_len=32, batch_size=2, compact_vocab_max_size=256)
        config.train.update(steps=8, warmup_steps=2, learning_rate=1e-2, log_every=1, eval_batches=1)
        config.checkpoint.update(every=2, keep=2)
    return config
