"""`nemo-trt deploy k8s`: manifests for every profile and the 2x4 multi-node layout, valid offline and true to
the build.

Every rendered object is validated against the Kubernetes OpenAPI schemas (kubernetes-validate, strict)
and the vendored CRD schemas (tests/schemas). Golden renders are in tests/golden/k8s; regenerate
after an intended change with
    NEMO_TRT_REGEN_GOLDEN=1 pytest tests/test_k8s_deploy.py
and review the diff before committing.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from fixtures.k8s_schemas import K8S_VERSIONS, validate
from fixtures.k8s_workdir import super49b_workdir, tokenizer_dir

from nemo_trt.cli import main
from nemo_trt.serve.k8s import writer
from nemo_trt.serve.k8s.render import (
    GATEWAY_LIVE,
    GATEWAY_READY,
    HPA_METRIC,
    OPENAI_PORT,
    DeployOptions,
    Storage,
    render,
)
from nemo_trt.serve.k8s.workdir import read_workdir

GOLDEN = Path(__file__).parent / "golden" / "k8s"
REGEN = os.environ.get("NEMO_TRT_REGEN_GOLDEN") == "1"
CASES = {"h200x1": ("h200x1", None), "h100x2": ("h100x2", None), "a100x4": ("a100x4", None),
         "a100x8": ("a100x8", None), "a100x8-2x4": ("a100x8", 4)}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("k8s-workdirs")


@pytest.fixture(scope="module")
def workdirs(root) -> dict[str, Path]:
    tok = tokenizer_dir(root)
    return {case: super49b_workdir(root / "deploy" / case, prof, gpus_per_node=gpn, tokenizer=tok)
            for case, (prof, gpn) in CASES.items()}


def docs(workdir: Path, **opts) -> dict[str, dict]:
    rendered = render(read_workdir(workdir), DeployOptions(**opts))
    return {name: obj.manifest() for name, obj in rendered.objects.items()}


def pod_specs(objects: dict[str, dict]) -> dict[str, dict]:
    if "deployment.yaml" in objects:
        return {"server": objects["deployment.yaml"]["spec"]["template"]}
    lwt = objects["leaderworkerset.yaml"]["spec"]["leaderWorkerTemplate"]
    return {"leader": lwt["leaderTemplate"], "worker": lwt["workerTemplate"]}


# ----------------------------------------------------------------------------- validity


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("openai", [False, True])
def test_every_object_is_valid_in_strict_mode(workdirs, case, openai):
    objects = docs(workdirs[case], openai=openai, replicas=2)
    kinds = {d["kind"] for d in objects.values()}
    assert {"Service", "PodMonitor", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
            "ServiceAccount"} <= kinds
    assert ("LeaderWorkerSet" if case == "a100x8-2x4" else "Deployment") in kinds
    for version in K8S_VERSIONS:
        for doc in objects.values():
            validate(doc, version)


def test_strict_validation_catches_a_stray_field(workdirs):
    import jsonschema
    import kubernetes_validate

    objects = docs(workdirs["a100x8-2x4"])
    lws = objects["leaderworkerset.yaml"]
    lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]["gpus"] = 4
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(lws, K8S_VERSIONS[0])
    monitor = objects["podmonitor.yaml"]
    monitor["spec"]["endpoints"] = []  # a ServiceMonitor field
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor, K8S_VERSIONS[0])
    deployment = docs(workdirs["h100x2"])["deployment.yaml"]
    deployment["spec"]["template"]["spec"]["securityContext"]["readOnlyRootFs"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment, K8S_VERSIONS[0])


# ----------------------------------------------------------------------------- golden renders


def golden_text(workdir: Path, root: Path, **opts) -> str:
    files = writer.files(render(read_workdir(workdir), DeployOptions(**opts)))
    text = "".join(f"# ---- {name}\n{body}" for name, body in files.items())
    version = __import__("nemo_trt").__version__
    for old, new in ((str(root), ""), (f"nemo-trt {version}", "nemo-trt VERSION"),
                     (f"nemo-trt:{version}", "nemo-trt:VERSION"), (f"version: {version}\n", "version: VERSION\n")):
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("case", CASES)
def test_golden_render(workdirs, root, case):
    opts = {"openai": True} if case == "h100x2" else {}
    text = golden_text(workdirs[case], root, **opts)
    path = GOLDEN / f"{case}.yaml"
    if REGEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"no golden {path}: run with NEMO_TRT_REGEN_GOLDEN=1 and review it"
    assert text == path.read_text(), f"render differs from {path} (NEMO_TRT_REGEN_GOLDEN=1 to update, then review)"


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("case", CASES)
def test_gpus_per_pod_times_pods_is_the_world_size(workdirs, case):
    plan = json.loads((workdirs[case] / "plan.json").read_text())
    objects = docs(workdirs[case])
    pods = pod_specs(objects)
    gpus = {role: sum(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) for c in p["spec"]["containers"])
            for role, p in pods.items()}
    if "deployment.yaml" in objects:
        assert gpus["server"] == plan["world_size"] and plan["nodes"] == 1
    else:
        size = objects["leaderworkerset.yaml"]["spec"]["leaderWorkerTemplate"]["size"]
        assert size == plan["nodes"] == 2
        assert gpus["leader"] + (size - 1) * gpus["worker"] == plan["world_size"] == 8
        assert gpus["leader"] == gpus["worker"] == plan["gpus_per_node"] == 4
        leader_args = pods["leader"]["spec"]["containers"][0]["args"]
        assert leader_args[leader_args.index("--slots") + 1] == "4"


@pytest.mark.parametrize("case", CASES)
def test_resources_match_the_plan_and_limits_are_set(workdirs, case):
    plan = json.loads((workdirs[case] / "plan.json").read_text())
    for role, pod in pod_specs(docs(workdirs[case], openai=True)).items():
        for c in pod["spec"]["containers"]:
            res = c["resources"]
            assert {"cpu", "memory", "ephemeral-storage"} <= set(res["limits"]), (role, c["name"])
            assert res["requests"] == res["limits"]  # Guaranteed QoS
        triton = pod["spec"]["containers"][0]
        gpus = int(triton["resources"]["limits"]["nvidia.com/gpu"])
        first = 0 if role in ("server", "leader") else gpus
        ranks = plan["ranks"][first:first + gpus]
        memory_gib = int(triton["resources"]["limits"]["memory"].removesuffix("Gi"))
        assert memory_gib * 2**30 > sum(r["weight_bytes"] for r in ranks)  # the rank engines pass through host memory
        shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")["emptyDir"]
        assert shm["medium"] == "Memory" and shm["sizeLimit"].endswith("Mi")
        assert int(shm["sizeLimit"].removesuffix("Mi")) * 2**20 < memory_gib * 2**30


def serve_defaults() -> dict[str, int]:
    from nemo_trt.commands.serve import command as serve_command

    return {p.name: p.default for p in serve_command.params if p.name.endswith("_port")}


@pytest.mark.parametrize("case", ["h100x2", "a100x8-2x4"])
def test_ports_and_probes_match_nemo_trt_serve(workdirs, case):
    ports = serve_defaults()
    objects = docs(workdirs[case], openai=True)
    front = pod_specs(objects)["server" if case == "h100x2" else "leader"]
    triton, gateway = front["spec"]["containers"]
    args = triton["args"][triton["args"].index("serve"):]
    named = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert named == {"http": ports["http_port"], "grpc": ports["grpc_port"], "metrics": ports["metrics_port"]}
    for flag, name in (("--http-port", "http"), ("--grpc-port", "grpc"), ("--metrics-port", "metrics")):
        assert int(args[args.index(flag) + 1]) == named[name]
    assert args[args.index("--host") + 1] == "0.0.0.0"  # the pod network, fenced by the NetworkPolicy
    assert args[args.index("--repo") + 1] == str(workdirs[case] / "repository")
    # startup budget of the probe >= serve's own start-up timeout, so serve reports a stuck load first
    startup = triton["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= int(args[args.index("--startup-timeout") + 1])
    assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert triton["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": GATEWAY_READY, "port": "openai"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": GATEWAY_LIVE, "port": "openai"}
    assert gateway["ports"] == [{"name": "openai", "containerPort": OPENAI_PORT, "protocol": "TCP"}]
    service = objects["service.yaml"]["spec"]
    assert {p["name"]: p["port"] for p in service["ports"]} == {**named, "openai": OPENAI_PORT}
    assert service["selector"]["app.kubernetes.io/component"] == ("server" if case == "h100x2" else "leader")


def test_repository_and_engines_are_mounted_read_only_where_the_build_put_them(workdirs):
    wd = read_workdir(workdirs["h100x2"])
    objects = docs(workdirs["h100x2"], storage=Storage.parse("pvc:models/builds/s49"))
    pod = pod_specs(objects)["server"]["spec"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "models"}
    assert set(mounts) == {str(wd.repository), wd.engine_path}
    assert wd.engine_path == str(workdirs["h100x2"] / "engines")  # what tensorrt_llm/config.pbtxt names
    assert {m["subPath"] for m in mounts.values()} == {"builds/s49/repository", "builds/s49/engines"}
    assert all(m["readOnly"] for m in mounts.values())
    (models,) = [v for v in pod["volumes"] if v["name"] == "models"]
    assert models["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}


@pytest.mark.parametrize("case", ["h100x2", "a100x8-2x4"])
def test_security_defaults_and_no_secret_literal(workdirs, case):
    objects = docs(workdirs[case], openai=True)
    assert "Secret" not in {d["kind"] for d in objects.values()}  # keys are the user's to create
    assert objects["serviceaccount.yaml"]["automountServiceAccountToken"] is False
    for pod in pod_specs(objects).values():
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False and spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"]["type"] == "RuntimeDefault"
            for env in c.get("env", []):
                if any(w in env["name"].upper() for w in ("KEY", "TOKEN", "PASSWORD", "SECRET")):
                    assert "value" not in env and env["valueFrom"]["secretKeyRef"]["name"], env
        assert not any("hostNetwork" in k or "hostPID" in k for k in spec)
    gateway = pod_specs(objects)["server" if case == "h100x2" else "leader"]["spec"]["containers"][1]
    (key,) = [e for e in gateway["env"] if e["name"] == "NEMO_TRT_API_KEY"]
    assert key["valueFrom"]["secretKeyRef"] == {"name": "nemo-trt-api-key", "key": "api-key"}
    text = "".join(writer.files(render(read_workdir(workdirs[case]), DeployOptions(openai=True))).values())
    assert "BEGIN OPENSSH PRIVATE KEY" not in text and "ssh-ed25519 AAAA" not in text


def test_network_policy_admits_namespace_clients_and_prometheus_only(workdirs):
    single = docs(workdirs["h100x2"], monitoring_namespace="obs")["networkpolicy.yaml"]["spec"]
    assert single["policyTypes"] == ["Ingress"]
    peers = [r["from"] for r in single["ingress"]]
    assert peers == [[{"podSelector": {"matchLabels": {}}}],
                     [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "obs"}}}]]
    assert [p["port"] for p in single["ingress"][1]["ports"]] == ["metrics"]
    multi = docs(workdirs["a100x8-2x4"])["networkpolicy.yaml"]["spec"]
    group = multi["ingress"][2]
    assert "ports" not in group and group["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"]


def test_hpa_scales_the_workload_on_requests_in_flight(workdirs):
    plan = json.loads((workdirs["h100x2"] / "plan.json").read_text())
    objects = docs(workdirs["h100x2"], replicas=2, max_replicas=6, target_utilization=0.5)
    hpa = objects["hpa.yaml"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "nemo-trt"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    (metric,) = hpa["metrics"]
    assert metric["pods"]["metric"]["name"] == HPA_METRIC
    assert metric["pods"]["target"] == {"type": "AverageValue",
                                        "averageValue": str(int(0.5 * plan["concurrent_sequences"]))}
    assert "replicas" not in objects["deployment.yaml"]["spec"]  # the HPA owns it
    lws = docs(workdirs["a100x8-2x4"])
    assert lws["hpa.yaml"]["spec"]["scaleTargetRef"]["kind"] == "LeaderWorkerSet"
    assert lws["podmonitor.yaml"]["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "leader"
    fixed = docs(workdirs["h100x2"], replicas=3, autoscale=False)
    assert "hpa.yaml" not in fixed and fixed["deployment.yaml"]["spec"]["replicas"] == 3


def test_kustomize_renders_the_directory(workdirs, tmp_path):
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in Kustomize) is part of this machine image; install it to run this test"
    out = tmp_path / "k8s"
    assert main(["deploy", "k8s", "--workdir", str(workdirs["a100x8-2x4"]), "--out", str(out),
                 "--namespace", "llm", "--openai"]) == 0
    listed = yaml.safe_load((out / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in out.glob("*.yaml")
                                    if p.name not in ("kustomization.yaml", "prometheus-adapter-values.yaml"))
    res = subprocess.run([kubectl, "kustomize", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    built = list(yaml.safe_load_all(res.stdout))
    assert len(built) == len(listed) and all(d["metadata"]["namespace"] == "llm" for d in built)
    for doc in built:
        validate(doc, K8S_VERSIONS[-1])


# ----------------------------------------------------------------------------- the command and bad input


def test_cli_writes_everything_and_reports(workdirs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["deploy", "k8s", "--workdir", str(workdirs["h100x2"]), "--out", str(out), "--json",
                 "--replicas", "2", "--storage", "pvc:models"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["kind"] == "Deployment" and facts["gpus_per_pod"] == 2 and facts["hpa"]["min"] == 2
    assert {Path(f).name for f in facts["files"]} == {p.name for p in out.iterdir()}
    adapter = yaml.safe_load((out / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["name"]["as"] == HPA_METRIC
    assert main(["deploy", "k8s", "--workdir", str(workdirs["h100x2"]), "--out", str(out)]) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    assert main(["deploy", "k8s", "--workdir", str(workdirs["h100x2"]), "--out", str(out), "--force"]) == 0
    assert "kubectl apply -k" in capsys.readouterr().out


@pytest.mark.parametrize("until", ["plan", "engine"])
def test_workdir_without_engines_or_repository_exits_2_and_writes_nothing(root, tmp_path, capsys, until):
    work = super49b_workdir(tmp_path / "w", "h100x2", until=until, tokenizer=tokenizer_dir(root))
    assert main(["deploy", "k8s", "--workdir", str(work)]) == 2
    err = capsys.readouterr().err
    assert ("no engines" in err) if until == "plan" else ("repo" in err)
    assert "nemo-trt build" in err and not (work / "k8s").exists()
    assert not list(tmp_path.rglob("*.partial"))


@pytest.mark.parametrize("argv, message", [
    (["--replicas", "0"], "--replicas must be at least 1"),
    (["--replicas", "3", "--max-replicas", "2"], "below --replicas"),
    (["--storage", "hostpath:/data/s49"], "cannot serve a 2-node layout"),
    (["--storage", "nfs:server"], "is not pvc:CLAIM"),
    (["--gpus-per-node", "8"], "built for nodes of 4 GPUs"),
])
def test_bad_input_exits_2_with_a_fix_and_writes_nothing(workdirs, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert main(["deploy", "k8s", "--workdir", str(workdirs["a100x8-2x4"]), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "fix:" in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_single_node_engines_on_smaller_nodes_need_a_rebuild(workdirs, tmp_path, capsys):
    assert main(["deploy", "k8s", "--workdir", str(workdirs["a100x8"]), "--gpus-per-node", "4",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--gpus-per-node 4" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(["deploy", "k8s", "--workdir", str(workdirs["h100x2"]), "--storage", "hostpath:/data/s49",
                 "--out", str(tmp_path / "o")]) == 0  # one node: a hostPath works (each node holds the files)
