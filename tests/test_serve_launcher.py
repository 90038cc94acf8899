"""serve/launcher.py: command lines, environment, stub selection, checks, and a real server start/stop."""
from __future__ import annotations

import json
import os
import sys
import sysconfig
from pathlib import Path

import pytest

from nemo_trt.errors import NemoTrtError
from nemo_trt.serve import launcher as ln

BINARY = "/opt/tritonserver/bin/tritonserver"


def options(**kw) -> ln.ServerOptions:
    return ln.ServerOptions(repo=Path("/repo"), **kw)


def test_single_process_command_binds_loopback_and_sets_ports():
    args = ln.server_command(BINARY, options(http_port=18000, grpc_port=18001, metrics_port=18002,
                                             log_verbose=1, backend_dir=Path("/cache/backends"), shm_prefix="p_",
                                             exit_timeout=7))
    assert args[0] == BINARY
    for flag in ("--model-repository=/repo", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
                 "--metrics-address=127.0.0.1", "--http-port=18000", "--grpc-port=18001", "--metrics-port=18002",
                 "--log-verbose=1", "--backend-directory=/cache/backends", "--model-control-mode=none",
                 "--backend-config=python,shm-region-prefix-name=p_rank0_", "--disable-auto-complete-config",
                 "--exit-timeout-secs=7"):
        assert flag in args
    assert "mpirun" not in args and not any(a.startswith("--load-model") for a in args)


def test_explicit_model_control_loads_named_models():
    args = ln.server_command(BINARY, options(model_control_mode="explicit", load_models=["ensemble", "tensorrt_llm"]))
    assert "--model-control-mode=explicit" in args
    assert [a for a in args if a.startswith("--load-model")] == ["--load-model=ensemble", "--load-model=tensorrt_llm"]
    everything = ln.server_command(BINARY, options(model_control_mode="explicit"))
    assert "--load-model=*" in everything


def test_multi_rank_command_is_one_mpirun_with_one_process_per_rank():
    command = ln.server_command(BINARY, options(shm_prefix="p_"), world_size=4)
    assert command[:2] == ["mpirun", "--allow-run-as-root"]
    ranks = " ".join(command[2:]).split(" : ")
    assert len(ranks) == 4
    for rank, text in enumerate(ranks):
        parts = text.split(" ")
        assert parts[:3] == ["-n", "1", BINARY]
        assert f"--backend-config=python,shm-region-prefix-name=p_rank{rank}_" in parts
        if rank == 0:
            assert "--model-control-mode=none" in parts
        else:  # workers only host the TensorRT-LLM model (leader mode)
            assert "--model-control-mode=explicit" in parts and "--load-model=tensorrt_llm" in parts
    with pytest.raises(ValueError):
        ln.server_command(BINARY, options(), world_size=0)


def test_server_env_orders_path_and_library_path(tmp_path):
    install = ln.TritonInstall(tmp_path / "pytriton" / "tritonserver" / "bin" / "tritonserver", bundled=True)
    libs = tmp_path / "nvidia_pytriton.libs"
    libs.mkdir()
    base = {"PATH": "/usr/bin:/venv/bin:/bin", "LD_LIBRARY_PATH": "/x:/pylib", "PYTHONPATH": "/somewhere"}
    env = ln.server_env(install, base, python_executable="/venv/bin/python", libdir="/pylib")
    assert env["PATH"] == "/venv/bin:/usr/bin:/bin"
    assert env["LD_LIBRARY_PATH"] == f"/pylib:{libs}:/x"
    assert "PYTHONPATH" not in env


def test_server_env_leaves_the_container_environment_alone():
    """In the NGC image LIBDIR is /usr/lib/x86_64-linux-gnu: first on LD_LIBRARY_PATH it would shadow the
    CUDA forward-compatibility libraries the image puts ahead of the driver's; nothing is added there."""
    base = {"PATH": "/usr/local/bin:/opt/tritonserver/bin:/usr/bin",
            "LD_LIBRARY_PATH": "/usr/local/cuda/compat/lib.real:/usr/local/cuda/lib64:/opt/tritonserver/lib",
            "PYTHONPATH": "/opt/tritonserver/python"}
    system = ln.server_env(ln.TritonInstall(Path(BINARY), bundled=False), base,
                           python_executable="/venv/bin/python", libdir="/usr/lib/x86_64-linux-gnu")
    assert system == base
    empty = ln.server_env(ln.TritonInstall(Path(BINARY), bundled=False), {"PATH": "/bin"},
                          python_executable="/venv/bin/python", libdir="/pylib")
    assert empty == {"PATH": "/bin"}  # no LD_LIBRARY_PATH invented either


