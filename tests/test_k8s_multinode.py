"""Multi-node pods (nemo_trt.serve.k8s.multinode): group from the LWS environment, SSH files, hostfile, mpirun."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nemo_trt.cli import main
from nemo_trt.errors import NemoTrtError
from nemo_trt.serve import launcher as ln
from nemo_trt.serve.k8s import multinode as mn

LWS_ENV = {"LWS_LEADER_ADDRESS": "nemo-trt-1.nemo-trt.llm", "LWS_GROUP_SIZE": "3", "LWS_WORKER_INDEX": "0"}


@pytest.fixture()
def ssh_secret(tmp_path) -> Path:
    """What the user's `kubectl create secret generic NAME-ssh --from-file=...` mounts (real ssh-keygen keys)."""
    secret = tmp_path / "secret"
    secret.mkdir()
    for name in (mn.CLIENT_KEY, mn.HOST_KEY):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(secret / name)], check=True)
        (secret / name).chmod(0o440)  # the Secret volume's mode
    return secret


def test_group_comes_from_the_lws_environment():
    group = mn.Group.from_env(LWS_ENV)
    assert group.leader == "nemo-trt-1"  # the leader's own host name: mpirun runs rank 0 there, locally
    assert group.workers == ("nemo-trt-1-1.nemo-trt.llm", "nemo-trt-1-2.nemo-trt.llm")
    assert group.hostfile(4) == ("nemo-trt-1 slots=4\nnemo-trt-1-1.nemo-trt.llm slots=4\n"
                                 "nemo-trt-1-2.nemo-trt.llm slots=4\n")
    with pytest.raises(NemoTrtError, match="LWS_LEADER_ADDRESS"):
        mn.Group.from_env({})


def test_leader_files_pin_the_workers_host_key(ssh_secret, tmp_path):
    group = mn.Group.from_env(LWS_ENV)
    hostfile, env = mn.prepare_leader(ssh_secret, 2222, 4, group, tmp=tmp_path / "t")
    runtime = hostfile.parent
    assert hostfile.read_text() == group.hostfile(4)
    assert (runtime / mn.CLIENT_KEY).stat().st_mode & 0o777 == 0o600  # ssh refuses group-readable keys
    config = runtime / "ssh_config"
    assert env["OMPI_MCA_plm_rsh_args"] == f"-F {config}"
    # the real ssh client reads the config: port, key, strict checking against our known_hosts
    res = subprocess.run(["ssh", "-G", "-F", str(config), group.workers[0]], capture_output=True, text=True, check=True)
    resolved = dict(line.split(" ", 1) for line in res.stdout.splitlines() if " " in line)
    assert resolved["port"] == "2222" and resolved["stricthostkeychecking"] == "true"
    assert resolved["identityfile"] == str(runtime / mn.CLIENT_KEY) and resolved["batchmode"] == "yes"
    # every worker's host name on that port matches the pinned key; another port does not
    known = runtime / "known_hosts"
    for host, found in ((f"[{group.workers[1]}]:2222", True), (f"[{group.workers[1]}]:22", False)):
        res = subprocess.run(["ssh-keygen", "-F", host, "-f", str(known)], capture_output=True, text=True)
        assert (res.returncode == 0) is found, host
    assert (ssh_secret / mn.HOST_KEY.replace("_key", "_key.pub")).read_text().split()[1] in known.read_text()


