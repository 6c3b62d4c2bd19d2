"""The jitted training and evaluation steps (pure functions of the train state; see ``state``).

  train_step = make_train_step(graphdef, rest, tx, schedule, model_config, config.train)
  state, metrics = train_step(state, batch, poison)   # poison: debug flag making this step's loss NaN

One step: (optional) gradient accumulation over ``train.grad_accum_steps`` micro-batches with ``lax.scan``; loss =
masked next-token cross-entropy + aux-loss coefficient x MoE load-balancing loss + ``train.z_loss`` x mean
``logsumexp(logits)^2``, with the LM head run in ``train.loss_chunk``-position pieces (``losses.lm_head_losses``);
fp32 gradients whatever the parameter dtype; AdamW update (moments in ``train.moment_dtype``). With
``train.mtp_loss_weight`` > 0 the loss adds the MTP head's ``mtp_loss`` (numerics §2.9, §10): weight x the mean
cross-entropy of ``train.mtp_depth`` chained steps, plus the aux coefficient x the MTP MoE layer's load-balancing
loss; its logits are computed whole (``train.loss_chunk`` chunks the main head only). This is the one
training step: ``train.trainer.build_trainer`` builds it for ``experiments.train`` and for ``tools.aot_compile``.
A non-finite loss or gradient norm keeps the old parameters and optimizer state (the update is skipped) and counts
the step in ``skipped`` / ``skipped_in_a_row``.

Batch fields other than ``targets`` / ``loss_mask`` are passed to the model by name (``input_ids`` positionally),
so a data source may add model inputs without changing this module. Batches are rows-first — every field has the
batch as its leading axis, so it shards and splits into micro-batches along it — and ``model_inputs`` puts the two
multimodal fields in the model's layouts: ``positions [B, 3, T] -> [3, B, T]`` and ``pixel_values [B, P, C] ->
[B·P, C]``. Values that are static for a given number of rows (``image_grid_thw``, which fixes the vision tower's
shapes) come from ``static_inputs(rows)`` and are closed over as constants, never traced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.model.mtp import mtp_loss
from qwen35_jax.train.losses import lm_head_losses

Batch = dict[str, jax.Array]
StaticInputs = Callable[[int], dict[str, Any]]  # rows -> model keyword arguments that fix shapes (NumPy)
LABEL_FIELDS = ("targets", "loss_mask")


def model_inputs(batch: Batch, static_inputs: StaticInputs | None = None) -> dict[str, Any]:
    """The model's keyword arguments for a rows-first ``batch`` (see the module docstring)."""
    inputs: dict[str, Any] = {k: v for k, v in batch.items() if k not in LABEL_FIELDS and k != "input_ids"}
    if "positions" in inputs and inputs["positions"].ndim == 3:
        inputs["positions"] = jnp.swapaxes(inputs["positions"], 0, 1)
    if "pixel_values" in inputs and inputs["pixel_values"].ndim == 3:
        inputs["pixel_values"] = inputs["pixel_values"].reshape(-1, inputs["pixel_values"].shape[-1])
    if static_inputs is not None:
        inputs.update(static_inputs(batch["input_ids"].shape[0]))
    return inputs


def _router_metrics(stats: Any) -> dict[str, jax.Array]:
    """Expert load fractions x num_experts (1 = perfectly balanced) and the fraction of dropped assignments."""
    total = jnp.maximum(jnp.sum(stats.assignments), 1.0)
    load = stats.assignments / total * stats.assignments.shape[-1]
    return {"expert_load_max": jnp.max(load), "expert_load_min": jnp.min(load),
            "expert_dropped_fraction": stats.dropped / total}


