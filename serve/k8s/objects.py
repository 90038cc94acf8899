"""Typed Kubernetes objects: the subset `nemo-trt deploy k8s` renders, nothing else.

Field names are the API's in snake_case (camelCase on output); unknown fields are refused
at construction (`extra="forbid"`), and `manifest()` drops unset fields. The tests validate
every rendered object against the Kubernetes OpenAPI schemas (core) and the published CRD
schemas (LeaderWorkerSet, PodMonitor) in strict mode, so a field this module gets wrong
fails there, not on a cluster.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class K8s(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    def manifest(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


IntOrStr = int | str


# ----------------------------------------------------------------------------- metadata


class ObjectMeta(K8s):
    name: str | None = None
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class LabelSelector(K8s):
    match_labels: dict[str, str]


# ----------------------------------------------------------------------------- pods


class ObjectFieldSelector(K8s):
    field_path: str


class SecretKeySelector(K8s):
    name: str
    key: str
    optional: bool | None = None


class EnvVarSource(K8s):
    secret_key_ref: SecretKeySelector | None = None
    field_ref: ObjectFieldSelector | None = None


class EnvVar(K8s):
    name: str
    value: str | None = None
    value_from: EnvVarSource | None = None


class ContainerPort(K8s):
    name: str
    container_port: int
    protocol: Literal["TCP"] = "TCP"


class HTTPGetAction(K8s):
    path: str
    port: IntOrStr


class TCPSocketAction(K8s):
    port: IntOrStr


class Probe(K8s):
    http_get: HTTPGetAction | None = None
    tcp_socket: TCPSocketAction | None = None
    initial_delay_seconds: int | None = None
    period_seconds: int
    timeout_seconds: int
    failure_threshold: int
    success_threshold: int | None = None


class ResourceRequirements(K8s):
    requests: dict[str, str]
    limits: dict[str, str]


class Capabilities(K8s):
    drop: list[str]


class SeccompProfile(K8s):
    type: Literal["RuntimeDefault"] = "RuntimeDefault"


class SecurityContext(K8s):
    """Container level: what PSS Restricted asks for, plus a read-only root filesystem."""

    allow_privilege_escalation: bool = False
    read_only_root_filesystem: bool = True
    run_as_non_root: bool = True
    capabilities: Capabilities = Field(default_factory=lambda: Capabilities(drop=["ALL"]))
    seccomp_profile: SeccompProfile = Field(default_factory=SeccompProfile)


class PodSecurityContext(K8s):
    run_as_non_root: bool = True
    run_as_user: int
    run_as_group: int
    fs_group: int
    fs_group_change_policy: Literal["OnRootMismatch"] = "OnRootMismatch"
    seccomp_profile: SeccompProfile = Field(default_factory=SeccompProfile)


class VolumeMount(K8s):
    name: str
    mount_path: str
    read_only: bool | None = None
    sub_path: str | None = None


class Container(K8s):
    name: str
    image: str
    image_pull_policy: Literal["IfNotPresent", "Always"] = "IfNotPresent"
    command: list[str] | None = None
    args: list[str] | None = None
    env: list[EnvVar] | None = None
    ports: list[ContainerPort] | None = None
    resources: ResourceRequirements
    volume_mounts: list[VolumeMount] | None = None
    startup_probe: Probe | None = None
    readiness_probe: Probe | None = None
    liveness_probe: Probe | None = None
    security_context: SecurityContext = Field(default_factory=SecurityContext)


class EmptyDirVolumeSource(K8s):
    medium: Literal["Memory"] | None = None
    size_limit: str | None = None


class PersistentVolumeClaimVolumeSource(K8s):
    claim_name: str
    read_only: bool = True


class HostPathVolumeSource(K8s):
    path: str
    type: Literal["Directory"] = "Directory"


class KeyToPath(K8s):
    key: str
    path: str


class SecretVolumeSource(K8s):
    secret_name: str
    default_mode: int | None = None
    items: list[KeyToPath] | None = None
    optional: bool | None = None


class Volume(K8s):
    name: str
    empty_dir: EmptyDirVolumeSource | None = None
    persistent_volume_claim: PersistentVolumeClaimVolumeSource | None = None
    host_path: HostPathVolumeSource | None = None
    secret: SecretVolumeSource | None = None


class Toleration(K8s):
    key: str
    operator: Literal["Exists"] = "Exists"
    effect: Literal["NoSchedule"] = "NoSchedule"


class NodeSelectorRequirement(K8s):
    key: str
    operator: Literal["In", "Exists"]
    values: list[str] | None = None


class NodeSelectorTerm(K8s):
    match_expressions: list[NodeSelectorRequirement]


class NodeSelector(K8s):
    node_selector_terms: list[NodeSelectorTerm]


class NodeAffinity(K8s):
    required_during_scheduling_ignored_during_execution: NodeSelector


class Affinity(K8s):
    node_affinity: NodeAffinity


class PodSpec(K8s):
    service_account_name: str
    automount_service_account_token: bool = False
    enable_service_links: bool = False
    security_context: PodSecurityContext
    termination_grace_period_seconds: int
    containers: list[Container]
    volumes: list[Volume]
    tolerations: list[Toleration] | None = None
    affinity: Affinity | None = None
    restart_policy: Literal["Always"] = "Always"


class PodTemplateSpec(K8s):
    metadata: ObjectMeta
    spec: PodSpec


# ----------------------------------------------------------------------------- workloads


class RollingUpdateDeployment(K8s):
    max_surge: IntOrStr
    max_unavailable: IntOrStr


class DeploymentStrategy(K8s):
    type: Literal["RollingUpdate"] = "RollingUpdate"
    rolling_update: RollingUpdateDeployment


class DeploymentSpec(K8s):
    replicas: int | None = None  # left to the HPA when it scales the Deployment
    selector: LabelSelector
    template: PodTemplateSpec
    strategy: DeploymentStrategy
    progress_deadline_seconds: int
    revision_history_limit: int = 5


class Deployment(K8s):
    api_version: Literal["apps/v1"] = "apps/v1"
    kind: Literal["Deployment"] = "Deployment"
    metadata: ObjectMeta
    spec: DeploymentSpec


class LeaderWorkerTemplate(K8s):
    size: int
    restart_policy: Literal["RecreateGroupOnPodRestart"] = "RecreateGroupOnPodRestart"
    leader_template: PodTemplateSpec
    worker_template: PodTemplateSpec


class RollingUpdateConfiguration(K8s):
    max_unavailable: IntOrStr
    max_surge: IntOrStr


class RolloutStrategy(K8s):
    type: Literal["RollingUpdate"] = "RollingUpdate"
    rolling_update_configuration: RollingUpdateConfiguration


class NetworkConfig(K8s):
    subdomain_policy: Literal["Shared", "UniquePerReplica"]


class LeaderWorkerSetSpec(K8s):
    replicas: int | None = None
    leader_worker_template: LeaderWorkerTemplate
    startup_policy: Literal["LeaderCreated"] = "LeaderCreated"
    rollout_strategy: RolloutStrategy
    network_config: NetworkConfig


class LeaderWorkerSet(K8s):
    api_version: Literal["leaderworkerset.x-k8s.io/v1"] = "leaderworkerset.x-k8s.io/v1"
    kind: Literal["LeaderWorkerSet"] = "LeaderWorkerSet"
    metadata: ObjectMeta
    spec: LeaderWorkerSetSpec


class ServiceAccount(K8s):
    api_version: Literal["v1"] = "v1"
    kind: Literal["ServiceAccount"] = "ServiceAccount"
    metadata: ObjectMeta
    automount_service_account_token: bool = False


# ----------------------------------------------------------------------------- networking


class ServicePort(K8s):
    name: str
    port: int
    target_port: IntOrStr
    protocol: Literal["TCP"] = "TCP"
    app_protocol: str | None = None


class ServiceSpec(K8s):
    type: Literal["ClusterIP"] = "ClusterIP"
    selector: dict[str, str]
    ports: list[ServicePort]


class Service(K8s):
    api_version: Literal["v1"] = "v1"
    kind: Literal["Service"] = "Service"
    metadata: ObjectMeta
    spec: ServiceSpec


class NetworkPolicyPort(K8s):
    port: IntOrStr
    protocol: Literal["TCP"] = "TCP"


class NetworkPolicyPeer(K8s):
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None


class NetworkPolicyIngressRule(K8s):
    from_: list[NetworkPolicyPeer] = Field(alias="from")
    ports: list[NetworkPolicyPort] | None = None


class NetworkPolicySpec(K8s):
    pod_selector: LabelSelector
    policy_types: list[Literal["Ingress"]]
    ingress: list[NetworkPolicyIngressRule]


class NetworkPolicy(K8s):
    api_version: Literal["networking.k8s.io/v1"] = "networking.k8s.io/v1"
    kind: Literal["NetworkPolicy"] = "NetworkPolicy"
    metadata: ObjectMeta
    spec: NetworkPolicySpec


# ----------------------------------------------------------------------------- availability, scaling


class PodDisruptionBudgetSpec(K8s):
    selector: LabelSelector
    max_unavailable: IntOrStr
    unhealthy_pod_eviction_policy: Literal["AlwaysAllow", "IfHealthyBudget"] = "AlwaysAllow"


class PodDisruptionBudget(K8s):
    api_version: Literal["policy/v1"] = "policy/v1"
    kind: Literal["PodDisruptionBudget"] = "PodDisruptionBudget"
    metadata: ObjectMeta
    spec: PodDisruptionBudgetSpec


class CrossVersionObjectReference(K8s):
    api_version: str
    kind: str
    name: str


class MetricIdentifier(K8s):
    name: str


class MetricTarget(K8s):
    type: Literal["AverageValue"] = "AverageValue"
    average_value: str


class PodsMetricSource(K8s):
    metric: MetricIdentifier
    target: MetricTarget


class MetricSpec(K8s):
    type: Literal["Pods"] = "Pods"
    pods: PodsMetricSource


class HPAScalingPolicy(K8s):
    type: Literal["Pods", "Percent"]
    value: int
    period_seconds: int


class HPAScalingRules(K8s):
    stabilization_window_seconds: int
    select_policy: Literal["Max", "Min"] | None = None
    policies: list[HPAScalingPolicy]


class HorizontalPodAutoscalerBehavior(K8s):
    scale_up: HPAScalingRules
    scale_down: HPAScalingRules


class HorizontalPodAutoscalerSpec(K8s):
    scale_target_ref: CrossVersionObjectReference
    min_replicas: int
    max_replicas: int
    metrics: list[MetricSpec]
    behavior: HorizontalPodAutoscalerBehavior


class HorizontalPodAutoscaler(K8s):
    api_version: Literal["autoscaling/v2"] = "autoscaling/v2"
    kind: Literal["HorizontalPodAutoscaler"] = "HorizontalPodAutoscaler"
    metadata: ObjectMeta
    spec: HorizontalPodAutoscalerSpec


# ----------------------------------------------------------------------------- Prometheus


class PodMetricsEndpoint(K8s):
    port: str
    path: str = "/metrics"
    interval: str


class PodMonitorSpec(K8s):
    selector: LabelSelector
    pod_metrics_endpoints: list[PodMetricsEndpoint]


class PodMonitor(K8s):
    api_version: Literal["monitoring.coreos.com/v1"] = "monitoring.coreos.com/v1"
    kind: Literal["PodMonitor"] = "PodMonitor"
    metadata: ObjectMeta
    spec: PodMonitorSpec


class AdapterResourceOverride(K8s):
    resource: str


class AdapterResources(K8s):
    overrides: dict[str, AdapterResourceOverride]


class AdapterName(K8s):
    matches: str
    as_: str = Field(alias="as")


class AdapterRule(K8s):
    """One prometheus-adapter discovery rule (kubernetes-sigs/prometheus-adapter docs/config.md)."""

    series_query: str
    resources: AdapterResources
    name: AdapterName
    metrics_query: str


class Kustomization(K8s):
    api_version: Literal["kustomize.config.k8s.io/v1beta1"] = "kustomize.config.k8s.io/v1beta1"
    kind: Literal["Kustomization"] = "Kustomization"
    namespace: str
    resources: list[str]
