"""Kubernetes objects for a built WORKDIR: one replica = one engine (a pod, or a LeaderWorkerSet group).

Single node (the plan's ranks fit one node): a Deployment whose pod runs `nemo-trt serve`
(tritonserver, under mpirun for TP/PP > 1) with nvidia.com/gpu = the plan's world size.

Multi-node (plan.nodes > 1, `nemo-trt build --gpus-per-node`): a LeaderWorkerSet whose group
is one engine: the leader pod runs `nemo-trt deploy lws-leader`, which waits for the workers,
writes an MPI hostfile and runs `nemo-trt serve` with it (mpirun starts the ranks of the other
nodes over SSH); worker pods run sshd only (`nemo-trt deploy lws-worker`). SSH rather than
kubectl-exec (the kubessh of NVIDIA's EKS guide) keeps every pod without a service-account
token and without RBAC to exec into pods; rather than the MPI operator, because an MPIJob is
a batch job (no rolling update, no scale subresource for the HPA). Pod networking, not host
networking: TP stays inside a pod (NVLink), so only PP activations cross the network, and
host networking would need privileged pod security, bypass NetworkPolicy and clash on ports.

Autoscaling: Triton exports `nv_inference_request_duration_us` per model, a counter of
microseconds spent in finished requests. For the two client-facing ensembles (`ensemble`, and
`ensemble_tokens`, which the OpenAI gateway calls: one of them is what every request enters) it
covers the whole stream, so its rate / 1e6 is the mean number of requests
in flight (Little's law). prometheus-adapter turns that into the per-pod custom metric
`nemo_trt_requests_in_flight`; the HPA keeps it at a share of the plan's concurrent sequences
(the KV-limited capacity of one engine). Queue metrics are not used: the TensorRT-LLM backend
takes requests into its own executor queue at once, so Triton's queue time stays ~0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from nemo_trt import __version__
from nemo_trt.errors import NemoTrtError
from nemo_trt.serve.k8s import objects as k
from nemo_trt.serve.k8s.workdir import BuiltWorkdir
from nemo_trt.serve.token_ensemble import TOKEN_ENSEMBLE

GIB = 1024 ** 3
MIB = 1024 ** 2
# `nemo-trt serve` defaults (tests/test_k8s_render.py checks them against the command's options).
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
OPENAI_PORT = 9000
SSH_PORT = 2222
TRITON_READY, TRITON_LIVE = "/v2/health/ready", "/v2/health/live"
GATEWAY_READY, GATEWAY_LIVE = "/v1/health/ready", "/v1/health/live"
ENSEMBLE = "ensemble"
ENSEMBLES = (ENSEMBLE, TOKEN_ENSEMBLE)  # every request enters exactly one of them
HPA_METRIC = "nemo_trt_requests_in_flight"
HPA_SOURCE_SERIES = "nv_inference_request_duration_us"
RATE_WINDOW = "2m"
RUN_AS = 1000  # triton-server, the NGC Triton image's non-root user
STARTUP_TIMEOUT_S = 1800  # loading 50-100 GB of engines from a network volume takes minutes
PROBE_PERIOD_S = 10
SSH_MOUNT = "/etc/nemo-trt/ssh"
API_KEY_ENV = "NEMO_TRT_API_KEY"


@dataclass(frozen=True)
class Storage:
    """Where the WORKDIR's repository/ and engines/ live in the cluster."""

    kind: str  # "pvc" | "hostpath"
    name: str  # claim name or host directory
    sub_path: str = ""  # inside the claim: the directory holding repository/ and engines/

    @classmethod
    def parse(cls, spec: str) -> Storage:
        kind, _, rest = spec.partition(":")
        if kind == "pvc" and rest:
            claim, _, sub = rest.partition("/")
            if claim:
                return cls("pvc", claim, sub.strip("/"))
        if kind == "hostpath" and rest.startswith("/"):
            return cls("hostpath", rest.rstrip("/") or "/")
        raise NemoTrtError(
            f"--storage {spec!r} is not pvc:CLAIM[/DIR] or hostpath:/ABSOLUTE/DIR",
            "pass --storage pvc:models (a PersistentVolumeClaim holding WORKDIR's repository/ and engines/) "
            "or --storage hostpath:/data/super49b (that directory on every GPU node)",
        )


