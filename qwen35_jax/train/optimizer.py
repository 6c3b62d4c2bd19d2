"""The optimizer of a run: AdamW or Muon, a learning-rate schedule, global-norm clipping, a weight-decay mask by
parameter path and, under µP, per-parameter learning-rate multipliers by path.

  tx, schedule = make_optimizer(config.train, params, model_config)

No weight decay on norms (any path segment containing ``norm``), biases (``bias`` / ``*_bias``, e.g. GDN
``dt_bias``), the GDN decay ``A_log``, and — unless ``train.decay_embeddings`` — the input embedding
``embed_tokens``. The moments are stored in ``train.moment_dtype`` (bfloat16 on pods and for the 0.8B on a CPU).

Schedules (``train.schedule``; numerics §12.3): ``cosine`` (linear warmup, cosine to ``learning_rate *
min_lr_ratio`` at ``train.steps``), ``wsd`` (warmup, a stable phase at the peak, then a cooldown over the last
``train.decay_steps`` steps — or ``train.decay_fraction`` of them — ``linear`` or ``1-sqrt`` to the same end value)
and ``constant`` (warmup, then the peak).

``train.optimizer = "muon"``: optax's Muon (Newton–Schulz orthogonalised momentum, shape-scaled) for the hidden
matrices of ``model.parametrization`` (attention, GDN and FFN projections; stacked layers and experts are batch
axes), AdamW for everything else (embedding, LM head, router, norms, conv, gates' vectors); both follow the schedule,
Muon's peak being ``train.muon_learning_rate``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from optax.contrib import MuonDimensionNumbers, muon

from qwen35_jax.config import ModelConfig
from qwen35_jax.model.parametrization import HIDDEN, adam_lr_multiplier, matrix_spec, param_role

SCHEDULES = ("cosine", "wsd", "constant")
DECAY_SHAPES = ("linear", "1-sqrt")
OPTIMIZERS = ("adamw", "muon")


def _path_names(path: tuple) -> list[str]:
    """Module-path names of a leaf; the ``.value`` attribute step of an ``nnx.Variable`` (a pytree node whose child
    is its array) is not part of the parameter's name."""
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        names = names[:-1]
    return names


def no_decay(names: list[str], decay_embeddings: bool) -> bool:
    """Whether the parameter at path ``names`` is excluded from weight decay."""
    leaf = names[-1] if names else ""
    if any("norm" in n for n in names) or leaf == "bias" or leaf.endswith("_bias") or leaf == "A_log":
        return True
    return not decay_embeddings and "embed_tokens" in names


def decay_mask(params: Any, decay_embeddings: bool) -> Any:
    """A tree like ``params`` with True where weight decay applies."""
    return jax.tree_util.tree_map_with_path(lambda p, _: not no_decay(_path_names(p), decay_embeddings), params)


def decay_steps(train: ml_collections.ConfigDict) -> int:
    """Length of a ``wsd`` schedule's cooldown: ``train.decay_steps``, or ``decay_fraction`` of ``train.steps``."""
    if train.get("decay_steps", 0) > 0:
        return int(train.decay_steps)
    return round(train.get("decay_fraction", 0.2) * train.steps)


def make_schedule(train: ml_collections.ConfigDict) -> optax.Schedule:
    """The learning rate per step of ``train.schedule`` (see the module docstring)."""
    kind = train.get("schedule", "cosine")
    peak, warmup = train.learning_rate, train.warmup_steps
    if kind == "cosine":  # the only schedule before train.schedule existed: kept as it was, bit for bit
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=train.steps,
            end_value=peak * train.min_lr_ratio)
    warm = optax.linear_schedule(0.0, peak, warmup) if warmup else optax.constant_schedule(peak)
    if kind == "constant":
        return optax.join_schedules([warm, optax.constant_schedule(peak)], [warmup])
    cooldown = decay_steps(train)
    start = train.steps - cooldown
    end = peak * train.min_lr_ratio
    one_minus_sqrt = train.get("decay_shape", "linear") == "1-sqrt"

    def cool(count: jax.Array) -> jax.Array:  # count from the cooldown's start
        progress = jnp.clip(count / max(cooldown, 1), 0.0, 1.0)
        fraction_left = 1.0 - jnp.sqrt(progress) if one_minus_sqrt else 1.0 - progress
        return end + (peak - end) * fraction_left

    return optax.join_schedules([warm, optax.constant_schedule(peak), cool], [warmup, start])


