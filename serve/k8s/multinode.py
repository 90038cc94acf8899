"""Inside the pods of a LeaderWorkerSet group: SSH between them, the MPI hostfile, the wait for workers.

The LeaderWorkerSet controller gives every pod `LWS_LEADER_ADDRESS` (`<lws>-<group>.<lws>.<ns>`,
the leader's DNS name under the group's headless Service), `LWS_GROUP_SIZE` and
`LWS_WORKER_INDEX` (0 = leader); worker pods are named `<lws>-<group>-<index>` under the same
Service (kubernetes-sigs/lws pkg/utils/pod/pod_utils.go, v0.10.0). From these the leader lists
its group without the Kubernetes API, so no pod needs a service-account token.

Workers run sshd as the pod's non-root user on an unprivileged port; the leader's mpirun starts
the remote ranks through it. Keys come from a Secret mounted read-only (group-readable through
fsGroup) and are copied to 0600 files under $TMPDIR, as ssh requires of private keys. Every
worker presents the same host key, so the leader pins it for all hosts of the port
(`[*]:PORT` in known_hosts) and strict host-key checking stays on.
"""
from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from nemo_trt.errors import NemoTrtError

CLIENT_KEY, CLIENT_PUB = "id_ed25519", "id_ed25519.pub"
HOST_KEY, HOST_PUB = "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"
# Environment a worker's ssh sessions (mpirun's orted and the ranks it starts) inherit from the
# container: sshd gives sessions a bare environment otherwise.
FORWARDED_ENV = ("PATH", "LD_LIBRARY_PATH", "HOME", "TMPDIR", "XDG_CACHE_HOME")
FORWARDED_PREFIXES = ("NCCL_", "UCX_", "CUDA_", "NVIDIA_", "TLLM_", "TRTLLM_", "OMPI_", "OPAL_", "PMIX_", "PRTE_",
                      "NEMO_TRT_", "PYTHON")


@dataclass(frozen=True)
class Group:
    leader: str  # the leader's own host name (mpirun must see rank 0's host as local)
    workers: tuple[str, ...]  # DNS names of the worker pods

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Group:
        missing = [k for k in ("LWS_LEADER_ADDRESS", "LWS_GROUP_SIZE") if not env.get(k)]
        if missing:
            raise NemoTrtError(
                f"{', '.join(missing)} not set: this runs in a LeaderWorkerSet pod, whose controller sets them",
                "deploy with the manifests of `nemo-trt deploy k8s` (LeaderWorkerSet installed), or use "
                "`nemo-trt serve` outside Kubernetes",
            )
        address = env["LWS_LEADER_ADDRESS"]
        size = int(env["LWS_GROUP_SIZE"])
        leader, _, domain = address.partition(".")
        if size < 1 or not domain:
            raise NemoTrtError(f"unexpected LWS_LEADER_ADDRESS {address!r} / LWS_GROUP_SIZE {size}",
                               "check the LeaderWorkerSet version (v0.10 or later)")
        return cls(leader=leader, workers=tuple(f"{leader}-{j}.{domain}" for j in range(1, size)))

    def hostfile(self, slots: int) -> str:
        return "".join(f"{host} slots={slots}\n" for host in (self.leader, *self.workers))


