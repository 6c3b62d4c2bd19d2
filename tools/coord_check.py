"""µP coordinate check: per-layer activation scales of a width ladder after a few AdamW steps, under SP and µP.

    python -m tools.coord_check [--widths 64,128,256,512,1024] [--steps 5] [--ffn dense,moe] [--lr 1e-2] [--seeds 1]
                                [--data shakespeare|synthetic] [--out docs/scaling/coord_check] [--overwrite]

For each FFN kind (``dense`` SwiGLU of width 3w; ``moe``: 8 experts top-2 of width w/2 plus a gated shared expert
of width w/2), each parametrisation (``sp``; ``mup`` with ``mup_base_width`` = the smallest width) and each width w,
a 4-layer hybrid (3 Gated DeltaNet layers + 1 gated attention layer) of hidden size w is trained for ``--steps``
AdamW steps (``qwen35_jax.train.optimizer.make_optimizer``, so µP's learning-rate multipliers apply; constant
learning rate ``--lr``, no warmup, no weight decay, clipping at 1e9 i.e. off) with the training step of
``qwen35_jax.train.step``. The models are the rungs of ``qwen35_jax.scaling.ladder`` (``model_shape``): heads grow
with width at a fixed head dim of 16 (``w/16`` query and GDN value heads, half as many key-value and GDN key
heads), partial rotary 0.25, fp32, no MTP head.

Before training and after every step a separate jitted forward on a fixed probe batch records the RMS (over batch,
positions and channels) of every sub-layer's output before it joins the residual stream — the GDN token mixer, the
gated attention, the FFN (dense MLP or whole MoE block) — averaged over the layers of each type, plus the
embedding output and the logits. The layer classes' ``__call__`` are wrapped while the probe is traced (the model
files are untouched; ``jax.debug.callback`` carries the values out of the scanned layer stack).

Data (``--data``): ``shakespeare`` (default) = Hamlet from the bundled corpus (``qwen35_jax.data.corpora``), Qwen3.5
tokenizer, renumbered to a compact vocabulary of the ``--vocab`` - 1 most frequent ids + <unk>; ``synthetic`` = a
seeded Zipf(1.1) unigram stream in which half of the 8-token pieces are drawn from a fixed book of 64 repeated
8-grams. Training step s uses the s-th set of ``--batch`` fresh windows of ``--seq_len`` + 1 tokens; the probe batch
is the stream's last ``--batch`` windows, never trained on. Every width and parametrisation sees the same tokens.

Writes ``<out>.md`` (table), ``<out>.json`` (every number) and ``<out>.png`` (the usual coordinate-check grid: a row
per FFN kind and parametrisation, a column per layer type, x = width, y = scale, one line per step); an existing
output is never replaced without ``--overwrite``. A bad command line ends with one ``error: ...`` line, status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from qwen35_jax.scaling.ladder import HEAD_DIM, WIDTH_STEP

FFN_KINDS = ("dense", "moe")
PARAMETRIZATIONS = ("sp", "mup")
LAYER_TYPES = ("embedding", "gdn", "attention", "ffn", "logits")
HIDDEN_TYPES = ("gdn", "attention", "ffn")  # the sub-layers µP must keep width-independent
DATA_SOURCES = ("shakespeare", "synthetic")
TOLERANCE = 1.5  # acceptance: µP's max/min scale across widths, per hidden layer type
NUM_LAYERS = 4
PLAY = "hamlet"
SUFFIXES = (".md", ".json", ".png")
# XLA:CPU spends most of this check compiling (a new program per width and parametrisation, each run a few times);
# LLVM's cheap settings halve that. The matmuls run in Eigen either way; losses agree to ~1e-6.
CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


class InputError(Exception):
    """A bad command line: one ``error:`` line, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one coordinate check runs."""

    widths: tuple[int, ...] = (64, 128, 256, 512, 1024)
    steps: int = 5
    ffn_kinds: tuple[str, ...] = FFN_KINDS
    lr: float = 1e-2
    seeds: int = 1
    data: str = "shakespeare"
    batch: int = 8
    seq_len: int = 64
    vocab_size: int = 512

    @property
    def base_width(self) -> int:
        return min(self.widths)


# ---------------------------------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class Windows:
    """Token windows of ``seq_len + 1``: ``train`` [N, L+1] cycled over steps, ``probe`` [batch, L+1] held out."""

    train: np.ndarray
    probe: np.ndarray
    description: str


def shakespeare_stream(vocab_size: int) -> tuple[np.ndarray, str]:
    """Hamlet as compact token ids (the ``vocab_size`` - 1 most frequent Qwen3.5 ids of the play + <unk> = 0)."""
    from qwen35_jax.data.corpora import load_corpus
    from qwen35_jax.data.tokenizer import get_tokenizer
    from qwen35_jax.data.vocab import UNK_ID, CompactVocab

    ids = np.asarray(get_tokenizer().encode(load_corpus("shakespeare").documents[PLAY]), np.int64)
    compact = CompactVocab.build([ids], max_size=vocab_size).to_compact(ids)
    unk = float(np.mean(compact == UNK_ID))
    return compact, (f"Shakespeare's {PLAY} (bundled corpus, Qwen3.5 tokenizer): {ids.size} tokens renumbered to the "
                     f"{vocab_size - 1} most frequent ids + <unk> ({100 * unk:.0f} % of tokens are <unk>)")


def synthetic_stream(vocab_size: int, tokens: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """A Zipf(1.1) unigram stream of 8-token pieces, half of them from a fixed book of 64 repeated 8-grams."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab_size + 1) ** 1.1
    p /= p.sum()
    book = rng.choice(vocab_size, size=(64, 8), p=p)
    pieces = -(-tokens // 8)
    fresh = rng.choice(vocab_size, size=(pieces, 8), p=p)
    repeated = book[rng.integers(0, 64, size=pieces)]
    stream = np.where((rng.random(pieces) < 0.5)[:, None], repeated, fresh).reshape(-1)[:tokens]
    return stream, (f"synthetic: Zipf(1.1) unigrams over {vocab_size} ids in 8-token pieces, half of them from a "
                    f"fixed book of 64 repeated 8-grams (seed {seed})")


def make_windows(settings: Settings) -> Windows:
    """The training windows and the held-out probe batch of ``settings.data``."""
    width = settings.seq_len + 1
    needed = (settings.steps + 1) * settings.batch * width
    if settings.data == "shakespeare":
        stream, description = shakespeare_stream(settings.vocab_size)
    else:
        stream, description = synthetic_stream(settings.vocab_size, max(needed, 1 << 16))
    count = stream.size // width
    if count < 2 * settings.batch:
        raise ValueError(f"the {settings.data} stream has {stream.size} tokens: too few for two batches of "
                         f"{settings.batch} x {width}")
    windows = stream[: count * width].reshape(count, width).astype(np.int32)
    return Windows(train=windows[: -settings.batch], probe=windows[-settings.batch:], description=description)


def lm_batch(windows: np.ndarray) -> dict[str, np.ndarray]:
    """Next-token batch of ``windows`` [B, L+1]: inputs, targets and an all-ones loss mask."""
    return {"input_ids": windows[:, :-1], "targets": windows[:, 1:],
            "loss_mask": np.ones(windows[:, 1:].shape, np.float32)}


def train_batch(windows: Windows, step: int, batch: int) -> dict[str, np.ndarray]:
    """Step ``step``'s fresh rows (the training windows cycle when the steps outrun them)."""
    rows = (step * batch + np.arange(batch)) % windows.train.shape[0]
    return lm_batch(windows.train[rows])


# ---------------------------------------------------------------------------------------------------- models


def model_config(width: int, ffn: str, parametrization: str, base_width: int, vocab_size: int) -> Any:
    """The ladder's rung of hidden size ``width`` (``qwen35_jax.scaling.ladder.model_shape``: heads of 16, 3 GDN +
    1 gated attention per block of 4 layers) with this check's vocabulary and parametrisation."""
    from qwen35_jax.config import ModelConfig
    from qwen35_jax.scaling.ladder import model_shape

    return ModelConfig(
        vocab_size=vocab_size, **model_shape(width, NUM_LAYERS, ffn), mtp_num_hidden_layers=0, dtype="float32",
        param_dtype="float32", parametrization=parametrization,
        mup_base_width=base_width if parametrization == "mup" else 0)


def train_config(settings: Settings) -> Any:
    """The train section (defaults filled): constant ``lr``, no warmup, no weight decay, clipping off."""
    import ml_collections

    from qwen35_jax.train.config_schema import fill_defaults

    train = {"steps": settings.steps, "learning_rate": settings.lr, "warmup_steps": 0, "schedule": "constant",
             "weight_decay": 0.0, "grad_clip_norm": 1e9}
    return fill_defaults(ml_collections.ConfigDict({"train": train})).train


# ---------------------------------------------------------------------------------------------------- recording


def rms(x: Any) -> Any:
    """sqrt(mean(x²)) over every element, in fp32."""
    import jax.numpy as jnp

    return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))