@dataclass(frozen=True)
class DeployOptions:
    name: str = "nemo-trt"
    namespace: str = "default"
    image: str = f"nemo-trt:{__version__}"
    storage: Storage = field(default_factory=lambda: Storage("pvc", "nemo-trt-models"))
    replicas: int = 1
    max_replicas: int | None = None  # default max(4, replicas)
    autoscale: bool = True
    target_utilization: float = 0.8  # of the plan's concurrent sequences per replica
    openai: bool = False
    prometheus_release: str = "prometheus"
    monitoring_namespace: str = "monitoring"
    gpus_per_node: int | None = None  # checked against the plan


@dataclass
class Rendered:
    """Objects in file order, plus the prometheus-adapter rule (Helm values, not an object)."""

    objects: dict[str, k.K8s]
    adapter_rule: k.AdapterRule | None
    kustomization: k.Kustomization
    notes: list[str]
    facts: dict


# ----------------------------------------------------------------------------- checks


def check_options(wd: BuiltWorkdir, opts: DeployOptions) -> None:
    if opts.replicas < 1:
        raise NemoTrtError(f"--replicas must be at least 1, got {opts.replicas}",
                           "pass --replicas 1 or more (scale to zero by deleting the deployment)")
    if opts.max_replicas is not None and opts.max_replicas < opts.replicas:
        raise NemoTrtError(f"--max-replicas {opts.max_replicas} is below --replicas {opts.replicas}",
                           f"pass --max-replicas {opts.replicas} or more")
    if not 0 < opts.target_utilization <= 1:
        raise NemoTrtError(f"--target-utilization must be in (0, 1], got {opts.target_utilization}", "pass e.g. 0.8")
    plan = wd.plan
    if wd.nodes > 1 and opts.storage.kind == "hostpath":
        raise NemoTrtError(
            f"--storage hostpath:{opts.storage.name} cannot serve a {wd.nodes}-node layout: every pod of a group "
            "needs the same repository and engines, and a hostPath is one node's disk (and Pod Security 'baseline' "
            "forbids it)",
            "put WORKDIR's repository/ and engines/ on a ReadOnlyMany/ReadWriteMany volume and pass --storage "
            "pvc:CLAIM",
        )
    gpn = opts.gpus_per_node
    if gpn is not None:
        if wd.nodes == 1 and plan.world_size > gpn:
            raise NemoTrtError(
                f"the engines need {plan.world_size} GPUs in one pod (TP{plan.tp} x PP{plan.pp}, built for one node), "
                f"but --gpus-per-node is {gpn}",
                f"rebuild for {gpn}-GPU nodes: `nemo-trt build --gpu {plan.profile} --gpus-per-node {gpn} ...` "
                "(TP inside a node, PP across nodes), then deploy that WORKDIR",
            )
        if wd.nodes > 1 and gpn != plan.gpus_per_node:
            raise NemoTrtError(
                f"the engines were built for nodes of {plan.gpus_per_node} GPUs, not {gpn}",
                f"pass --gpus-per-node {plan.gpus_per_node}, or rebuild with `nemo-trt build --gpus-per-node {gpn}`",
            )


# ----------------------------------------------------------------------------- sizing


def _gi(n_bytes: float) -> str:
    return f"{max(1, math.ceil(n_bytes / GIB))}Gi"


def _mi(n_bytes: float) -> str:
    return f"{max(1, math.ceil(n_bytes / MIB))}Mi"


@dataclass(frozen=True)
class PodSize:
    gpus: int
    cpu: int
    memory_bytes: int
    shm_bytes: int
    why: dict[str, str]


