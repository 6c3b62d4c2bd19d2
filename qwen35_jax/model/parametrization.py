"""How each text parameter scales with width: its role, µP's init and learning-rate multipliers, and the output
multipliers of the forward pass (numerics §12).

  m = config.width_multiplier                  # hidden_size / mup_base_width under "mup", 1.0 under "sp"
  role = param_role(["decoder", ..., "in_proj_a"])   # "input" | "hidden" | "output" | "vector"
  spec = matrix_spec("experts_down", ndim=4)   # batch / input / output axes of a hidden matrix (Muon's dimensions)

Roles (Tensor Programs V's classes, by which of a weight's dimensions grow with width):

* ``input``  the token embedding (finite vocabulary in, width out);
* ``hidden`` every projection whose fan-in and fan-out both grow: attention q/k/v/o, GDN ``in_proj_{q,k,v,z,a,b}``
  and ``out_proj``, the SwiGLU and expert matrices, the MTP ``fc``;
* ``output`` width in, a finite number out: the LM head, the MoE router, the shared-expert gate;
* ``vector`` per-channel or per-head: RMSNorm weights, the GDN causal conv (fan-in = kernel size), ``A_log``,
  ``dt_bias``.

Under "sp" nothing here changes the model (bit-identical to a model without it). Under "mup" ``scale_hidden_init``
multiplies each hidden matrix's initial values by ``m^-1/2`` (variance ∝ 1 / fan-in), ``output_multiplier`` (1 / m)
scales the logits of every output-role weight, and ``adam_lr_multiplier`` (1 / m for hidden matrices) is applied by
``qwen35_jax.train.optimizer``. Head dims are not widened by our width scaling (the ladders grow heads, not their
size), so the attention and GDN query scales stay constants (numerics §12).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
from flax import nnx

from qwen35_jax.config import ModelConfig

SP, MUP = "sp", "mup"
INPUT, HIDDEN, OUTPUT, VECTOR = "input", "hidden", "output", "vector"


@dataclasses.dataclass(frozen=True)
class MatrixSpec:
    """A hidden matrix's axes: ``batch`` (stacked layers, experts), ``inputs`` (contracted: fan-in), ``outputs``."""

    batch: tuple[int, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


# leaf name -> (rank without stacked layers, input axes, batch axes), positions within that rank.
_HIDDEN: dict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    **dict.fromkeys(("q_proj", "k_proj", "v_proj"), (3, (0,), ())),  # [embed, heads, head_dim]
    "o_proj": (3, (0, 1), ()),  # [heads, head_dim, embed]
    **dict.fromkeys(("in_proj_q", "in_proj_k", "in_proj_v", "in_proj_z"), (3, (0,), ())),
    **dict.fromkeys(("in_proj_a", "in_proj_b"), (2, (0,), ())),  # [embed, value heads]: one gate per head
    "out_proj": (3, (0, 1), ()),
    **dict.fromkeys(("gate_proj", "up_proj", "down_proj", "fc"), (2, (0,), ())),
    **dict.fromkeys(("experts_gate", "experts_up", "experts_down"), (3, (1,), (0,))),  # [expert, in, out]
}
_OUTPUT = frozenset({"lm_head", "router", "shared_expert_gate"})
_INPUT = frozenset({"embed_tokens"})
_VECTOR = frozenset({"weight", "conv_q", "conv_k", "conv_v", "A_log", "dt_bias"})


def output_multiplier(config: ModelConfig) -> float | None:
    """The factor (1 / m) on the logits of output-role weights under "mup"; None when there is none to apply (so
    the forward pass is untouched)."""
    m = config.width_multiplier
    return None if m == 1.0 else 1.0 / m


def param_role(names: Sequence[str]) -> str:
    """The role of the text parameter at module path ``names`` (see the module docstring)."""
    names = [str(n) for n in names]
    leaf = names[-1] if names else ""
    if "visual" in names:
        raise NotImplementedError(f"parameter {'/'.join(names)}: the vision tower has no µP / Muon rules yet "
                                  "(numerics §12); use model.parametrization='sp' and train.optimizer='adamw'")
    if leaf in _HIDDEN:
        return HIDDEN
    if leaf in _OUTPUT:
        return OUTPUT
    if leaf in _INPUT:
        return INPUT
    if leaf in _VECTOR:
        return VECTOR
    raise ValueError(f"parameter {'/'.join(names)} has no width role; add its leaf name to "
                     "qwen35_jax/model/parametrization.py (numerics §12)")


def matrix_spec(leaf: str, ndim: int) -> MatrixSpec:
    """Axes of the hidden matrix ``leaf`` with ``ndim`` dimensions; extra leading axes are stacked layers."""
    rank, inputs, batch = _HIDDEN[leaf]
    if ndim < rank:
        raise ValueError(f"{leaf} has {ndim} dimensions, expected at least {rank}")
    lead = ndim - rank
    inputs = tuple(lead + a for a in inputs)
    batch = tuple(range(lead)) + tuple(lead + a for a in batch)
    outputs = tuple(a for a in range(ndim) if a not in inputs and a not in batch)
    return MatrixSpec(batch=batch, inputs=inputs, outputs=outputs)


def adam_lr_multiplier(role: str, m: float) -> float:
    """µP's Adam learning-rate factor: 1 / m for hidden matrices (their updates add up over a fan-in of width
    terms), 1 for the rest (numerics §12)."""
    return 1.0 / m if role == HIDDEN else 1.0


def scale_hidden_init(model: nnx.Module, config: ModelConfig) -> None:
    """Under "mup", multiply each hidden matrix of ``model`` by ``m^-1/2`` in place (init std 0.02 at the base
    width, ∝ fan-in^-1/2 beyond it). A no-op at m = 1 and under "sp"."""
    m = config.width_multiplier
    if m == 1.0:
        return
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if param_role(path) == HIDDEN:
            variable.set_value(jax.numpy.asarray(variable.get_value() * (m ** -0.5), variable.get_value().dtype))