class SublayerRecorder:
    """Collects sub-layer output RMS values sent out of a traced forward by ``jax.debug.callback``."""

    def __init__(self) -> None:
        self._values: dict[str, list[float]] = defaultdict(list)
        self.inside_moe = 0  # trace-time depth: the shared expert's MLP is part of the MoE output, not an FFN

    def capture(self, kind: str, y: Any) -> None:
        import jax

        jax.debug.callback(functools.partial(self._store, kind), rms(y))

    def _store(self, kind: str, value: Any) -> None:
        self._values[kind].append(float(value))

    def take(self) -> dict[str, float]:
        """Mean RMS per layer type since the last call (waits for pending callbacks), then forgets them."""
        import jax

        jax.effects_barrier()
        means = {kind: float(np.mean(values)) for kind, values in self._values.items()}
        self._values.clear()
        return means


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) else out


@contextlib.contextmanager
def recording(recorder: SublayerRecorder) -> Iterator[SublayerRecorder]:
    """Within: GatedDeltaNet, GatedAttention, MLP (outside a MoE block) and SparseMoE calls report their output's
    RMS to ``recorder`` (at run time of whatever is traced here)."""
    from qwen35_jax.model.attention import GatedAttention
    from qwen35_jax.model.gated_deltanet import GatedDeltaNet
    from qwen35_jax.model.mlp import MLP
    from qwen35_jax.model.moe import SparseMoE

    originals = {cls: cls.__call__ for cls in (GatedDeltaNet, GatedAttention, MLP, SparseMoE)}

    def wrap(cls: type, kind: str) -> Callable[..., Any]:
        original = originals[cls]

        @functools.wraps(original)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            if cls is SparseMoE:
                recorder.inside_moe += 1
            try:
                out = original(self, *args, **kwargs)
            finally:
                if cls is SparseMoE:
                    recorder.inside_moe -= 1
            if cls is SparseMoE or not recorder.inside_moe:
                recorder.capture(kind, _first(out))
            return out

        return call

    kinds = {GatedDeltaNet: "gdn", GatedAttention: "attention", MLP: "ffn", SparseMoE: "ffn"}
    try:
        for cls, kind in kinds.items():
            cls.__call__ = wrap(cls, kind)
        yield recorder
    finally:
        for cls, original in originals.items():
            cls.__call__ = original