def pod_size(wd: BuiltWorkdir, node: int, *, python_models: bool) -> PodSize:
    """Resources of the pod that runs ranks node*g .. node*g+g-1 (g = GPUs per pod)."""
    plan, g = wd.plan, wd.gpus_per_pod
    ranks = plan.ranks[node * g:(node + 1) * g]
    b = plan.build
    python_shm = max(256 * MIB, 8 * b.max_batch_size * b.max_input_len * 4) if python_models else 0
    nccl_shm = GIB if g > 1 else 0
    shm = python_shm + nccl_shm
    engines = sum(r.weight_bytes for r in ranks)
    memory = engines + g * 2 * GIB + (4 * GIB if python_models else GIB) + shm
    why = {
        "gpu": f"ranks {ranks[0].rank}-{ranks[-1].rank} of TP{plan.tp} x PP{plan.pp}, one GPU each",
        "memory": (f"{engines / GIB:.1f} GiB of rank engines (deserialized through host memory at load) + 2 GiB "
                   f"runtime per rank + {'4 GiB Triton/Python models' if python_models else '1 GiB tritonserver'} "
                   f"+ {shm / GIB:.2f} GiB /dev/shm (tmpfs counts against the limit)"),
        "shm": (f"{python_shm / MIB:.0f} MiB Python-backend regions (8 x max_batch_size x max_input_len x 4 B, "
                "min 256 MiB)" if python_models else "no Python models on this pod")
               + (" + 1 GiB NCCL shared-memory transport" if nccl_shm else ""),
        "cpu": "2 per GPU (one MPI rank each, plus NCCL proxy threads) + 2 for Triton and tokenization",
    }
    return PodSize(gpus=g, cpu=2 * g + 2, memory_bytes=memory, shm_bytes=shm, why=why)


def target_in_flight(wd: BuiltWorkdir, opts: DeployOptions) -> int:
    return max(1, math.floor(opts.target_utilization * max(1, wd.plan.concurrent_sequences)))


# ----------------------------------------------------------------------------- building blocks


def _labels(opts: DeployOptions, component: str | None = None) -> dict[str, str]:
    out = {"app.kubernetes.io/name": "nemo-trt", "app.kubernetes.io/instance": opts.name}
    if component:
        out["app.kubernetes.io/component"] = component
    return out


def _meta(opts: DeployOptions, name: str | None = None, component: str | None = None,
          extra: dict[str, str] | None = None) -> k.ObjectMeta:
    labels = {**_labels(opts, component), "app.kubernetes.io/version": __version__,
              "app.kubernetes.io/managed-by": "nemo-trt", **(extra or {})}
    return k.ObjectMeta(name=name or opts.name, namespace=opts.namespace, labels=labels)


def _http_probe(path: str, port: str, *, period: int, timeout: int, failures: int) -> k.Probe:
    return k.Probe(http_get=k.HTTPGetAction(path=path, port=port), period_seconds=period, timeout_seconds=timeout,
                   failure_threshold=failures)


def _probes(ready: str, live: str, port: str) -> dict[str, k.Probe]:
    """Startup covers the engine load; then readiness gates traffic and liveness restarts a hung server."""
    startup_failures = math.ceil(STARTUP_TIMEOUT_S / PROBE_PERIOD_S) + 2
    return {
        "startup_probe": _http_probe(ready, port, period=PROBE_PERIOD_S, timeout=5, failures=startup_failures),
        "readiness_probe": _http_probe(ready, port, period=5, timeout=3, failures=3),
        "liveness_probe": _http_probe(live, port, period=10, timeout=5, failures=6),
    }


def _resources(size: PodSize) -> k.ResourceRequirements:
    # requests = limits: Guaranteed QoS, so a serving pod is the last to be evicted under node pressure
    amounts = {"cpu": str(size.cpu), "memory": _gi(size.memory_bytes), "nvidia.com/gpu": str(size.gpus),
               "ephemeral-storage": "2Gi"}
    return k.ResourceRequirements(requests=dict(amounts), limits=dict(amounts))


def _common_env() -> list[k.EnvVar]:
    # Root filesystem is read-only: everything that writes goes to the /tmp emptyDir.
    return [k.EnvVar(name="HOME", value="/tmp"), k.EnvVar(name="TMPDIR", value="/tmp"),
            k.EnvVar(name="XDG_CACHE_HOME", value="/tmp/.cache"),
            k.EnvVar(name="NEMO_TRT_CACHE", value="/tmp/nemo-trt-cache"),
            k.EnvVar(name="PYTHONDONTWRITEBYTECODE", value="1"), k.EnvVar(name="PYTHONUNBUFFERED", value="1")]