def _key_files(ssh_dir: Path, *names: str) -> list[Path]:
    paths = [ssh_dir / n for n in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise NemoTrtError(
            f"{ssh_dir} lacks {', '.join(missing)}: the group's SSH Secret is not mounted or incomplete",
            "create it once: ssh-keygen -t ed25519 -N '' -f id_ed25519 && ssh-keygen -t ed25519 -N '' -f "
            "ssh_host_ed25519_key && kubectl create secret generic NAME-ssh --from-file=id_ed25519 "
            "--from-file=id_ed25519.pub --from-file=ssh_host_ed25519_key --from-file=ssh_host_ed25519_key.pub",
        )
    return paths


def _private_copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    os.chmod(dst, 0o600)
    return dst


def _runtime_dir(base: Path) -> Path:
    path = base / "nemo-trt-ssh"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------------- worker


def _quote(name: str, value: str) -> str | None:
    if '"' in value or "\n" in value:
        return None
    token = f"{name}={value}"
    return f'"{token}"' if any(c.isspace() for c in token) else token


def sshd_config(runtime: Path, port: int, env: Mapping[str, str]) -> str:
    forwarded = [_quote(k, v) for k, v in sorted(env.items())
                 if k in FORWARDED_ENV or k.startswith(FORWARDED_PREFIXES)]
    lines = [
        f"Port {port}",
        f"HostKey {runtime / HOST_KEY}",
        f"PidFile {runtime / 'sshd.pid'}",
        f"AuthorizedKeysFile {runtime / 'authorized_keys'}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",  # non-root sshd: PAM would need root
        "PermitRootLogin no",
        "StrictModes no",  # $TMPDIR is an emptyDir the kubelet creates world-writable
        "AllowTcpForwarding no",
        "AllowAgentForwarding no",
        "X11Forwarding no",
        "PermitTunnel no",
        "PrintMotd no",
        "LogLevel INFO",
    ]
    values = [t for t in forwarded if t]
    if values:
        lines.append("SetEnv " + " ".join(values))
    return "\n".join(lines) + "\n"


def prepare_worker(ssh_dir: Path, port: int, *, env: Mapping[str, str], tmp: Path) -> tuple[Path, list[str]]:
    """Write the worker's sshd files; return (config path, sshd argv)."""
    host_key, client_pub = _key_files(ssh_dir, HOST_KEY, CLIENT_PUB)
    runtime = _runtime_dir(tmp)
    _private_copy(host_key, runtime / HOST_KEY)
    _private_copy(client_pub, runtime / "authorized_keys")
    config = runtime / "sshd_config"
    config.write_text(sshd_config(runtime, port, env))
    sshd = shutil.which("sshd", path=env.get("PATH"))
    if sshd is None and Path("/usr/sbin/sshd").is_file():
        sshd = "/usr/sbin/sshd"
    if sshd is None:
        raise NemoTrtError("this image has no sshd, which the worker pods of a multi-node group run",
                           "build the image from nemo-trt's Dockerfile (it installs openssh-server)")
    # -D: stay in the foreground as the container's process; -e: log to stderr (`kubectl logs`)
    return config, [sshd, "-D", "-e", "-f", str(config)]


# ----------------------------------------------------------------------------- leader


def ssh_client_config(runtime: Path, port: int) -> str:
    return "\n".join([
        "Host *",
        f"  Port {port}",
        f"  IdentityFile {runtime / CLIENT_KEY}",
        "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {runtime / 'known_hosts'}",
        "  GlobalKnownHostsFile /dev/null",
        "  StrictHostKeyChecking yes",
        "  BatchMode yes",
        "  ConnectTimeout 10",
        "  ConnectionAttempts 20",
        "  LogLevel ERROR",
    ]) + "\n"


def known_hosts(host_pub: str, port: int) -> str:
    key_type, key = host_pub.split()[:2]
    return f"[*]:{port} {key_type} {key}\n"


def mpi_env(client_config: Path) -> dict[str, str]:
    """OpenMPI settings for the group (OMPI_MCA_* for OpenMPI 4, PRTE_MCA_* for 5)."""
    rsh_args = f"-F {client_config}"
    return {
        "OMPI_MCA_plm_rsh_agent": "ssh", "OMPI_MCA_plm_rsh_args": rsh_args, "PRTE_MCA_plm_ssh_args": rsh_args,
        "OMPI_MCA_orte_keep_fqdn_hostnames": "true", "PRTE_MCA_prte_keep_fqdn_hostnames": "true",
        # TCP between pods: skip loopback and container bridges when choosing interfaces
        "OMPI_MCA_btl_tcp_if_exclude": "lo,docker0", "OMPI_MCA_oob_tcp_if_exclude": "lo,docker0",
    }


def prepare_leader(ssh_dir: Path, port: int, slots: int, group: Group, *, tmp: Path) -> tuple[Path, dict[str, str]]:
    """Write key, ssh config, known_hosts and hostfile; return (hostfile, environment for mpirun)."""
    client_key, host_pub = _key_files(ssh_dir, CLIENT_KEY, HOST_PUB)
    runtime = _runtime_dir(tmp)
    _private_copy(client_key, runtime / CLIENT_KEY)
    (runtime / "known_hosts").write_text(known_hosts(host_pub.read_text(), port))
    config = runtime / "ssh_config"
    config.write_text(ssh_client_config(runtime, port))
    hostfile = runtime / "hostfile"
    hostfile.write_text(group.hostfile(slots))
    return hostfile, mpi_env(config)


def wait_for_workers(group: Group, port: int, *, timeout: float,
                     connect: Callable[[str, int], bool] | None = None, sleep: Callable[[float], None] = time.sleep,
                     clock: Callable[[], float] = time.monotonic, say: Callable[[str], None] = print) -> None:
    """Until every worker's sshd accepts a TCP connection (their pods start alongside the leader)."""
    connect = connect or _tcp_open
    began = clock()
    waiting = list(group.workers)
    while waiting:
        waiting = [h for h in waiting if not connect(h, port)]
        if not waiting:
            break
        if clock() - began > timeout:
            raise NemoTrtError(
                f"worker pod(s) {', '.join(waiting)} did not accept SSH on port {port} within {timeout:.0f} s",
                "check the worker pods (kubectl get pods -l app.kubernetes.io/component=worker; kubectl logs): "
                "GPUs to schedule them, the SSH Secret, and a NetworkPolicy that admits the group's traffic",
            )
        say(f"waiting for {len(waiting)} worker(s): {', '.join(waiting)}")
        sleep(2.0)


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:  # not resolvable yet, refused, timed out
        return False