def make_probe(graphdef: Any, rest: Any, input_ids: np.ndarray, recorder: SublayerRecorder
               ) -> Callable[[Any], dict[str, float]]:
    """``params -> {layer type: RMS}`` on the fixed ``input_ids``: a jitted forward traced under ``recording``."""
    import jax
    from flax import nnx

    ids = jax.numpy.asarray(input_ids)

    @jax.jit
    def forward(params: Any) -> tuple[Any, Any]:
        model = nnx.merge(graphdef, params, rest)
        return rms(model.embed(ids)), rms(model(ids).logits)

    compiled: list[Callable[[Any], tuple[Any, Any]]] = []

    def probe(params: Any) -> dict[str, float]:
        if not compiled:
            with recording(recorder):  # traced (hence recording) once
                compiled.append(compile_for(forward, params))
        recorder.take()  # nothing stale
        embedding, logits = compiled[0](params)
        return {"embedding": float(embedding), **recorder.take(), "logits": float(logits)}

    return probe


# ---------------------------------------------------------------------------------------------------- training


def compile_for(fn: Any, *args: Any) -> Callable[..., Any]:
    """The jitted ``fn`` compiled for ``args`` (with XLA:CPU's cheap settings on CPU)."""
    import jax

    return fn.lower(*args).compile(CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None)


def build_params(config: Any, seeds: int) -> tuple[Any, list[Any], Any]:
    """``(graphdef, parameters per seed 0..seeds-1, rest)`` of ``build_model(config)``, initialised by one compiled
    program (a new width initialised eagerly compiles every op for its shapes: twice as slow)."""
    import jax
    from flax import nnx

    from qwen35_jax.model.build import build_model
    from qwen35_jax.parallel.runtime import Runtime

    graphdef = nnx.split(build_model(config, Runtime.local(), abstract=True))[0]
    make = jax.jit(lambda: [nnx.state(build_model(config, Runtime.local(), seed=s)) for s in range(seeds)])
    splits = [nnx.split(nnx.merge(graphdef, state), nnx.Param, ...) for state in compile_for(make)()]
    return splits[0][0], [params for _, params, _ in splits], splits[0][2]