def _model_volume(opts: DeployOptions) -> k.Volume:
    s = opts.storage
    if s.kind == "pvc":
        return k.Volume(name="models", persistent_volume_claim=k.PersistentVolumeClaimVolumeSource(claim_name=s.name))
    return k.Volume(name="models", host_path=k.HostPathVolumeSource(path=s.name))


def _model_mounts(wd: BuiltWorkdir, opts: DeployOptions) -> list[k.VolumeMount]:
    """repository/ and engines/ read-only, each at the path the build wrote (the repository names the engines
    by absolute path)."""
    prefix = f"{opts.storage.sub_path}/" if opts.storage.sub_path else ""
    return [k.VolumeMount(name="models", mount_path=str(wd.repository), sub_path=f"{prefix}repository", read_only=True),
            k.VolumeMount(name="models", mount_path=wd.engine_path, sub_path=f"{prefix}engines", read_only=True)]


def _scratch_volumes(size: PodSize) -> list[k.Volume]:
    return [k.Volume(name="dshm", empty_dir=k.EmptyDirVolumeSource(medium="Memory", size_limit=_mi(size.shm_bytes))),
            k.Volume(name="tmp", empty_dir=k.EmptyDirVolumeSource(size_limit="1Gi"))]


def _scratch_mounts() -> list[k.VolumeMount]:
    return [k.VolumeMount(name="dshm", mount_path="/dev/shm"), k.VolumeMount(name="tmp", mount_path="/tmp")]


def serve_args(wd: BuiltWorkdir) -> list[str]:
    return ["serve", "--repo", str(wd.repository), "--host", "0.0.0.0",
            "--http-port", str(HTTP_PORT), "--grpc-port", str(GRPC_PORT), "--metrics-port", str(METRICS_PORT),
            "--log-file", "-", "--startup-timeout", str(STARTUP_TIMEOUT_S)]


def gateway_args() -> list[str]:
    # The OpenAI gateway next to Triton in the pod: it reaches Triton's gRPC port on loopback.
    return ["openai", "--triton", f"127.0.0.1:{GRPC_PORT}", "--host", "0.0.0.0", "--port", str(OPENAI_PORT)]


def _triton_container(wd: BuiltWorkdir, opts: DeployOptions, size: PodSize, args: list[str]) -> k.Container:
    return k.Container(
        name="triton", image=opts.image, command=["nemo-trt"], args=args, env=_common_env(),
        ports=[k.ContainerPort(name="http", container_port=HTTP_PORT),
               k.ContainerPort(name="grpc", container_port=GRPC_PORT),
               k.ContainerPort(name="metrics", container_port=METRICS_PORT)],
        resources=_resources(size), volume_mounts=_model_mounts(wd, opts) + _scratch_mounts(),
        **_probes(TRITON_READY, TRITON_LIVE, "http"),
    )


def _gateway_container(opts: DeployOptions) -> k.Container:
    amounts = {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "1Gi"}
    return k.Container(
        name="openai", image=opts.image, command=["nemo-trt"], args=gateway_args(),
        env=_common_env() + [k.EnvVar(name=API_KEY_ENV, value_from=k.EnvVarSource(
            secret_key_ref=k.SecretKeySelector(name=api_key_secret(opts), key="api-key")))],
        ports=[k.ContainerPort(name="openai", container_port=OPENAI_PORT)],
        resources=k.ResourceRequirements(requests=dict(amounts), limits=dict(amounts)),
        volume_mounts=[k.VolumeMount(name="tmp", mount_path="/tmp")],
        **_probes(GATEWAY_READY, GATEWAY_LIVE, "openai"),
    )


def api_key_secret(opts: DeployOptions) -> str:
    return f"{opts.name}-api-key"


def ssh_secret(opts: DeployOptions) -> str:
    return f"{opts.name}-ssh"