def _fake_binary(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / "tritonserver"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    return binary


def test_find_tritonserver_order(tmp_path, monkeypatch):
    monkeypatch.setattr(ln, "SYSTEM_TRITONSERVER", tmp_path / "absent")
    explicit = _fake_binary(tmp_path / "explicit")
    on_path = _fake_binary(tmp_path / "onpath")
    found = ln.find_tritonserver(env={"TRITONSERVER": str(explicit), "PATH": str(on_path.parent)})
    assert found.binary == explicit.resolve() and not found.bundled
    assert ln.find_tritonserver(env={"PATH": str(on_path.parent)}).binary == on_path.resolve()
    fallback = ln.find_tritonserver(env={"PATH": str(tmp_path / "empty")})
    assert fallback.bundled and fallback.binary == ln.bundled_tritonserver().resolve()
    with pytest.raises(NemoTrtError, match="not found"):
        ln.find_tritonserver(env={"TRITONSERVER": str(tmp_path / "nope")})


def test_bundled_backend_dir_holds_matching_stub(tmp_path):
    install = ln.TritonInstall(ln.bundled_tritonserver().resolve(), bundled=True)
    version = (sys.version_info[0], sys.version_info[1])
    site_python = install.root / "backends" / "python"
    before = sorted(p.name for p in site_python.iterdir())
    backends = ln.prepare_backend_dir(install, version, cache=tmp_path)
    stub = backends / "python" / "triton_python_backend_stub"
    assert stub.read_bytes() == install.stub_for(version).read_bytes()
    assert os.access(stub, os.X_OK)
    assert (backends / "python" / "libtriton_python.so").is_file()
    assert ln.prepare_backend_dir(install, version, cache=tmp_path) == backends  # cached
    assert sorted(p.name for p in site_python.iterdir()) == before  # site-packages untouched
    with pytest.raises(NemoTrtError, match="no Python backend stub for Python 3.7"):
        ln.prepare_backend_dir(install, (3, 7), cache=tmp_path)
    assert ln.prepare_backend_dir(ln.TritonInstall(Path(BINARY), bundled=False)) is None


def test_numpy_2_is_refused(monkeypatch):
    import numpy

    ln.check_numpy()  # this venv: numpy < 2
    monkeypatch.setattr(numpy, "__version__", "2.1.3")
    with pytest.raises(NemoTrtError, match="numpy 2.1.3") as info:
        ln.check_numpy()
    assert "numpy<2" in info.value.fix


def test_missing_libpython_is_reported(monkeypatch):
    assert ln.check_libpython().is_file()  # this interpreter has a shared libpython
    real = sysconfig.get_config_var
    monkeypatch.setattr(sysconfig, "get_config_var", lambda name: 0 if name == "Py_ENABLE_SHARED" else real(name))
    with pytest.raises(NemoTrtError, match="no shared libpython") as info:
        ln.check_libpython()
    assert "--enable-shared" in info.value.fix


def test_stale_shm_regions_only_unmapped_and_old(tmp_path):
    for name in ("triton_python_backend_shm_region_a", "triton_python_backend_shm_region_b",
                 "nemo_trt_1_2_rank0_x", "unrelated_file", "triton_python_backend_shm_region_new"):
        (tmp_path / name).write_bytes(b"x")
    old = 1_000_000.0
    for name in ("triton_python_backend_shm_region_a", "triton_python_backend_shm_region_b",
                 "nemo_trt_1_2_rank0_x", "unrelated_file"):
        os.utime(tmp_path / name, (old, old))
    now = old + 3600
    os.utime(tmp_path / "triton_python_backend_shm_region_new", (now, now))
    mapped = {str(tmp_path / "triton_python_backend_shm_region_b")}  # a live server still maps it
    stale = ln.stale_shm_regions(tmp_path, mapped=mapped, now=now)
    assert sorted(p.name for p in stale) == ["nemo_trt_1_2_rank0_x", "triton_python_backend_shm_region_a"]


def test_stale_python_env_dirs_only_empty_and_old(tmp_path):
    for name in ("python_env_a", "python_env_b", "python_env_new", "other_dir"):
        (tmp_path / name).mkdir()
    (tmp_path / "python_env_b" / "in-use").write_text("x")
    old = 1_000_000.0
    for name in ("python_env_a", "python_env_b", "other_dir"):
        os.utime(tmp_path / name, (old, old))
    now = old + 3600
    os.utime(tmp_path / "python_env_new", (now, now))
    assert [p.name for p in ln.stale_python_env_dirs(tmp_path, now=now)] == ["python_env_a"]


def _write_model(repo: Path, name: str, config: str, model_py: str | None = None) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(config)
    if model_py is not None:
        (repo / name / "1" / "model.py").write_text(model_py)


ECHO_CONFIG = """backend: "python"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
ECHO_PY = """import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x")
                 .as_numpy())]) for r in requests]