def run_seeds(config: Any, train: Any, windows: Windows, settings: Settings
              ) -> list[tuple[list[dict[str, float]], list[float]]]:
    """Train one model per seed ``settings.steps`` steps; per seed (scales at steps 0..steps, training
    cross-entropy per step). The seeds share one compiled training step and probe."""
    import jax
    import jax.numpy as jnp

    from qwen35_jax.train.optimizer import make_optimizer
    from qwen35_jax.train.step import make_train_step

    graphdef, seed_params, rest = build_params(config, settings.seeds)
    tx, schedule = make_optimizer(train, seed_params[0], config)
    init = jax.jit(tx.init)
    probe = make_probe(graphdef, rest, lm_batch(windows.probe)["input_ids"], SublayerRecorder())
    batches = [{k: jnp.asarray(v) for k, v in train_batch(windows, step, settings.batch).items()}
               for step in range(settings.steps)]
    step_fn, runs = None, []
    for seed, params in enumerate(seed_params):
        zero = np.zeros((), np.int32)
        state = {"params": params, "opt_state": init(params), "step": zero, "skipped": zero,
                 "skipped_in_a_row": zero, "rng": jax.random.key_data(jax.random.key(seed))}
        if step_fn is None:  # traced here, never under `recording`
            step_fn = compile_for(make_train_step(graphdef, rest, tx, schedule, config, train), state, batches[0],
                                  jnp.asarray(False))
        scales, losses = [probe(state["params"])], []
        for batch in batches:
            state, metrics = step_fn(state, batch, jnp.asarray(False))
            losses.append(float(metrics["ce"]))
            scales.append(probe(state["params"]))
        runs.append((scales, losses))
    return runs


def _mean_over_seeds(runs: Sequence[list[dict[str, float]]]) -> dict[str, list[float]]:
    """{layer type: [scale per step]} averaged over seeds."""
    return {kind: [float(np.mean([run[s][kind] for run in runs])) for s in range(len(runs[0]))]
            for kind in LAYER_TYPES if kind in runs[0][0]}


