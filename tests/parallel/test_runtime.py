"""The model is built with its runtime: every layer chooses its compute in its constructor, nothing is patched later."""

import ast
import pathlib

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from parallel_helpers import assert_trees_close, mesh_runtime, tiny_config

from qwen35_jax.model import build_model
from qwen35_jax.ops.gated_delta_rule.sharded import DeltaRule, ShardedDeltaRule, delta_rule_for
from qwen35_jax.ops.moe.expert_parallel import ExpertParallel
from qwen35_jax.parallel import ActivationSharding, Runtime

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "qwen35_jax"
HOOKS = ("expert_parallel", "delta_rule", "constrain_activations")


def _layers(model):
    return model.decoder.blocks.layers[0], model.decoder.blocks.layers[1]


def test_local_runtime_runs_everything_on_one_device():
    model = build_model(tiny_config(gdn_impl="auto"), Runtime.local("cpu"), abstract=True)
    gdn_layer, attention_layer = _layers(model)
    assert model.decoder.constrain_activations is None
    assert gdn_layer.mlp.expert_parallel is None and attention_layer.mlp.expert_parallel is None
    assert gdn_layer.linear_attn.delta_rule == DeltaRule("chunked", "cpu")  # auto resolved at construction
    assert {model.backend, attention_layer.self_attn.backend, gdn_layer.mlp.shared_expert.backend} == {"cpu"}


def test_mesh_runtime_chooses_the_sharded_compute_at_construction():
    runtime = mesh_runtime(expert=2, fsdp=2, tensor=2)
    model = build_model(tiny_config(), runtime, abstract=True)
    gdn_layer, attention_layer = _layers(model)
    assert model.decoder.constrain_activations == ActivationSharding(runtime.mesh, (*runtime.rules, ("act_batch", ()),
                                                                                       ("act_seq", ())))
    for layer in (gdn_layer, attention_layer):
        assert layer.mlp.expert_parallel == ExpertParallel(runtime.mesh, runtime.rules, "capacity", 1.25, "cpu")
    assert gdn_layer.linear_attn.delta_rule == DeltaRule("recurrent", "cpu")  # XLA partitions a non-Pallas rule


def test_tpu_target_on_cpu_devices_builds_the_pallas_rule_in_shard_map():
    """``Runtime.for_mesh(..., backend="tpu")`` on the 8 CPU devices, as AOT compilation for a TPU topology does."""
    runtime = mesh_runtime("tpu", expert=2, fsdp=4)
    model = build_model(tiny_config(gdn_impl="auto"), runtime, abstract=True)
    gdn_layer, _ = _layers(model)
    assert gdn_layer.linear_attn.delta_rule == ShardedDeltaRule(runtime.mesh, runtime.rules, "pallas_tpu", "tpu")
    assert gdn_layer.mlp.expert_parallel.dispatch == "dropless"
    assert gdn_layer.mlp.backend == "tpu" and model.backend == "tpu"


def test_concrete_build_on_a_mesh_creates_sharded_parameters():
    runtime = mesh_runtime(expert=2, fsdp=2, tensor=2)
    model = build_model(tiny_config(), runtime, seed=1)
    gate = model.decoder.blocks.layers[0].mlp.experts_gate[...]
    assert gate.sharding == NamedSharding(runtime.mesh, P(None, "expert", "fsdp", "tensor"))
    local = build_model(tiny_config(), Runtime.local("cpu"), seed=1)
    assert_trees_close(gate, local.decoder.blocks.layers[0].mlp.experts_gate[...], rtol=1e-6)