def _gpu_placement(wd: BuiltWorkdir) -> dict:
    # Engines are built for one GPU model: schedule only where GPU feature discovery reports it.
    product = wd.plan.gpu_name.replace(" ", "-")
    term = k.NodeSelectorTerm(match_expressions=[
        k.NodeSelectorRequirement(key="nvidia.com/gpu.product", operator="In", values=[product])])
    return {"tolerations": [k.Toleration(key="nvidia.com/gpu")],
            "affinity": k.Affinity(node_affinity=k.NodeAffinity(
                required_during_scheduling_ignored_during_execution=k.NodeSelector(node_selector_terms=[term])))}


def _pod_annotations(wd: BuiltWorkdir) -> dict[str, str]:
    plan = wd.plan
    layout = f"TP{plan.tp} x PP{plan.pp}" + (f" on {wd.nodes} nodes x {wd.gpus_per_pod} GPUs" if wd.nodes > 1 else "")
    # a new engine digest changes the pod template, so rebuilt engines roll out
    return {"nemo-trt/profile": plan.profile, "nemo-trt/layout": layout, "nemo-trt/precision": plan.precision,
            "nemo-trt/engines": wd.engine_digest, "nemo-trt/trtllm-version": wd.engines.trtllm_version}


def _pod_spec(opts: DeployOptions, wd: BuiltWorkdir, containers: list[k.Container],
              volumes: list[k.Volume]) -> k.PodSpec:
    return k.PodSpec(
        service_account_name=opts.name,
        security_context=k.PodSecurityContext(run_as_user=RUN_AS, run_as_group=RUN_AS, fs_group=RUN_AS),
        # serve stops Triton on SIGTERM: it drains in-flight requests, then exits
        termination_grace_period_seconds=60,
        containers=containers, volumes=volumes, **_gpu_placement(wd),
    )


# ----------------------------------------------------------------------------- workloads


def _single_node(wd: BuiltWorkdir, opts: DeployOptions) -> tuple[k.K8s, PodSize]:
    size = pod_size(wd, 0, python_models=True)
    containers = [_triton_container(wd, opts, size, serve_args(wd))]
    if opts.openai:
        containers.append(_gateway_container(opts))
    pod = k.PodTemplateSpec(metadata=k.ObjectMeta(labels=_labels(opts, "server"), annotations=_pod_annotations(wd)),
                            spec=_pod_spec(opts, wd, containers, [_model_volume(opts), *_scratch_volumes(size)]))
    deployment = k.Deployment(
        metadata=_meta(opts, component="server"),
        spec=k.DeploymentSpec(
            replicas=None if opts.autoscale else opts.replicas,
            selector=k.LabelSelector(match_labels=_labels(opts, "server")), template=pod,
            # a new pod loads its engines before the old one goes: no capacity dip (needs one spare replica's GPUs)
            strategy=k.DeploymentStrategy(rolling_update=k.RollingUpdateDeployment(max_surge=1, max_unavailable=0)),
            progress_deadline_seconds=STARTUP_TIMEOUT_S * 2,
        ),
    )
    return deployment, size


def leader_args(wd: BuiltWorkdir) -> list[str]:
    return ["deploy", "lws-leader", "--ssh-dir", SSH_MOUNT, "--ssh-port", str(SSH_PORT),
            "--slots", str(wd.gpus_per_pod), "--", *serve_args(wd)]


def worker_args() -> list[str]:
    return ["deploy", "lws-worker", "--ssh-dir", SSH_MOUNT, "--ssh-port", str(SSH_PORT)]


def _ssh_volume(opts: DeployOptions) -> k.Volume:
    # 0440: owner root, group fsGroup (the pod's user) may read; the entrypoints copy the keys to 0600 files
    return k.Volume(name="ssh", secret=k.SecretVolumeSource(secret_name=ssh_secret(opts), default_mode=0o440))