def run_coord_check(settings: Settings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every (ffn, parametrisation, width) of ``settings``; the JSON-ready results (see ``summarise``)."""
    start = time.perf_counter()
    windows = make_windows(settings)
    train = train_config(settings)
    scales: dict[str, Any] = {f: {p: {k: {} for k in LAYER_TYPES} for p in PARAMETRIZATIONS}
                              for f in settings.ffn_kinds}
    losses: dict[str, Any] = {f: {p: {} for p in PARAMETRIZATIONS} for f in settings.ffn_kinds}
    shapes: dict[str, Any] = {}
    for ffn in settings.ffn_kinds:
        runs_at_base: dict[str, Any] = {}
        for parametrization in PARAMETRIZATIONS:
            for width in settings.widths:
                config = model_config(width, ffn, parametrization, settings.base_width, settings.vocab_size)
                shapes.setdefault(ffn, {})[str(width)] = _shape(config)
                began = time.perf_counter()
                if parametrization == "mup" and width == settings.base_width and "sp" in runs_at_base:
                    runs = runs_at_base["sp"]  # m = 1: µP is SP bit for bit (tests/train/test_optimizers.py)
                else:
                    runs = run_seeds(config, train, windows, settings)
                if width == settings.base_width:
                    runs_at_base[parametrization] = runs
                per_step = _mean_over_seeds([scale for scale, _ in runs])
                for kind, values in per_step.items():
                    scales[ffn][parametrization][kind][str(width)] = values
                loss = [float(np.mean(step)) for step in zip(*(loss for _, loss in runs), strict=True)]
                losses[ffn][parametrization][str(width)] = loss
                log(f"{ffn:5s} {parametrization:3s} width {width:5d}: {time.perf_counter() - began:6.1f} s, train "
                    f"CE {loss[0]:.3f} -> {loss[-1]:.3f}, " + ", ".join(
                        f"{k} {per_step[k][-1]:.3g}" for k in LAYER_TYPES if k in per_step))
    results = {"settings": dataclasses.asdict(settings) | {"base_width": settings.base_width,
                                                           "data_description": windows.description},
               "optimizer": {k: train[k] for k in ("optimizer", "schedule", "learning_rate", "warmup_steps",
                                                   "weight_decay", "grad_clip_norm", "b1", "b2")},
               "shapes": shapes, "scales": scales, "train_ce": losses}
    results["summary"] = summarise(results)
    results["wall_s"] = round(time.perf_counter() - start, 1)
    return results


def _shape(config: Any) -> dict[str, int]:
    fields = ("hidden_size", "num_attention_heads", "num_key_value_heads", "linear_num_key_heads",
              "linear_num_value_heads", "intermediate_size", "num_experts", "num_experts_per_tok",
              "moe_intermediate_size", "shared_expert_intermediate_size")
    return {f: getattr(config, f) for f in fields} | {"width_multiplier": config.width_multiplier}


# ---------------------------------------------------------------------------------------------------- summary


def spread(values: Sequence[float]) -> float:
    """max / min of positive ``values`` (inf if one is 0)."""
    low = min(values)
    return math.inf if low <= 0 else max(values) / low


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Per ffn / parametrisation / layer type: the last and first step's scale per width, their max/min ratios, and
    the acceptance verdict (µP's hidden-layer ratio at the last step <= TOLERANCE)."""
    widths = [str(w) for w in results["settings"]["widths"]]
    summary: dict[str, Any] = {"tolerance": TOLERANCE, "layers": {}, "violations": []}
    for ffn, by_parametrization in results["scales"].items():
        for parametrization, by_kind in by_parametrization.items():
            for kind, by_width in by_kind.items():
                if not by_width:
                    continue
                last = {w: by_width[w][-1] for w in widths}
                entry = {"last": last, "ratio": spread(list(last.values())),
                         "ratio_step0": spread([by_width[w][0] for w in widths])}
                summary["layers"].setdefault(ffn, {}).setdefault(parametrization, {})[kind] = entry
                if parametrization == "mup" and kind in HIDDEN_TYPES and not entry["ratio"] <= TOLERANCE:
                    summary["violations"].append({"ffn": ffn, "layer": kind, "ratio": entry["ratio"]})
    summary["mup_pass"] = not summary["violations"]
    return summary


def format_table(results: dict[str, Any]) -> str:
    """Markdown: each layer type's scale after the last step per width and its max/min ratios across widths."""
    settings, layers = results["settings"], results["summary"]["layers"]
    widths = [str(w) for w in settings["widths"]]
    steps = settings["steps"]
    lines = [f"| FFN | param | layer | {' | '.join(f'w={w}' for w in widths)} | max/min step {steps} | "
             "max/min step 0 |", "|---|---|---|" + "---:|" * (len(widths) + 2)]
    for ffn, by_parametrization in layers.items():
        for parametrization, by_kind in by_parametrization.items():
            for kind in LAYER_TYPES:
                if kind not in by_kind:
                    continue
                entry = by_kind[kind]
                flag = " ✗" if parametrization == "mup" and kind in HIDDEN_TYPES and entry["ratio"] > TOLERANCE else ""
                cells = " | ".join(f"{entry['last'][w]:.3g}" for w in widths)
                lines.append(f"| {ffn} | {parametrization} | {kind} | {cells} | {entry['ratio']:.2f}{flag} | "
                             f"{entry['ratio_step0']:.2f} |")
    return "\n".join(lines)


def format_losses(results: dict[str, Any]) -> str:
    """Markdown: the training cross-entropy of the first and last step per width."""
    widths = [str(w) for w in results["settings"]["widths"]]
    lines = [f"| FFN | param | {' | '.join(f'w={w}' for w in widths)} |", "|---|---|" + "---:|" * len(widths)]
    for ffn, by_parametrization in results["train_ce"].items():
        for parametrization, by_width in by_parametrization.items():
            cells = " | ".join(f"{by_width[w][0]:.2f} → {by_width[w][-1]:.2f}" for w in widths)
            lines.append(f"| {ffn} | {parametrization} | {cells} |")
    return "\n".join(lines)


def verdict(results: dict[str, Any]) -> str:
    """One line: whether µP keeps every hidden layer type within TOLERANCE across widths, else which do not."""
    summary = results["summary"]
    if summary["mup_pass"]:
        worst = max(e["ratio"] for by_p in summary["layers"].values() for k, e in by_p["mup"].items()
                    if k in HIDDEN_TYPES)
        return f"µP: every hidden layer type within {TOLERANCE}x across widths (largest max/min {worst:.2f})."
    bad = ", ".join(f"{v['ffn']} {v['layer']} {v['ratio']:.2f}x" for v in summary["violations"])
    return f"µP FAILS the {TOLERANCE}x acceptance: {bad}."


def model_description(results: dict[str, Any]) -> str:
    """The ladder's shapes in words, from the recorded shapes of the narrowest width."""
    shapes = {ffn: by_width[min(by_width, key=int)] for ffn, by_width in results["shapes"].items()}
    ffns = []
    if "dense" in shapes:
        ffns.append(f"dense SwiGLU {shapes['dense']['intermediate_size'] // shapes['dense']['hidden_size']}w")
    if "moe" in shapes:
        moe = shapes["moe"]
        ffns.append(f"MoE of {moe['num_experts']} experts top-{moe['num_experts_per_tok']} of width w/2 + a gated "
                    "shared expert of width w/2")
    return (f"{NUM_LAYERS} layers (3 Gated DeltaNet + 1 gated attention; `qwen35_jax.scaling.ladder`), hidden w, "
            f"head dim {HEAD_DIM} for attention and GDN (w/{HEAD_DIM} query and GDN value heads, half as many "
            f"key-value and GDN key heads), {' or '.join(ffns)}, vocabulary {results['settings']['vocab_size']}, "
            "fp32")


def format_markdown(results: dict[str, Any]) -> str:
    """The whole ``<out>.md``: method, the scale table, the verdict and the training losses."""
    s = results["settings"]
    opt = results["optimizer"]
    return "\n".join([
        "# µP coordinate check", "",
        f"`python -m tools.coord_check` — widths {', '.join(map(str, s['widths']))}; {s['steps']} AdamW steps "
        f"(constant lr {opt['learning_rate']:g}, no warmup, weight decay {opt['weight_decay']:g}, b1 {opt['b1']}, "
        f"b2 {opt['b2']}, clipping off); {s['seeds']} seed(s); µP base width {s['base_width']}; batch "
        f"{s['batch']} x {s['seq_len']} tokens per step; wall time {results['wall_s']:.0f} s.", "",
        f"Data: {s['data_description']}.", "",
        f"Model: {model_description(results)}.", "",
        "Scale = RMS over the probe batch (8 held-out windows) of each sub-layer's output before the residual add, "
        "averaged over layers of a type; `embedding` = the token embedding, `logits` = the LM head output (after "
        f"µP's 1/m). Columns: the scale after step {s['steps']} per width, then max/min across widths after step "
        f"{s['steps']} and at initialisation. ✗ marks a µP hidden layer type over the {TOLERANCE}x acceptance.", "",
        format_table(results), "", verdict(results), "",
        "Training cross-entropy (nats), first step → last step:", "", format_losses(results), ""])


# ---------------------------------------------------------------------------------------------------- outputs


def plot(results: dict[str, Any], path: str) -> None:
    """The coordinate-check grid: rows = FFN kind x parametrisation, columns = layer types, x = width, y = scale,
    one line per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    widths = results["settings"]["widths"]
    rows = [(f, p) for f in results["scales"] for p in PARAMETRIZATIONS]
    fig, axes = plt.subplots(len(rows), len(LAYER_TYPES), figsize=(3.1 * len(LAYER_TYPES), 2.5 * len(rows)),
                             squeeze=False, sharex=True)
    steps = results["settings"]["steps"]
    colors = plt.cm.viridis(np.linspace(0, 0.9, steps + 1))
    for r, (ffn, parametrization) in enumerate(rows):
        for c, kind in enumerate(LAYER_TYPES):
            ax, by_width = axes[r][c], results["scales"][ffn][parametrization][kind]
            for step in range(steps + 1):
                ax.plot(widths, [by_width[str(w)][step] for w in widths], "o-", ms=3, color=colors[step],
                        label=f"step {step}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            # Minor ticks labelled only on panels spanning under half a decade (else they crowd the axis).
            ax.yaxis.set_minor_formatter(matplotlib.ticker.LogFormatterSciNotation(labelOnlyBase=False,
                                                                                   minor_thresholds=(0.5, 0.2)))
            ax.set_title(f"{ffn} · {parametrization} · {kind}", fontsize=9)
            ax.tick_params(labelsize=7)
            if r == len(rows) - 1:
                ax.set_xlabel("width", fontsize=8)
            if c == 0:
                ax.set_ylabel("RMS", fontsize=8)
    axes[0][0].legend(fontsize=6)
    lr = results["optimizer"]["learning_rate"]
    fig.suptitle(f"µP coordinate check: sub-layer output RMS after t AdamW steps (lr {lr:g})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def output_paths(out: str) -> list[str]:
    return [out + suffix for suffix in SUFFIXES]


def check_outputs(out: str, overwrite: bool) -> None:
    """InputError when an output exists (without ``overwrite``) or ``out`` names a directory."""
    if out.endswith(os.sep) or os.path.isdir(out):
        raise InputError(f"--out {out} is a directory; give a path prefix such as {os.path.join(out, 'coord_check')}")
    existing = [p for p in output_paths(out) if os.path.exists(p)]
    if existing and not overwrite:
        raise InputError(f"{', '.join(existing)} exist(s); pass --overwrite to replace, or choose another --out")


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_outputs(results: dict[str, Any], out: str) -> list[str]:
    """``<out>.md``, ``<out>.json`` and ``<out>.png`` (parent directories created); their paths."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    md, js, png = output_paths(out)
    _write(md, format_markdown(results))
    _write(js, json.dumps(results, indent=1, default=float) + "\n")
    plot(results, png)
    return [md, js, png]


# ---------------------------------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{message} (see {self.prog} --help)")


def _int_list(text: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"--{name}={text!r} is not a comma-separated list of integers, e.g. 64,128,256") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _Parser(prog="python -m tools.coord_check", description=__doc__.splitlines()[0], allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--widths", default="64,128,256,512,1024", help="hidden sizes: 32 or multiples of 64")
    parser.add_argument("--steps", type=int, default=5, help="AdamW steps")
    parser.add_argument("--ffn", default="dense,moe", help="FFN kinds: dense, moe")
    parser.add_argument("--lr", type=float, default=1e-2, help="constant learning rate (µP: at the base width)")
    parser.add_argument("--seeds", type=int, default=1, help="initialisation seeds 0..N-1, scales averaged")
    parser.add_argument("--data", default="shakespeare", choices=DATA_SOURCES)
    parser.add_argument("--batch", type=int, default=8, help="rows per step and in the probe batch")
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=512, help="vocabulary size (compact ids)")
    parser.add_argument("--out", default="docs/scaling/coord_check", help="prefix of <out>.md, .json, .png")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Checked Settings (InputError naming the flag otherwise)."""
    widths = _int_list(args.widths, "widths")
    bad = [w for w in widths if w <= 0 or w % WIDTH_STEP]
    if len(set(widths)) < 2 or bad:
        raise InputError(f"--widths={args.widths!r}: give at least two distinct widths, each a multiple of "
                         f"{WIDTH_STEP} (an even number of heads of {HEAD_DIM}; see qwen35_jax.scaling.ladder)")
    ffn = tuple(f.strip() for f in args.ffn.split(",") if f.strip())
    if not ffn or set(ffn) - set(FFN_KINDS):
        raise InputError(f"--ffn={args.ffn!r}: choose from {', '.join(FFN_KINDS)}")
    for name, value, low in (("steps", args.steps, 1), ("seeds", args.seeds, 1), ("batch", args.batch, 1),
                             ("seq_len", args.seq_len, 2), ("vocab", args.vocab, 16)):
        if value < low:
            raise InputError(f"--{name}={value} is invalid: use >= {low}")
    if not args.lr > 0:
        raise InputError(f"--lr={args.lr} is invalid: use a positive learning rate, e.g. 1e-2")
    return Settings(widths=tuple(sorted(set(widths))), steps=args.steps, ffn_kinds=tuple(dict.fromkeys(ffn)),
                    lr=args.lr, seeds=args.seeds, data=args.data, batch=args.batch, seq_len=args.seq_len,
                    vocab_size=args.vocab)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        settings = settings_from_args(args)
        check_outputs(args.out, args.overwrite)
    except InputError as error:
        sys.stdout.flush()
        sys.stderr.write(f"error: {error}\n")
        return 2
    results = run_coord_check(settings)
    print(format_table(results))
    print(verdict(results))
    print(f"wall time {results['wall_s']:.0f} s")
    for path in write_outputs(results, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
