"""Node layout: which ranks share a node when one engine spans several nodes.

A profile's layout assumes all its GPUs sit in one node (a100x8: TP8 over NVSwitch). When
the nodes have fewer GPUs (`--gpus-per-node 4`), the same world size is split so that
tensor parallelism stays inside a node and pipeline parallelism crosses nodes:

- TP all-reduces the activations twice per layer (after attention and after the MLP), which
  needs NVLink-class bandwidth; across nodes every layer would wait on the network.
- PP sends one activation tensor per micro-batch at each stage boundary, so a network hop
  costs one transfer per stage, not two per layer.

TensorRT-LLM numbers ranks `rank = pp_rank * tp + tp_rank` (nemo_trt.build.convert.mapping),
and `mpirun --map-by slot` fills a node's slots before the next, so with TP dividing the
GPUs per node every TP group lands on one node. The engines must know the node size:
trtllm-build writes `--gpus_per_node` (default 8) into the engine's mapping and the runtime
picks each rank's device as `rank % gpus_per_node` (tensorrt_llm/commands/build.py,
`model_config.mapping.gpus_per_node = build_config.auto_parallel_config.gpus_per_node`).
"""
from __future__ import annotations

from dataclasses import dataclass

from nemo_trt.build.planner import Plan, make_plan
from nemo_trt.build.profiles import GpuProfile
from nemo_trt.build.spec import ModelSpec
from nemo_trt.errors import NemoTrtError


@dataclass(frozen=True)
class NodeSplit:
    tp: int
    pp: int
    nodes: int
    gpus_per_node: int
    reasons: dict[str, str]


def _divisors_desc(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def split_over_nodes(spec: ModelSpec, profile: GpuProfile, *, world: int, gpus_per_node: int,
                     tp: int | None = None, pp: int | None = None) -> NodeSplit:
    """TP inside a node, PP across nodes, for `world` ranks on nodes of `gpus_per_node` GPUs.

    `tp`/`pp` given by the user are checked instead of chosen.
    """
    if gpus_per_node < 1:
        raise NemoTrtError(f"--gpus-per-node must be >= 1, got {gpus_per_node}", "pass the GPUs of one node, e.g. 4")
    if world <= gpus_per_node:
        return NodeSplit(tp=tp or world, pp=pp or 1, nodes=1, gpus_per_node=gpus_per_node, reasons={})
    if world % gpus_per_node:
        fits = [d for d in _divisors_desc(world) if d < world]
        raise NemoTrtError(
            f"{world} ranks do not split evenly over nodes of {gpus_per_node} GPUs",
            f"use --gpus-per-node {' or '.join(map(str, fits[:3]))} (a divisor of the world size {world})",
        )
    nodes = world // gpus_per_node
    interconnect = profile.gpu.interconnect
    if tp is not None or pp is not None:
        tp_size = tp if tp is not None else world // (pp or 1)
        if tp_size > gpus_per_node or gpus_per_node % tp_size:
            raise NemoTrtError(
                f"TP {tp_size} does not fit inside a node of {gpus_per_node} GPUs: every TP group must sit on one "
                "node (tensor parallelism all-reduces twice per layer; over the network that stalls every layer)",
                f"use a TP size that divides {gpus_per_node} (e.g. --tp {gpus_per_node} --pp {world // gpus_per_node})",
            )
        return NodeSplit(tp=tp_size, pp=world // tp_size, nodes=nodes, gpus_per_node=gpus_per_node, reasons={})
    candidates = [t for t in _divisors_desc(gpus_per_node) if spec.num_attention_heads % t == 0 and world % t == 0]
    tp_size = candidates[0]  # 1 always qualifies
    pp_size = world // tp_size
    reasons = {
        "tp": (f"TP{tp_size} inside one node of {gpus_per_node} GPUs: tensor parallelism all-reduces twice per "
               f"layer, which needs the node's {interconnect}; across nodes it would wait on the network every layer"),
        "pp": (f"PP{pp_size} across {nodes} nodes: pipeline stages exchange one activation tensor per micro-batch "
               "at each stage boundary, cheap enough for the inter-node network (TensorRT-LLM's multi-node "
               "guidance: TP within a node, PP across nodes)"),
    }
    return NodeSplit(tp=tp_size, pp=pp_size, nodes=nodes, gpus_per_node=gpus_per_node, reasons=reasons)


def make_node_plan(spec: ModelSpec, profile: GpuProfile, *, gpus_per_node: int | None = None,
                   **kwargs) -> Plan:
    """`make_plan`, with the layout split over nodes of `gpus_per_node` GPUs when it does not fit one."""
    if gpus_per_node is None:
        return make_plan(spec, profile, **kwargs)
    precision = kwargs.get("precision") or profile.recommended_precision
    layout = profile.layout(precision, kwargs.get("variant") or "throughput")
    tp, pp = kwargs.pop("tp", None), kwargs.pop("pp", None)
    world = (tp or layout.tp) * (pp or layout.pp)
    split = split_over_nodes(spec, profile, world=world, gpus_per_node=gpus_per_node, tp=tp, pp=pp)
    if split.nodes == 1:
        plan = make_plan(spec, profile, tp=tp, pp=pp, **kwargs)
    else:
        plan = make_plan(spec, profile, tp=split.tp, pp=split.pp, **kwargs)
    plan.nodes = split.nodes
    plan.gpus_per_node = gpus_per_node
    plan.reasons.update(split.reasons)
    if split.nodes > 1:
        plan.reasons["nodes"] = (f"{plan.world_size} ranks on nodes of {gpus_per_node} GPUs: {split.nodes} nodes, "
                                 f"ranks {gpus_per_node}·n … {gpus_per_node}·n+{gpus_per_node - 1} on node n; "
                                 f"trtllm-build --gpus_per_node {gpus_per_node}")
    return plan