def _multi_node(wd: BuiltWorkdir, opts: DeployOptions) -> tuple[k.K8s, PodSize, PodSize]:
    leader_size = pod_size(wd, 0, python_models=True)
    worker_size = max((pod_size(wd, n, python_models=False) for n in range(1, wd.nodes)),
                      key=lambda s: s.memory_bytes)
    ssh_mount = k.VolumeMount(name="ssh", mount_path=SSH_MOUNT, read_only=True)
    leader = _triton_container(wd, opts, leader_size, leader_args(wd))
    leader.volume_mounts = [*(leader.volume_mounts or []), ssh_mount]
    leader_containers = [leader] + ([_gateway_container(opts)] if opts.openai else [])
    worker = k.Container(
        name="worker", image=opts.image, command=["nemo-trt"], args=worker_args(), env=_common_env(),
        ports=[k.ContainerPort(name="ssh", container_port=SSH_PORT)],
        resources=_resources(worker_size), volume_mounts=_model_mounts(wd, opts) + _scratch_mounts() + [ssh_mount],
        # the worker is ready once sshd accepts connections; its ranks are started by the leader's mpirun
        readiness_probe=k.Probe(tcp_socket=k.TCPSocketAction(port="ssh"), period_seconds=5, timeout_seconds=3,
                                failure_threshold=3),
        liveness_probe=k.Probe(tcp_socket=k.TCPSocketAction(port="ssh"), period_seconds=10, timeout_seconds=5,
                               failure_threshold=6),
    )
    annotations = _pod_annotations(wd)
    leader_pod = k.PodTemplateSpec(
        metadata=k.ObjectMeta(labels=_labels(opts, "leader"), annotations=annotations),
        spec=_pod_spec(opts, wd, leader_containers,
                       [_model_volume(opts), *_scratch_volumes(leader_size), _ssh_volume(opts)]))
    worker_pod = k.PodTemplateSpec(
        metadata=k.ObjectMeta(labels=_labels(opts, "worker"), annotations=annotations),
        spec=_pod_spec(opts, wd, [worker], [_model_volume(opts), *_scratch_volumes(worker_size), _ssh_volume(opts)]))
    lws = k.LeaderWorkerSet(
        metadata=_meta(opts, component="server"),
        spec=k.LeaderWorkerSetSpec(
            replicas=None if opts.autoscale else opts.replicas,
            leader_worker_template=k.LeaderWorkerTemplate(size=wd.nodes, leader_template=leader_pod,
                                                          worker_template=worker_pod),
            # LeaderCreated: the leader only becomes ready once its workers run, so it cannot wait for them
            rollout_strategy=k.RolloutStrategy(rolling_update_configuration=k.RollingUpdateConfiguration(
                max_unavailable=1, max_surge=0)),
            # one headless Service named after the LWS gives every pod a stable DNS name for the hostfile
            network_config=k.NetworkConfig(subdomain_policy="Shared"),
        ),
    )
    return lws, leader_size, worker_size


# ----------------------------------------------------------------------------- around the workload


def _service(opts: DeployOptions, front: str) -> k.Service:
    ports = [k.ServicePort(name="http", port=HTTP_PORT, target_port="http"),
             k.ServicePort(name="grpc", port=GRPC_PORT, target_port="grpc", app_protocol="grpc"),
             k.ServicePort(name="metrics", port=METRICS_PORT, target_port="metrics")]
    if opts.openai:
        ports.append(k.ServicePort(name="openai", port=OPENAI_PORT, target_port="openai"))
    return k.Service(metadata=_meta(opts), spec=k.ServiceSpec(selector=_labels(opts, front), ports=ports))


def _pod_monitor(opts: DeployOptions, front: str) -> k.PodMonitor:
    endpoints = [k.PodMetricsEndpoint(port="metrics", interval="15s")]
    if opts.openai:
        endpoints.append(k.PodMetricsEndpoint(port="openai", interval="15s"))
    return k.PodMonitor(
        # kube-prometheus-stack selects monitors by its Helm release label
        metadata=_meta(opts, extra={"release": opts.prometheus_release}),
        spec=k.PodMonitorSpec(selector=k.LabelSelector(match_labels=_labels(opts, front)),
                              pod_metrics_endpoints=endpoints))


