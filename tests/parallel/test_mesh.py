"""Mesh from config, logical axis rules and the up-front validation errors (shapes only, nothing compiles)."""

import jax
import pytest
from jax.sharding import PartitionSpec as P
from parallel_helpers import tiny_config

from qwen35_jax.model import build_model, model_shardings, validate_model
from qwen35_jax.parallel import Runtime
from qwen35_jax.parallel.mesh import MeshConfig, build_mesh
from qwen35_jax.parallel.rules import DEFAULT_RULES, logical_to_spec


def _mesh(**axes):
    mesh_config = MeshConfig.from_config(axes)
    return build_mesh(mesh_config), mesh_config


def _runtime(**axes) -> Runtime:
    return Runtime.for_mesh(*_mesh(**axes))


def test_minus_one_absorbs_the_remaining_devices():
    assert MeshConfig.from_config(None).axis_sizes(8) == dict(data=1, fsdp=8, sequence=1, expert=1, tensor=1)
    assert MeshConfig.from_config(dict(expert=4)).axis_sizes(8)["fsdp"] == 2
    assert MeshConfig.from_config(dict(data=-1, tensor=2)).axis_sizes(8) == dict(data=4, fsdp=1, sequence=1,
                                                                                expert=1, tensor=2)
    mesh, _ = _mesh(expert=2, tensor=2)
    assert dict(mesh.shape) == dict(data=1, fsdp=2, sequence=1, expert=2, tensor=2)
    assert set(mesh.axis_types) == {jax.sharding.AxisType.Auto}


@pytest.mark.parametrize("fields, devices, message", [
    (dict(data=3, fsdp=1), 8, r"multiply to 3 but there are 8 devices"),
    (dict(data=3), 8, r"need a multiple of 3 devices"),
    (dict(data=-1, fsdp=-1), 8, r"more than one -1"),
    (dict(pipeline=2), 8, r"unknown field\(s\) \['pipeline'\]"),
    (dict(expert=0), 8, r"config.mesh.expert=0 is invalid"),
    (dict(expert_dispatch="sorted"), 8, r"expert_dispatch='sorted' is invalid"),
    (dict(capacity_factor=0), 8, r"capacity_factor=0 is invalid"),
    (dict(rules=[("heads", "tensor")]), 8, r"unknown logical axis 'heads'"),
    (dict(rules=[("embed", "model")]), 8, r"mesh axes must be distinct names"),
])
def test_invalid_mesh_config(fields, devices, message):
    with pytest.raises(ValueError, match=message):
        MeshConfig.from_config(fields).axis_sizes(devices)


def test_heads_not_divisible_by_tensor_is_rejected_naming_the_field():
    config = tiny_config(linear_num_key_heads=8, linear_num_value_heads=8)  # everything else divides by 8
    with pytest.raises(ValueError, match=r"'q_heads' of size 4 \(ModelConfig.num_attention_heads\).*tensor"):
        validate_model(config, _runtime(tensor=8))


def test_experts_not_divisible_by_expert_axis_is_rejected():
    with pytest.raises(ValueError, match=r"'expert' of size 6 \(ModelConfig.num_experts\)"):
        validate_model(tiny_config(num_experts=6), _runtime(expert=4))


def test_expert_parallel_needs_tokens_split_over_the_expert_axis():
    rules = [r for r in DEFAULT_RULES if r[0] != "act_batch"] + [("act_batch", ("data", "fsdp"))]
    with pytest.raises(ValueError, match=r"tokens sharded over the expert mesh axes \('expert',\)"):
        validate_model(tiny_config(), _runtime(expert=4, rules=rules))


def test_dropless_dispatch_is_refused_on_cpu():
    with pytest.raises(ValueError, match=r"'dropless' needs ragged_all_to_all.*'cpu'"):
        validate_model(tiny_config(), _runtime(expert=4, expert_dispatch="dropless"))


def test_parameter_shardings_follow_the_rules():
    runtime = _runtime(fsdp=2, expert=2, tensor=2)
    shardings = model_shardings(build_model(tiny_config(), runtime, abstract=True), runtime)
    layers = shardings["decoder"]["blocks"]["layers"]
    spec = {name: layers[i][part][name].get_value().spec for i, part, name in [
        (0, "mlp", "experts_gate"), (0, "mlp", "experts_down"), (0, "mlp", "router"), (1, "self_attn", "q_proj"),
        (1, "self_attn", "k_proj"), (0, "linear_attn", "in_proj_v")]}
    assert spec["experts_gate"] == P(None, "expert", "fsdp", "tensor")  # expert axis taken: embed falls back
    assert spec["experts_down"] == P(None, "expert", "tensor", "fsdp")
    assert spec["router"] == P(None, ("fsdp", "expert"), None)
    assert spec["q_proj"] == P(None, ("fsdp", "expert"), "tensor", None)
    assert spec["k_proj"] == P(None, ("fsdp", "expert"), "tensor", None)
    assert spec["in_proj_v"] == P(None, ("fsdp", "expert"), "tensor", None)
    assert shardings["embed_tokens"].get_value().spec == P("tensor", ("fsdp", "expert"))


def test_kv_heads_fall_back_to_replication_and_unknown_sizes_take_the_first_rule():
    sizes = dict(data=1, fsdp=1, sequence=1, expert=1, tensor=4)
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), (32, 2, 16), sizes, DEFAULT_RULES) == P(None, None, None)
    assert logical_to_spec(("embed", "q_heads", "head_dim"), (32, 4, 16), sizes, DEFAULT_RULES) == P(
        None, "tensor", None)
    assert logical_to_spec(("act_batch", "act_seq"), (None, None), dict(sizes, expert=2), DEFAULT_RULES) == P(
        "expert", None)