def test_worker_sshd_runs_unprivileged_with_the_container_environment(ssh_secret, tmp_path):
    env = {"PATH": "/opt/hpcx/ompi/bin:/usr/bin", "LD_LIBRARY_PATH": "/opt/hpcx/ompi/lib", "NCCL_DEBUG": "WARN",
           "SECRET_THING": "x", "NEMO_TRT_CACHE": "/tmp/c d"}
    if not Path("/usr/sbin/sshd").is_file():
        fake = tmp_path / "bin"
        fake.mkdir()
        (fake / "sshd").write_text("#!/bin/sh\n")
        (fake / "sshd").chmod(0o755)
        env["PATH"] = f"{fake}:{env['PATH']}"
    config, argv = mn.prepare_worker(ssh_secret, 2222, env=env, tmp=tmp_path / "t")
    text = config.read_text()
    assert "Port 2222\n" in text and "UsePAM no\n" in text and "PasswordAuthentication no\n" in text
    runtime = config.parent
    assert (runtime / "authorized_keys").read_text() == (ssh_secret / "id_ed25519.pub").read_text()
    assert (runtime / mn.HOST_KEY).stat().st_mode & 0o777 == 0o600
    setenv = next(line for line in text.splitlines() if line.startswith("SetEnv "))
    assert "/opt/hpcx/ompi/bin:/usr/bin" in setenv and "NCCL_DEBUG=WARN" in setenv
    assert '"NEMO_TRT_CACHE=/tmp/c d"' in setenv
    assert "SECRET_THING" not in setenv
    assert argv[1:] == ["-D", "-e", "-f", str(config)] and argv[0].endswith("sshd")
    if argv[0] == "/usr/sbin/sshd" and os.geteuid() != 0:  # as in the pod: sshd checks the file, unprivileged
        res = subprocess.run([argv[0], "-t", "-f", str(config)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr


def test_missing_secret_files_say_how_to_create_them(tmp_path):
    with pytest.raises(NemoTrtError, match="lacks id_ed25519") as err:
        mn.prepare_leader(tmp_path, 2222, 4, mn.Group.from_env(LWS_ENV), tmp=tmp_path / "t")
    assert "ssh-keygen" in err.value.fix and "create secret generic" in err.value.fix


def test_wait_for_workers_polls_until_every_sshd_answers_or_times_out():
    group = mn.Group.from_env(LWS_ENV)
    calls: list[str] = []
    clock = iter(range(0, 1000, 1))

    def connect(host, port):  # worker 1 answers at once, worker 2 on its third try
        assert port == 2222
        calls.append(host)
        return host == group.workers[0] or calls.count(host) >= 3

    mn.wait_for_workers(group, 2222, timeout=60, connect=connect, sleep=lambda s: None,
                        clock=lambda: next(clock), say=lambda m: None)
    assert calls.count(group.workers[0]) == 1 and calls.count(group.workers[1]) == 3
    with pytest.raises(NemoTrtError, match="did not accept SSH on port 2222") as err:
        mn.wait_for_workers(group, 2222, timeout=5, connect=lambda h, p: False, sleep=lambda s: None,
                            clock=lambda: next(clock), say=lambda m: None)
    assert group.workers[1] in err.value.problem and "kubectl logs" in err.value.fix


def test_mpirun_spans_the_hostfile_in_rank_order(tmp_path):
    hostfile = tmp_path / "hostfile"
    options = ln.ServerOptions(repo=tmp_path, host="0.0.0.0", shm_prefix="p_", mpi_hostfile=hostfile)
    command = ln.server_command("tritonserver", options, world_size=8)
    assert command[:8] == ["mpirun", "--allow-run-as-root", "--hostfile", str(hostfile), "--map-by", "slot",
                           "--bind-to", "none"]
    assert command.count(":") == 7 and command.count("-n") == 8
    single = ln.server_command("tritonserver", ln.ServerOptions(repo=tmp_path), world_size=2)
    assert "--hostfile" not in single


def test_lws_leader_outside_a_group_exits_2(monkeypatch, tmp_path, capsys):
    for key in LWS_ENV:
        monkeypatch.delenv(key, raising=False)
    assert main(["deploy", "lws-leader", "--ssh-dir", str(tmp_path), "--slots", "4", "--", "serve", "--repo",
                 str(tmp_path)]) == 2
    assert "LWS_LEADER_ADDRESS" in capsys.readouterr().err
    assert main(["deploy", "lws-leader", "--ssh-dir", str(tmp_path), "--slots", "4"]) == 2


def test_server_log_to_stdout_has_no_file_to_tail():
    assert "standard output" in ln._tail(Path(ln.STDOUT_LOG))
