"""AdamW with linear warmup + cosine decay, global-norm clipping and a weight-decay mask by parameter path.

  tx, schedule = make_optimizer(config.train, params)

No weight decay on norms (any path segment containing ``norm``), biases (``bias`` / ``*_bias``, e.g. GDN
``dt_bias``), the GDN decay ``A_log``, and — unless ``train.decay_embeddings`` — the input embedding
``embed_tokens``. The moments are stored in ``train.moment_dtype`` (bfloat16 on pods and for the 0.8B on a CPU).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax


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


def make_schedule(train: ml_collections.ConfigDict) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=train.learning_rate, warmup_steps=train.warmup_steps,
        decay_steps=train.steps, end_value=train.learning_rate * train.min_lr_ratio)


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


def make_optimizer(train: ml_collections.ConfigDict, params: Any) -> tuple[optax.GradientTransformation,
                                                                           optax.Schedule]:
    """The optimizer for ``params`` (a pytree of arrays or ShapeDtypeStructs) and its learning-rate schedule."""
    schedule = make_schedule(train)
    tx = optax.chain(
        optax.clip_by_global_norm(train.grad_clip_norm),
        optax.adamw(schedule, b1=train.b1, b2=train.b2, weight_decay=train.weight_decay,
                    mask=decay_mask(params, train.decay_embeddings)),
    )
    return with_moment_dtype(tx, train.moment_dtype), schedule