def with_moment_dtype(tx: optax.GradientTransformation, dtype: str) -> optax.GradientTransformation:
    """``tx`` whose floating-point state (AdamW's first and second moments) is stored in ``dtype``. The update
    arithmetic runs in the gradients' dtype (fp32, see ``step``); only the stored state is rounded."""
    dtype = jnp.dtype(dtype)

    def cast(state: Any) -> Any:
        return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, state)

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        updates, state = tx.update(updates, state, params)
        return updates, cast(state)

    return optax.GradientTransformation(lambda params: cast(tx.init(params)), update)


def scale_by_tree(multipliers: Any) -> optax.GradientTransformation:
    """Multiply each leaf's update by the matching float of ``multipliers`` (a tree like the params)."""

    def update(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, optax.EmptyState]:
        del params
        return jax.tree.map(lambda u, m: u if m == 1.0 else u * jnp.asarray(m, u.dtype), updates, multipliers), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _tree_by_path(params: Any, leaf_value: Callable[[list[str], Any], Any]) -> Any:
    return jax.tree_util.tree_map_with_path(lambda p, x: leaf_value(_path_names(p), x), params)


def muon_dimension_numbers(params: Any) -> Any:
    """Muon's axes for every hidden matrix (``MuonDimensionNumbers``: its fan-in axes are reduced, stacked layers
    and experts are batch axes), None for the leaves AdamW trains."""

    def dims(names: list[str], x: Any) -> MuonDimensionNumbers | None:
        if param_role(names) != HIDDEN:
            return None
        spec = matrix_spec(names[-1], len(x.shape))
        return MuonDimensionNumbers(reduction_axis=spec.inputs, output_axis=spec.outputs)

    return _tree_by_path(params, dims)


def adamw_mup_multipliers(params: Any, model_config: ModelConfig) -> Any | None:
    """µP's per-parameter Adam learning-rate factors (numerics §12.2), or None when all are 1 (SP, or m = 1)."""
    m = model_config.width_multiplier
    if m == 1.0:
        return None
    return _tree_by_path(params, lambda names, _: adam_lr_multiplier(param_role(names), m))


def make_muon(train: ml_collections.ConfigDict, schedule: optax.Schedule, params: Any) -> optax.GradientTransformation:
    """Muon for the hidden matrices, AdamW (our decay mask) for the rest, as one ``optax.partition``."""
    dims = muon_dimension_numbers(params)
    labels = jax.tree.map(lambda d: "adamw" if d is None else "muon", dims, is_leaf=lambda d: d is None or
                          isinstance(d, MuonDimensionNumbers))
    ratio = (train.muon_learning_rate or train.learning_rate) / train.learning_rate

    def muon_schedule(count: jax.Array) -> jax.Array:
        return schedule(count) * ratio

    matrices = muon(muon_schedule, beta=train.muon_momentum, weight_decay=train.weight_decay,
                    nesterov=True, muon_weight_dimension_numbers=lambda p: muon_dimension_numbers(p),
                    consistent_rms=train.muon_consistent_rms or None)
    rest = optax.adamw(schedule, b1=train.b1, b2=train.b2, weight_decay=train.weight_decay,
                       mask=lambda p: decay_mask(p, train.decay_embeddings))
    return optax.partition({"muon": matrices, "adamw": rest}, labels)


def make_optimizer(train: ml_collections.ConfigDict, params: Any, model_config: ModelConfig | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer for ``params`` (a pytree of arrays or ShapeDtypeStructs) and its learning-rate schedule;
    ``model_config`` gives the parametrisation (None: standard)."""
    schedule = make_schedule(train)
    kind = train.get("optimizer", "adamw")
    if kind == "muon":
        # Muon's shape scaling sqrt(max(1, fan_out / fan_in)) already keeps hidden updates width-independent (the
        # spectral µP condition, numerics §12.4); every AdamW-trained leaf has the factor 1 under µP.
        tx = optax.chain(optax.clip_by_global_norm(train.grad_clip_norm), make_muon(train, schedule, params))
    else:
        parts = [optax.clip_by_global_norm(train.grad_clip_norm),
                 optax.adamw(schedule, b1=train.b1, b2=train.b2, weight_decay=train.weight_decay,
                             mask=decay_mask(params, train.decay_embeddings))]
        multipliers = adamw_mup_multipliers(params, model_config) if model_config is not None else None
        if multipliers is not None:
            parts.append(scale_by_tree(multipliers))
        tx = optax.chain(*parts)
    return with_moment_dtype(tx, train.moment_dtype), schedule
