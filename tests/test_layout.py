"""Multi-node layouts (nemo_trt.build.layout): TP inside a node, PP across nodes, engines told the node size."""
from __future__ import annotations

import pytest

from nemo_trt.build.engine import trtllm_build_command
from nemo_trt.build.layout import make_node_plan, split_over_nodes
from nemo_trt.build.profiles import load_profile
from nemo_trt.build.spec import ModelSpec
from nemo_trt.cli import main
from nemo_trt.errors import NemoTrtError
from nemo_trt.model_facts import DEFAULT_MODEL, resolve_model


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return ModelSpec.from_path(resolve_model(DEFAULT_MODEL))


def test_a100x8_on_4_gpu_nodes_is_tp4_pp2_over_2_nodes(spec):
    plan = make_node_plan(spec, load_profile("a100x8"), gpus_per_node=4)
    assert (plan.tp, plan.pp, plan.world_size, plan.nodes, plan.gpus_per_node) == (4, 2, 8, 2, 4)
    assert "inside one node" in plan.reasons["tp"] and "across 2 nodes" in plan.reasons["pp"]
    assert "--gpus_per_node 4" in plan.reasons["nodes"]
    # Super's PP stages are unbalanced: the planner says so
    assert any("PP splits layers by count" in w for w in plan.warnings)
    argv = trtllm_build_command(plan, "/ckpt", "/engines")
    assert argv[argv.index("--gpus_per_node") + 1] == "4"


def test_layout_that_fits_one_node_is_unchanged(spec):
    single = make_node_plan(spec, load_profile("a100x8"))
    fits = make_node_plan(spec, load_profile("a100x8"), gpus_per_node=8)
    assert (fits.tp, fits.pp, fits.nodes) == (single.tp, single.pp, 1) == (8, 1, 1)
    assert "--gpus_per_node" not in trtllm_build_command(fits, "/c", "/e")  # engines keep the default (8)
    h100 = make_node_plan(spec, load_profile("h100x2"), gpus_per_node=4)
    assert (h100.tp, h100.pp, h100.nodes) == (2, 1, 1)


def test_every_tp_group_sits_on_one_node(spec):
    for gpn in (1, 2, 4):
        split = split_over_nodes(spec, load_profile("a100x8"), world=8, gpus_per_node=gpn)
        assert split.tp * split.pp == 8 and split.nodes * gpn == 8 and gpn % split.tp == 0
        # ranks are rank = pp_rank * tp + tp_rank; node = rank // gpus_per_node
        for pp_rank in range(split.pp):
            nodes = {(pp_rank * split.tp + t) // gpn for t in range(split.tp)}
            assert len(nodes) == 1


def test_uneven_split_and_cross_node_tp_are_refused(spec):
    with pytest.raises(NemoTrtError, match="do not split evenly") as err:
        make_node_plan(spec, load_profile("a100x8"), gpus_per_node=3)
    assert "--gpus-per-node 4" in err.value.fix
    with pytest.raises(NemoTrtError, match="does not fit inside a node"):
        make_node_plan(spec, load_profile("a100x8"), gpus_per_node=4, tp=8, pp=1)
    user = make_node_plan(spec, load_profile("a100x8"), gpus_per_node=4, tp=2, pp=4)
    assert (user.tp, user.pp, user.nodes) == (2, 4, 2)


def test_plan_cli_prints_the_node_split(capsys):
    assert main(["plan", "--gpu", "a100x8", "--gpus-per-node", "4"]) == 0
    out = capsys.readouterr().out
    assert "2 nodes" in out and "TP 4 x PP 2 = 8 GPU(s)" in out
    assert main(["plan", "--gpu", "a100x8", "--gpus-per-node", "3"]) == 2