def _network_policy(opts: DeployOptions, multi_node: bool) -> k.NetworkPolicy:
    serving = [k.NetworkPolicyPort(port=p) for p in ("http", "grpc")] + (
        [k.NetworkPolicyPort(port="openai")] if opts.openai else [])
    scraped = [k.NetworkPolicyPort(port="metrics")] + ([k.NetworkPolicyPort(port="openai")] if opts.openai else [])
    rules = [
        # clients: any pod of this namespace
        k.NetworkPolicyIngressRule(from_=[k.NetworkPolicyPeer(pod_selector=k.LabelSelector(match_labels={}))],
                                   ports=serving + [k.NetworkPolicyPort(port="metrics")]),
        # Prometheus, from its namespace
        k.NetworkPolicyIngressRule(from_=[k.NetworkPolicyPeer(namespace_selector=k.LabelSelector(
            match_labels={"kubernetes.io/metadata.name": opts.monitoring_namespace}))], ports=scraped),
    ]
    if multi_node:
        # SSH, MPI and NCCL between the pods of a group use ports chosen at run time
        rules.append(k.NetworkPolicyIngressRule(from_=[k.NetworkPolicyPeer(
            pod_selector=k.LabelSelector(match_labels=_labels(opts)))]))
    return k.NetworkPolicy(metadata=_meta(opts), spec=k.NetworkPolicySpec(
        pod_selector=k.LabelSelector(match_labels=_labels(opts)), policy_types=["Ingress"], ingress=rules))


def _pdb(opts: DeployOptions) -> k.PodDisruptionBudget:
    # one replica (or group member) at a time may be drained; pods still loading do not block a drain
    return k.PodDisruptionBudget(metadata=_meta(opts), spec=k.PodDisruptionBudgetSpec(
        selector=k.LabelSelector(match_labels=_labels(opts)), max_unavailable=1))


def _hpa(wd: BuiltWorkdir, opts: DeployOptions, target: k.K8s) -> k.HorizontalPodAutoscaler:
    api_version = "apps/v1" if isinstance(target, k.Deployment) else "leaderworkerset.x-k8s.io/v1"
    kind = "Deployment" if isinstance(target, k.Deployment) else "LeaderWorkerSet"
    return k.HorizontalPodAutoscaler(metadata=_meta(opts), spec=k.HorizontalPodAutoscalerSpec(
        scale_target_ref=k.CrossVersionObjectReference(api_version=api_version, kind=kind, name=opts.name),
        min_replicas=opts.replicas, max_replicas=opts.max_replicas or max(4, opts.replicas),
        metrics=[k.MetricSpec(pods=k.PodsMetricSource(
            metric=k.MetricIdentifier(name=HPA_METRIC),
            target=k.MetricTarget(average_value=str(target_in_flight(wd, opts)))))],
        # a replica loads its engines for minutes: add capacity after a minute of load, remove it slowly
        behavior=k.HorizontalPodAutoscalerBehavior(
            scale_up=k.HPAScalingRules(stabilization_window_seconds=60, select_policy="Max", policies=[
                k.HPAScalingPolicy(type="Pods", value=2, period_seconds=120)]),
            scale_down=k.HPAScalingRules(stabilization_window_seconds=600, policies=[
                k.HPAScalingPolicy(type="Pods", value=1, period_seconds=300)])),
    ))


def adapter_rule() -> k.AdapterRule:
    """prometheus-adapter: requests in flight per pod from the ensembles' request-duration counters."""
    return k.AdapterRule(
        series_query=f'{HPA_SOURCE_SERIES}{{namespace!="",pod!="",model=~"{"|".join(ENSEMBLES)}"}}',
        resources=k.AdapterResources(overrides={"namespace": k.AdapterResourceOverride(resource="namespace"),
                                                "pod": k.AdapterResourceOverride(resource="pod")}),
        name=k.AdapterName(matches=f"^{HPA_SOURCE_SERIES}$", as_=HPA_METRIC),
        metrics_query=(f'sum(rate(<<.Series>>{{<<.LabelMatchers>>,model=~"{"|".join(ENSEMBLES)}"}}'
                       f'[{RATE_WINDOW}])) by (<<.GroupBy>>) / 1e6'),
    )


