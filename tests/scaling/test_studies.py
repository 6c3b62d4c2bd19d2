"""The scaling studies' sweeps validate point by point (as ``experiments.sweep`` does before training anything), the
ladder's shapes and counts come from the model, and each isoFLOP point spends its budget."""

import math

import pytest

from experiments.sweep import build_points, command, sweep_arms, validate_points
from qwen35_jax.param_count import non_embedding_parameters
from qwen35_jax.scaling.ladder import RUNGS, model_shape, rung_for_params
from qwen35_jax.scaling.studies import BATCH, ISOFLOP_BUDGETS, SEQ_LEN, budget_arm, flops_model
from qwen35_jax.train.flops import training_flops_per_token


@pytest.mark.parametrize("study", ["lr_transfer", "wsd", "isoflop"])
def test_every_point_of_a_study_validates(study):
    spec = f"configs/scaling/{study}.py"
    arms, seeds, _ = sweep_arms(spec, None)
    points = validate_points(spec, build_points(arms, list(seeds), {}))
    assert len(points) == {"lr_transfer": 80, "wsd": 7, "isoflop": 15}[study]
    assert all(p.tokens_per_step == (64 if study == "lr_transfer" else SEQ_LEN) * BATCH for p in points)


def test_wsd_branches_name_the_long_runs_checkpoints(tmp_path):
    arms, seeds, _ = sweep_arms("configs/scaling/wsd.py", None)
    points = {p.name: p for p in build_points(arms, list(seeds), {})}
    cmd = command("configs/scaling/wsd.py", str(tmp_path / "wsd_branch_200"), points["wsd_branch_200"].overrides,
                  str(tmp_path))
    assert f"--config.train.branch_from={tmp_path}/wsd_800/checkpoints/160" in cmd
    assert points["wsd_800"].overrides["checkpoint.keep_steps"] == "(160, 320)"


def test_isoflop_points_spend_their_budget():
    for compute in ISOFLOP_BUDGETS:
        for width, layers in ((32, 4), (96, 8)):
            steps = budget_arm(compute, width, layers)["train.steps"]
            spent = steps * SEQ_LEN * BATCH * training_flops_per_token(flops_model(width, layers), SEQ_LEN)
            assert spent == pytest.approx(compute, rel=0.05)


def test_ladder_grows_by_heads_and_is_ordered_by_size():
    base = flops_model(64, 4)
    counts = [non_embedding_parameters(base.replace(layer_types=None, **model_shape(w, n))) for w, n in RUNGS[:6]]
    assert counts == sorted(counts) and counts[0] < 60_000 < 1_500_000 < counts[-1]
    assert {model_shape(w)["head_dim"] for w in (32, 256, 512)} == {16}
    assert rung_for_params(4e5, base).width == 64 and math.isclose(
        rung_for_params(4e5, base).non_embedding_params, counts[3])
    with pytest.raises(ValueError, match="multiple of 32"):
        model_shape(48)
