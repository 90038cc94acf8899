"""`nemo-trt deploy`: Kubernetes manifests from a built WORKDIR, and the entrypoints of multi-node pods."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click


@click.group("deploy")
def command():
    """Deploy a built WORKDIR.

    \b
    Examples:
      nemo-trt deploy k8s --workdir /deploy/super49b --storage pvc:models --replicas 2
      nemo-trt deploy k8s --workdir /deploy/a100x8-2x4 --storage pvc:models --out ./k8s --openai
    """


@command.command("k8s")
@click.option("--workdir", required=True, type=click.Path(file_okay=False, path_type=Path), metavar="WORKDIR",
              help="A `nemo-trt build` WORKDIR with engines and repository (plan.json says the layout).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Where the manifests go [default: WORKDIR/k8s].")
@click.option("--name", default="nemo-trt", show_default=True, help="Name of every object (and label instance).")
@click.option("--namespace", default="default", show_default=True)
@click.option("--image", default=None, metavar="IMAGE",
              help="The nemo-trt image (this repository's Dockerfile) [default: nemo-trt:VERSION].")
@click.option("--storage", default="pvc:nemo-trt-models", show_default=True, metavar="pvc:CLAIM[/DIR]|hostpath:DIR",
              help="Where WORKDIR's repository/ and engines/ are in the cluster (mounted read-only).")
@click.option("--replicas", type=int, default=1, show_default=True,
              help="Replicas (engines); the autoscaler's minimum.")
@click.option("--max-replicas", type=int, default=None, help="Autoscaler maximum [default: max(4, --replicas)].")
@click.option("--no-autoscale", "no_autoscale", is_flag=True,
              help="Fixed --replicas: no HorizontalPodAutoscaler, no prometheus-adapter rule.")
@click.option("--target-utilization", type=float, default=0.8, show_default=True,
              help="Requests in flight per replica the autoscaler aims at, as a share of the plan's concurrent "
                   "sequences.")
@click.option("--openai", is_flag=True, help="Run the OpenAI-compatible gateway beside Triton (API key from a "
              "Secret).")
@click.option("--gpus-per-node", type=click.IntRange(min=1), default=None, metavar="N",
              help="GPUs of one node; checked against the layout the engines were built for.")
@click.option("--prometheus-release", default="prometheus", show_default=True,
              help="`release` label kube-prometheus-stack selects PodMonitors by.")
@click.option("--monitoring-namespace", default="monitoring", show_default=True,
              help="Namespace Prometheus scrapes from (admitted to the metrics port).")
@click.option("--force", is_flag=True, help="Replace an existing --out directory.")
@click.option("--json", "as_json", is_flag=True, help="Print what was rendered as JSON.")
def k8s(workdir, out, name, namespace, image, storage, replicas, max_replicas, no_autoscale, target_utilization,
        openai, gpus_per_node, prometheus_release, monitoring_namespace, force, as_json):
    """Render Kubernetes manifests (Kustomize-ready YAML) for a built WORKDIR.

    One replica is one engine: a Deployment pod with nvidia.com/gpu = the plan's world size, or,
    when the engines span nodes (`nemo-trt build --gpus-per-node`), a LeaderWorkerSet group of
    one leader (Triton + mpirun) and worker pods (sshd). Around it: Service, PodMonitor, an HPA
    on requests in flight (Triton's request-duration counter through prometheus-adapter; the
    adapter rule is written too), PodDisruptionBudget, NetworkPolicy (namespace clients only),
    ServiceAccount without token. Nothing is written when a check fails (exit 2).

    \b
    Examples:
      nemo-trt deploy k8s --workdir /deploy/super49b
      nemo-trt deploy k8s --workdir /deploy/super49b --storage pvc:models/super49b --replicas 2 --max-replicas 6
      nemo-trt deploy k8s --workdir /deploy/a100x8-2x4 --gpus-per-node 4 --namespace llm --openai
      nemo-trt deploy k8s --workdir /deploy/super49b --no-autoscale --replicas 3 --out ./k8s --force
      kubectl apply -k /deploy/super49b/k8s
    """
    from nemo_trt import __version__
    from nemo_trt.console import console, print_json
    from nemo_trt.errors import NemoTrtError
    from nemo_trt.serve.k8s import writer
    from nemo_trt.serve.k8s.render import DeployOptions, Storage, render
    from nemo_trt.serve.k8s.workdir import read_workdir

    opts = DeployOptions(
        name=name, namespace=namespace, image=image or f"nemo-trt:{__version__}", storage=Storage.parse(storage),
        replicas=replicas, max_replicas=max_replicas, autoscale=not no_autoscale,
        target_utilization=target_utilization, openai=openai, prometheus_release=prometheus_release,
        monitoring_namespace=monitoring_namespace, gpus_per_node=gpus_per_node)
    wd = read_workdir(workdir)
    rendered = render(wd, opts)
    out = (out or wd.root / "k8s").absolute()
    if out.exists() and not force:
        raise NemoTrtError(f"{out} already exists", "pass --force to replace it, or choose another --out")
    paths = writer.write(rendered, out, force=force)
    notes = [n.replace("{out}", str(out)) for n in rendered.notes]
    if as_json:
        print_json({**rendered.facts, "out": str(out), "files": [str(p) for p in paths], "notes": notes})
        return
    f = rendered.facts
    layout = (f"{f['nodes']} pods x {f['gpus_per_pod']} GPUs (LeaderWorkerSet)" if f["nodes"] > 1
              else f"1 pod x {f['gpus_per_pod']} GPU(s) (Deployment)")
    console.print(f"[bold green]rendered[/] {out}: {f['profile']} TP{f['tp']} x PP{f['pp']}, one replica = {layout}")
    for role, pod in f["pods"].items():
        console.print(f"  {role}: {pod['gpus']} GPU, {pod['cpu']} CPU, {pod['memory']} memory, /dev/shm {pod['shm']}")
    if f["hpa"]:
        h = f["hpa"]
        console.print(f"  autoscaling {h['min']}-{h['max']} replicas on {h['metric']} (target {h['target_average']} "
                      f"per replica of {h['concurrent_sequences']} concurrent sequences)")
    for p in paths:
        console.print(f"  {p.name}")
    console.print("[bold]next:[/]")
    for n in notes:
        console.print(f"  - {n}", soft_wrap=True)


@command.command("lws-worker")
@click.option("--ssh-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The mounted SSH Secret (id_ed25519.pub, ssh_host_ed25519_key).")
@click.option("--ssh-port", type=click.IntRange(1024, 65535), default=2222, show_default=True)
def lws_worker(ssh_dir, ssh_port):
    """Worker pod of a multi-node group: run sshd for the leader's mpirun.

    \b
    Example (what the LeaderWorkerSet's worker template runs):
      nemo-trt deploy lws-worker --ssh-dir /etc/nemo-trt/ssh --ssh-port 2222
    """
    from nemo_trt.serve.k8s.multinode import prepare_worker

    _, argv = prepare_worker(ssh_dir, ssh_port, env=os.environ, tmp=Path(os.environ.get("TMPDIR", "/tmp")))
    sys.stdout.flush()
    os.execv(argv[0], argv)


@command.command("lws-leader", context_settings={"ignore_unknown_options": True})
@click.option("--ssh-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The mounted SSH Secret (id_ed25519, ssh_host_ed25519_key.pub).")
@click.option("--ssh-port", type=click.IntRange(1024, 65535), default=2222, show_default=True)
@click.option("--slots", type=click.IntRange(min=1), required=True, help="Ranks per pod (GPUs per node).")
@click.option("--wait-timeout", type=float, default=900.0, show_default=True, metavar="SECONDS",
              help="How long to wait for the worker pods' sshd.")
@click.argument("serve_args", nargs=-1, type=click.UNPROCESSED)
def lws_leader(ssh_dir, ssh_port, slots, wait_timeout, serve_args):
    """Leader pod of a multi-node group: wait for the workers, then `nemo-trt serve` across the group.

    Everything after `--` is the `nemo-trt serve` command line; an MPI hostfile of the group is added.

    \b
    Example (what the LeaderWorkerSet's leader template runs):
      nemo-trt deploy lws-leader --ssh-dir /etc/nemo-trt/ssh --slots 4 -- serve --repo /w/repository --host 0.0.0.0
    """
    from nemo_trt.errors import NemoTrtError
    from nemo_trt.serve.k8s.multinode import Group, prepare_leader, wait_for_workers

    if not serve_args or serve_args[0] != "serve":
        raise NemoTrtError("lws-leader runs `nemo-trt serve`: give its command line after `--`",
                           "e.g. nemo-trt deploy lws-leader --ssh-dir D --slots 4 -- serve --repo REPO --host 0.0.0.0")
    group = Group.from_env(os.environ)
    hostfile, env = prepare_leader(ssh_dir, ssh_port, slots, group, tmp=Path(os.environ.get("TMPDIR", "/tmp")))
    wait_for_workers(group, ssh_port, timeout=wait_timeout, say=lambda m: click.echo(m, err=True))
    click.echo(f"group ready: {group.leader} + {len(group.workers)} worker(s); starting Triton across it", err=True)
    os.environ.update(env)
    argv = ["nemo-trt", *serve_args, "--mpi-hostfile", str(hostfile)]
    sys.stdout.flush()
    os.execvp(argv[0], argv)