def test_sharded_delta_rule_matches_the_plain_rule_with_state_and_gradients():
    """``ShardedDeltaRule`` (how Pallas kernels run on a mesh), here around the token recurrence: batch over
    data x fsdp x expert, GDN heads over tensor; initial and final states sharded like them."""
    runtime = mesh_runtime(expert=2, fsdp=2, tensor=2)
    sharded = ShardedDeltaRule(runtime.mesh, runtime.rules, "recurrent", "cpu")
    plain = delta_rule_for("recurrent", runtime)
    assert plain == DeltaRule("recurrent", "cpu")
    batch, length, h_k, h_v, d = 4, 12, 2, 4, 8
    keys = jax.random.split(jax.random.key(0), 7)
    q, k = (jax.random.normal(key, (batch, length, h_k, d)) for key in keys[:2])
    v = jax.random.normal(keys[2], (batch, length, h_v, d))
    g = -jax.nn.softplus(jax.random.normal(keys[3], (batch, length, h_v)))
    beta = jax.nn.sigmoid(jax.random.normal(keys[4], (batch, length, h_v)))
    state = jax.random.normal(keys[5], (batch, h_v, d, d))
    segment_ids = jnp.ones((batch, length), jnp.int32).at[1, 5:].set(2)

    def loss(rule, q, k, v, g, beta, state):
        out, final = rule(q, k, v, g, beta, segment_ids=segment_ids, initial_state=state, output_final_state=True)
        return jnp.sum(out * jnp.cos(out)) + jnp.sum(final ** 2), (out, final)

    grad = jax.jit(jax.value_and_grad(loss, argnums=(1, 2, 3, 4, 5, 6), has_aux=True), static_argnums=0)
    args = (q, k, v, g, beta, state)
    (_, (out, final)), grads = grad(sharded, *args)
    (_, (ref_out, ref_final)), ref_grads = grad(plain, *args)
    assert_trees_close((out, final, grads), (ref_out, ref_final, ref_grads))
    assert final.sharding.is_equivalent_to(NamedSharding(runtime.mesh, P(("fsdp", "expert"), "tensor")), final.ndim)
    out_only, none = jax.jit(lambda *a: sharded(*a, segment_ids=segment_ids))(q, k, v, g, beta)
    assert none is None
    assert_trees_close(out_only, plain(q, k, v, g, beta, segment_ids=segment_ids)[0])


def _assignments_outside_init(path: pathlib.Path) -> list[str]:
    """``<anything>.<hook> = ...`` or ``setattr(..., "<hook>", ...)`` anywhere but ``self.<hook> = ...`` in
    an ``__init__``."""
    tree = ast.parse(path.read_text())
    allowed = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            for inner in ast.walk(node):
                for target in getattr(inner, "targets", [getattr(inner, "target", None)]):
                    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and \
                            target.value.id == "self":
                        allowed.add(id(target))
    found = []
    for node in ast.walk(tree):
        for target in getattr(node, "targets", [getattr(node, "target", None)]):
            if isinstance(target, ast.Attribute) and target.attr in HOOKS and id(target) not in allowed:
                found.append(f"{path}:{node.lineno}: {ast.unparse(target)} =")
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("setattr", "object.__setattr__") and \
                len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value in HOOKS:
            found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_attribute_is_assigned_after_construction():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _assignments_outside_init(path)]
    assert not found, "layer choices must be made in the constructors:\n" + "\n".join(found)


def test_the_check_sees_a_patch(tmp_path):
    source = tmp_path / "patched.py"
    source.write_text("class M:\n    def __init__(self):\n        self.delta_rule = None\n\n\n"
                      "def f(m):\n    m.delta_rule = 1\n    setattr(m, 'expert_parallel', None)\n")
    hits = [hit.split(": ", 1)[1] for hit in _assignments_outside_init(source)]
    assert hits == ["m.delta_rule =", "setattr(m, 'expert_parallel', None)"]


def test_parallel_imports_neither_model_nor_ops_and_nothing_asks_the_default_backend_at_trace_time():
    for path in sorted((PACKAGE / "parallel").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.startswith(("qwen35_jax.model", "qwen35_jax.ops"))], path
    for folder in ("model", "ops/moe"):
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            assert "default_backend" not in path.read_text(), path