def make_loss_fn(graphdef: nnx.GraphDef, rest: nnx.State, model_config: ModelConfig,
                 train: ml_collections.ConfigDict, static_inputs: StaticInputs | None = None,
                 ) -> Callable[..., tuple[jax.Array, dict[str, jax.Array]]]:
    aux_coef = model_config.router_aux_loss_coef if train.aux_loss_coef < 0 else train.aux_loss_coef
    z_coef, chunk = float(train.z_loss), int(train.loss_chunk)
    mtp_weight, mtp_depth = float(train.get("mtp_loss_weight", 0.0)), int(train.get("mtp_depth", 1))

    def loss_fn(params: nnx.State, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        model = nnx.merge(graphdef, params, rest)
        inputs = model_inputs(batch, static_inputs)
        out = model(batch["input_ids"], compute_logits=False, **inputs)
        nll_sum, z_sum, count = lm_head_losses(out.hidden_states, model.unembed, batch["targets"],
                                               batch["loss_mask"], chunk)
        count = jnp.maximum(count, 1.0)
        ce = nll_sum / count
        loss = ce + aux_coef * out.aux_loss
        metrics = {"ce": ce, "aux_loss": out.aux_loss}
        if z_coef > 0:
            loss, metrics["z_loss"] = loss + z_coef * z_sum / count, z_sum / count
        if out.router_stats is not None:
            metrics.update(_router_metrics(out.router_stats))
        if mtp_weight > 0:
            loss = loss + _mtp_term(model, out.hidden_states, batch, inputs, mtp_weight, mtp_depth, aux_coef, metrics)
        return loss, metrics

    return loss_fn


def _mtp_term(model: nnx.Module, hidden: jax.Array, batch: Batch, inputs: dict[str, Any], weight: float, depth: int,
              aux_coef: float, metrics: dict[str, jax.Array]) -> jax.Array:
    """``weight · mean_k CE_k + aux_coef · MTP aux`` from the main hidden states (numerics §2.9); adds ``mtp_ce``
    (mean unweighted CE over the steps), ``mtp_ce_<k>`` per step when ``depth`` > 1 and ``mtp_aux_loss`` (MoE) to
    ``metrics``. The batch's ``loss_mask[t]`` belongs to the target ``input_ids[t + 1]``: shifted one right it is
    ``mtp_loss``'s per-input-position mask, so step k's target ``t+k+1`` counts where ``loss_mask[t+k]`` does."""
    ids = batch["input_ids"]
    target_mask = jnp.pad(batch["loss_mask"].astype(bool)[:, :-1], ((0, 0), (1, 0)))
    mtp = mtp_loss(model, hidden, ids, depth=depth, weight=weight, loss_mask=target_mask,
                   segment_ids=inputs.get("segment_ids"), positions=inputs.get("positions"),
                   attention_mask=inputs.get("attention_mask"))
    metrics["mtp_ce"] = jnp.mean(mtp.step_losses)
    if depth > 1:
        metrics.update({f"mtp_ce_{k}": mtp.step_losses[k - 1] for k in range(1, depth + 1)})
    if model.config.is_moe:
        metrics["mtp_aux_loss"] = mtp.aux_loss
    return mtp.loss + aux_coef * mtp.aux_loss


def _accumulate(grad_fn: Callable, params: nnx.State, batch: Batch, steps: int) -> tuple[Any, Any]:
    """Mean loss/metrics/gradients over ``steps`` equal micro-batches of ``batch`` (scan: one micro-batch live)."""
    if steps == 1:
        return grad_fn(params, batch)
    micro = jax.tree.map(lambda x: x.reshape(steps, x.shape[0] // steps, *x.shape[1:]), batch)
    zero = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), jax.eval_shape(grad_fn, params, batch))

    def body(carry: Any, mb: Batch) -> tuple[Any, None]:
        out = grad_fn(params, mb)
        return jax.tree.map(lambda c, o: c + o.astype(jnp.float32) / steps, carry, out), None

    total, _ = jax.lax.scan(body, zero, micro)
    return total


def make_train_step(graphdef: nnx.GraphDef, rest: nnx.State, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, model_config: ModelConfig, train: ml_collections.ConfigDict, *,
                    state_shardings: Any = None, batch_sharding: Any = None,
                    replicated: Any = None, static_inputs: StaticInputs | None = None,
                    ) -> Callable[[dict, Batch, jax.Array], tuple[dict, dict]]:
    """The jitted step. With shardings given, inputs and outputs are pinned to them, so the state a step returns
    (or a checkpoint restores) has exactly the signature of the first call: one compilation per run."""
    grad_fn = jax.value_and_grad(make_loss_fn(graphdef, rest, model_config, train, static_inputs), has_aux=True)
    accum = int(train.grad_accum_steps)

    def step(state: dict, batch: Batch, poison: jax.Array) -> tuple[dict, dict]:
        params = state["params"]
        # Differentiated with respect to an fp32 view of the parameters: the gradients (and the optimizer's update
        # arithmetic) are fp32 whatever ``model.param_dtype`` is; ``apply_updates`` casts the result back.
        fp32_params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
        (loss, metrics), grads = _accumulate(grad_fn, fp32_params, batch, accum)
        loss = jnp.where(poison, jnp.nan, loss)  # debug: train.debug_nan_steps
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        applied = state["step"] - state["skipped"]  # optimizer updates so far = the schedule's count
        new_state = {
            "params": keep(new_params, params),
            "opt_state": keep(new_opt_state, state["opt_state"]),
            "step": state["step"] + 1,
            "skipped": state["skipped"] + jnp.where(finite, 0, 1),
            "skipped_in_a_row": jnp.where(finite, 0, state["skipped_in_a_row"] + 1),
            "rng": jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state["rng"]))[0]),
        }
        out = {"loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(applied), "finite": finite,
               "skipped": new_state["skipped"], "skipped_in_a_row": new_state["skipped_in_a_row"], **metrics}
        return new_state, out

    if state_shardings is None:
        return jax.jit(step, donate_argnums=(0,))
    return jax.jit(step, donate_argnums=(0,), in_shardings=(state_shardings, batch_sharding, replicated),
                   out_shardings=(state_shardings, replicated))