"""
BROKEN_PY = """class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("checkpoint directory /nowhere is missing")
"""


def test_unfilled_placeholder_is_named(tmp_path):
    _write_model(tmp_path, "m", ECHO_CONFIG.replace("max_batch_size: 8", "max_batch_size: ${triton_max_batch_size}"))
    with pytest.raises(NemoTrtError, match="unfilled"):
        ln.read_repository(tmp_path)
    with pytest.raises(NemoTrtError, match="does not exist"):
        ln.read_repository(tmp_path / "missing")


def trtllm_repo(tmp_path: Path, version: str, world_size: int) -> Path:
    engines = tmp_path / "engines"
    engines.mkdir()
    (engines / "config.json").write_text(json.dumps(
        {"version": version, "pretrained_config": {"mapping": {"world_size": world_size, "tp_size": world_size}}}))
    repo = tmp_path / "repo"
    _write_model(repo, "tensorrt_llm", 'backend: "tensorrtllm"\nmax_batch_size: 4\n'
                 f'parameters: {{ key: "gpt_model_path" value: {{ string_value: "{engines}" }} }}\n')
    return repo


def test_trtllm_engines_need_matching_runtime(tmp_path, monkeypatch):
    repo = trtllm_repo(tmp_path, "0.20.0", 2)
    models = ln.read_repository(repo)
    assert ln.trtllm_engine_dirs(models) == [tmp_path / "engines"]
    assert ln.engine_world_size(tmp_path / "engines") == 2
    with pytest.raises(NemoTrtError, match="no TensorRT-LLM"):  # this machine has none
        ln.TritonServer(repo).prepare()
    import nemo_trt.build.engine_manifest as manifest

    monkeypatch.setattr(manifest, "runtime_trtllm_version", lambda: "0.19.0")
    with pytest.raises(NemoTrtError, match="built with TensorRT-LLM 0.20.0.*has 0.19.0"):
        ln.TritonServer(repo).prepare()
    monkeypatch.setattr(manifest, "runtime_trtllm_version", lambda: "0.20.0")
    with pytest.raises(NemoTrtError, match="python backend only"):  # only the pytriton server here
        ln.TritonServer(repo).prepare()


def test_trtllm_multi_rank_prepare_uses_mpirun(tmp_path, monkeypatch):
    repo = trtllm_repo(tmp_path, "0.20.0", 2)
    binary = _fake_binary(tmp_path / "opt" / "bin")
    mpirun = _fake_binary(tmp_path / "mpi") .rename(tmp_path / "mpi" / "mpirun")
    monkeypatch.setenv("PATH", f"{mpirun.parent}:{os.environ['PATH']}")
    import nemo_trt.build.engine_manifest as manifest

    monkeypatch.setattr(manifest, "runtime_trtllm_version", lambda: "0.20.0")
    command, env = ln.TritonServer(repo, tritonserver=binary).prepare()
    assert command[:2] == ["mpirun", "--allow-run-as-root"] and command.count(":") == 1
    assert command.count(str(binary.resolve())) == 2
    # the container's tritonserver runs in the container's environment, unchanged
    assert env["PATH"] == os.environ["PATH"] and env.get("LD_LIBRARY_PATH") == os.environ.get("LD_LIBRARY_PATH")


def test_real_server_start_stop_and_free_ports(tmp_path):
    _write_model(tmp_path, "echo", ECHO_CONFIG, ECHO_PY)
    import numpy as np
    import tritonclient.http as httpclient

    server = ln.TritonServer(tmp_path, http_port=0, grpc_port=0, metrics_port=0, log_file=tmp_path / "log.txt")
    with server:
        assert 0 not in server.ports.values() and len(set(server.ports.values())) == 3
        assert server.is_ready() and server.startup_seconds is not None
        assert server.grpc_url.startswith("127.0.0.1:") and server.metrics_url.endswith("/metrics")
        client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
        tensor = httpclient.InferInput("x", [1, 2], "FP32")
        tensor.set_data_from_numpy(np.array([[1.5, 2.5]], np.float32))
        assert client.infer("echo", [tensor]).as_numpy("y").tolist() == [[1.5, 2.5]]
        client.close()
        prefix = server._shm_prefix
    assert server.process is None and not server.is_ready()
    assert not list(Path("/dev/shm").glob(f"{prefix}*"))


def test_model_load_error_shows_log_tail(tmp_path):
    _write_model(tmp_path, "broken", ECHO_CONFIG, BROKEN_PY)
    server = ln.TritonServer(tmp_path, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=60)
    with pytest.raises(NemoTrtError, match="/nowhere is missing"):
        server.start()
    assert server.process is None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # an exited orphan may wait as a zombie for its new parent


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_server_stops_when_the_process_that_started_it_dies(tmp_path):
    """A nemo-trt that is SIGKILLed (OOM killer, kill -9) cannot stop its server in order; the
    kernel's parent-death signal does: no tritonserver is left holding GPUs and ports."""
    import signal
    import subprocess
    import time

    _write_model(tmp_path, "echo", ECHO_CONFIG, ECHO_PY)
    script = ("import sys, time\nfrom nemo_trt.serve.launcher import TritonServer\n"
              f"server = TritonServer({str(tmp_path)!r}, http_port=0, grpc_port=0, metrics_port=0, "
              f"log_file={str(tmp_path / 'log.txt')!r}).start()\n"
              "print(server.process.pid, flush=True)\ntime.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    server_pid = 0
    try:
        server_pid = int(parent.stdout.readline())
        assert _alive(server_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 60
        while _alive(server_pid):
            assert time.monotonic() < deadline, "tritonserver outlived the process that started it"
            time.sleep(0.2)
    finally:
        parent.kill()
        if server_pid and _alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)