def render(wd: BuiltWorkdir, opts: DeployOptions) -> Rendered:
    check_options(wd, opts)
    multi = wd.nodes > 1
    objects: dict[str, k.K8s] = {
        "serviceaccount.yaml": k.ServiceAccount(metadata=_meta(opts)),
    }
    if multi:
        workload, leader_size, worker_size = _multi_node(wd, opts)
        objects["leaderworkerset.yaml"] = workload
        sizes = {"leader": leader_size, "worker": worker_size}
        front = "leader"
    else:
        workload, size = _single_node(wd, opts)
        objects["deployment.yaml"] = workload
        sizes = {"server": size}
        front = "server"
    objects["service.yaml"] = _service(opts, front)
    objects["podmonitor.yaml"] = _pod_monitor(opts, front)
    if opts.autoscale:
        objects["hpa.yaml"] = _hpa(wd, opts, workload)
    objects["pdb.yaml"] = _pdb(opts)
    objects["networkpolicy.yaml"] = _network_policy(opts, multi)
    plan = wd.plan
    facts = {
        "workdir": str(wd.root), "profile": plan.profile, "precision": plan.precision, "tp": plan.tp, "pp": plan.pp,
        "world_size": plan.world_size, "nodes": wd.nodes, "gpus_per_pod": wd.gpus_per_pod,
        "pods_per_replica": wd.nodes, "kind": "LeaderWorkerSet" if multi else "Deployment",
        "replicas": opts.replicas, "autoscale": opts.autoscale,
        "hpa": None if not opts.autoscale else {
            "metric": HPA_METRIC, "target_average": target_in_flight(wd, opts),
            "concurrent_sequences": plan.concurrent_sequences, "min": opts.replicas,
            "max": opts.max_replicas or max(4, opts.replicas)},
        "pods": {role: {"gpus": s.gpus, "cpu": s.cpu, "memory": _gi(s.memory_bytes), "shm": _mi(s.shm_bytes),
                        "why": s.why} for role, s in sizes.items()},
        "secrets": ([ssh_secret(opts)] if multi else []) + ([api_key_secret(opts)] if opts.openai else []),
    }
    return Rendered(objects=objects, adapter_rule=adapter_rule() if opts.autoscale else None,
                    kustomization=k.Kustomization(namespace=opts.namespace, resources=list(objects)),
                    notes=_notes(wd, opts, multi), facts=facts)


def _notes(wd: BuiltWorkdir, opts: DeployOptions, multi: bool) -> list[str]:
    s = opts.storage
    where = (f"PersistentVolumeClaim {s.name}" + (f" under {s.sub_path}/" if s.sub_path else " at its root")
             if s.kind == "pvc" else f"{s.name} on every GPU node")
    notes = [f"copy WORKDIR's repository/ and engines/ to the {where}; the pods mount them read-only at "
             f"{wd.repository} and {wd.engine_path}"]
    if multi:
        notes.append(
            f"create the SSH keys of the group once: ssh-keygen -t ed25519 -N '' -f id_ed25519 && ssh-keygen -t "
            f"ed25519 -N '' -f ssh_host_ed25519_key && kubectl -n {opts.namespace} create secret generic "
            f"{ssh_secret(opts)} --from-file=id_ed25519 --from-file=id_ed25519.pub --from-file=ssh_host_ed25519_key "
            "--from-file=ssh_host_ed25519_key.pub")
        notes.append("install LeaderWorkerSet (kubernetes-sigs/lws, v0.10+) before applying")
    if opts.openai:
        notes.append(f"create the API key Secret: kubectl -n {opts.namespace} create secret generic "
                     f"{api_key_secret(opts)} --from-file=api-key=./api-key.txt")
    if opts.autoscale:
        notes.append("add prometheus-adapter-values.yaml to prometheus-adapter (helm upgrade ... -f "
                     "prometheus-adapter-values.yaml) so the HPA finds its metric")
    notes.append("kubectl apply -k {out}")
    return notes