def make_eval_step(graphdef: nnx.GraphDef, rest: nnx.State, static_inputs: StaticInputs | None = None,
                   loss_chunk: int = 0) -> Callable[[nnx.State, Batch], tuple[jax.Array, ...]]:
    """``(params, batch) -> (sum of target NLL over the loss mask, number of targets)``; the LM head runs in
    ``loss_chunk``-position pieces like the training loss (0: all at once)."""

    @jax.jit
    def eval_step(params: nnx.State, batch: Batch) -> tuple[jax.Array, jax.Array]:
        model = nnx.merge(graphdef, params, rest)
        out = model(batch["input_ids"], compute_logits=False, **model_inputs(batch, static_inputs))
        nll_sum, _, count = lm_head_losses(out.hidden_states, model.unembed, batch["targets"], batch["loss_mask"],
                                           loss_chunk)
        return nll_sum, count

    return eval_step


@jax.jit
def all_finite(tree: Any) -> jax.Array:
    """True when every floating-point leaf of ``tree`` is finite (checked before each checkpoint)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def pooled_ratio(step: Callable, params: nnx.State, batches: Sequence[Batch]) -> float:
    """Σ numerator / Σ denominator of ``step(params, batch) -> (numerator, denominator)`` over ``batches`` (0 when
    the denominators sum to 0)."""
    total, count = 0.0, 0.0
    for batch in batches:
        numerator, denominator = step(params, batch)
        total, count = total + float(numerator), count + float(denominator)
    return total / max(count, 1.0)


def mean_nll(eval_step: Callable, params: nnx.State, batches: Sequence[Batch]) -> float:
    """Mean next-token NLL (nats) over every unmasked target of ``batches`` (``make_eval_step``)."""
    return pooled_ratio(eval_step, params, batches)
