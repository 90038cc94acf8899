"""Start, watch and stop `tritonserver` on a model repository.

Works with the NGC Triton TensorRT-LLM container (`/opt/tritonserver`) and, for the CPU
reference backend, with the tritonserver 2.51 bundled in the `nvidia-pytriton` wheel.
What the bundled server needs on a CPU-only machine (cpu-triton.md §3-§5 and addendum 1):
- the Python backend stub matching this interpreter next to `libtriton_python.so`: we
  build a private backends directory in a cache folder (never write into site-packages);
- the venv's `bin/` first on PATH (the stub takes its interpreter from PATH);
- LD_LIBRARY_PATH = this interpreter's LIBDIR (its libpython, not the system one), then the
  wheel's `nvidia_pytriton.libs` -- for that server only: the NGC container's tritonserver gets
  the environment unchanged (its library search order puts CUDA forward-compat libs first);
- numpy < 2 in this environment (numpy 2 corrupts tensors in the stub).
Every tritonserver gets serve/http_backpressure.c preloaded (http_backpressure.py says why).

Multi-rank TensorRT-LLM engines run one tritonserver per rank under mpirun (leader mode),
like TensorRT-LLM's `triton_backend/scripts/launch_triton_server.py`: ranks > 0 load only
the `tensorrt_llm` model in explicit mode and every rank gets its own python-backend
shared-memory prefix.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from nemo_trt.errors import NemoTrtError

ModelControlMode = Literal["none", "poll", "explicit"]
PR_SET_PDEATHSIG = 1  # linux/prctl.h
SYSTEM_TRITONSERVER = Path("/opt/tritonserver/bin/tritonserver")
SHM_DIR = Path("/dev/shm")
DEFAULT_SHM_PREFIX = "triton_python_backend_shm_region_"
TRTLLM_MODEL_NAME = "tensorrt_llm"
STDOUT_LOG = "-"  # log_file value: inherit stdout instead of writing a file


# --------------------------------------------------------------------------- locating the server


@dataclass(frozen=True)
class TritonInstall:
    """A tritonserver binary and what comes with it."""

    binary: Path
    bundled: bool  # the nvidia-pytriton wheel's copy (python backend only)

    @property
    def root(self) -> Path:
        return self.binary.parent.parent

    @property
    def libs_dir(self) -> Path | None:
        """The wheel's bundled shared libraries (site-packages/nvidia_pytriton.libs)."""
        if not self.bundled:
            return None
        candidate = self.root.parent.parent / "nvidia_pytriton.libs"
        return candidate if candidate.is_dir() else None

    def stub_for(self, version: tuple[int, int]) -> Path:
        return self.root / "python_backend_stubs" / f"{version[0]}.{version[1]}" / "triton_python_backend_stub"


def bundled_tritonserver() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(list(spec.submodule_search_locations)[0]) / "tritonserver" / "bin" / "tritonserver"
    return candidate if candidate.is_file() else None


def find_tritonserver(explicit: str | Path | None = None, env: Mapping[str, str] | None = None) -> TritonInstall:
    """$TRITONSERVER / explicit path, then PATH, then /opt/tritonserver, then the nvidia-pytriton copy."""
    env = os.environ if env is None else env
    bundled = bundled_tritonserver()
    choice = explicit or env.get("TRITONSERVER")
    if choice:
        path = Path(choice)
        if not path.is_file():
            raise NemoTrtError(f"tritonserver not found at {path}", "fix $TRITONSERVER / --tritonserver")
        return TritonInstall(path.resolve(), bundled is not None and path.resolve() == bundled.resolve())
    on_path = shutil.which("tritonserver", path=env.get("PATH"))
    if on_path:
        resolved = Path(on_path).resolve()
        return TritonInstall(resolved, bundled is not None and resolved == bundled.resolve())
    if SYSTEM_TRITONSERVER.is_file():
        return TritonInstall(SYSTEM_TRITONSERVER, False)
    if bundled is not None:
        return TritonInstall(bundled.resolve(), True)
    raise NemoTrtError(
        "no tritonserver found ($TRITONSERVER, PATH, /opt/tritonserver/bin, nvidia-pytriton)",
        "run inside the NGC Triton TensorRT-LLM container, or `pip install 'nvidia-pytriton>=0.7,<0.8'` "
        "for the CPU reference backend",
    )


# --------------------------------------------------------------------------- environment checks


def check_numpy() -> None:
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise NemoTrtError(
            f"numpy {numpy.__version__} is installed in {sys.prefix}; the Triton Python backend stub "
            "corrupts tensors with numpy >= 2",
            f"{sys.executable} -m pip install 'numpy<2'",
        )


def libpython_path() -> Path | None:
    """The shared libpython of this interpreter, or None if it was built without one."""
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so.1.0"
    if not libdir or not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    path = Path(libdir) / soname
    return path if path.is_file() else None


def check_libpython() -> Path:
    path = libpython_path()
    if path is None:
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        raise NemoTrtError(
            f"{sys.executable} has no shared libpython{version}.so: the Triton Python backend stub must "
            "load this interpreter's libpython (a different build breaks extension modules such as _ssl)",
            "use a Python built with --enable-shared (pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared "
            f"pyenv install {version}, or the distribution's python{version}) for the serving venv",
        )
    return path


def server_env(install: TritonInstall, base: Mapping[str, str] | None = None,
               python_executable: str | None = None, libdir: str | None = None) -> dict[str, str]:
    """Environment for tritonserver.

    The nvidia-pytriton copy (CPU reference backend) needs this venv's bin/ first on PATH and this
    interpreter's LIBDIR, then the wheel's bundled libraries, first on LD_LIBRARY_PATH. Any other
    tritonserver -- the NGC container's -- gets the environment untouched: there LIBDIR is the system
    libdir, and putting it first would shadow what the image puts ahead of it (CUDA forward-
    compatibility libraries), so library search order stays exactly the container's.
    """
    env = dict(os.environ if base is None else base)
    if not install.bundled:
        return env
    bin_dir = str(Path(python_executable or sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]
    env["PATH"] = os.pathsep.join([bin_dir, *path])
    libdir = libdir if libdir is not None else sysconfig.get_config_var("LIBDIR")
    front = [d for d in (libdir, str(install.libs_dir) if install.libs_dir else None) if d]
    rest = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p not in front]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(front + rest)
    env.pop("PYTHONPATH", None)  # ignored by the stub anyway; avoid surprises
    return env


def cache_dir() -> Path:
    base = os.environ.get("NEMO_TRT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nemo-trt"
    )
    return Path(base)


def prepare_backend_dir(install: TritonInstall, version: tuple[int, int] | None = None,
                        cache: Path | None = None) -> Path | None:
    """For the bundled server: a private backends dir whose python/ holds the matching stub.

    Returns None for a regular installation (its own backends directory is right).
    """
    if not install.bundled:
        return None
    version = version or (sys.version_info[0], sys.version_info[1])
    stub = install.stub_for(version)
    if not stub.is_file():
        available = sorted(p.name for p in (install.root / "python_backend_stubs").glob("*") if p.is_dir())
        raise NemoTrtError(
            f"the bundled tritonserver has no Python backend stub for Python {version[0]}.{version[1]} "
            f"(has {', '.join(available) or 'none'})",
            "create the serving venv with one of those Python versions",
        )
    source = install.root / "backends" / "python"
    digest = hashlib.sha256()
    for path in (stub, source / "libtriton_python.so", source / "triton_python_backend_utils.py"):
        stat = path.stat()
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = (cache or cache_dir()) / "triton-backends" / f"py{version[0]}.{version[1]}-{digest.hexdigest()[:12]}"
    if (target / "python" / "triton_python_backend_stub").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".backends.", dir=target.parent))
    try:
        (tmp / "python").mkdir()
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copy2(source / name, tmp / "python" / name)
        shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race; theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# --------------------------------------------------------------------------- repository inspection


@dataclass(frozen=True)
class RepoModel:
    name: str
    backend: str
    parameters: dict[str, str]


def read_repository(repo: Path) -> list[RepoModel]:
    """Every model directory with a config.pbtxt: name, backend and string parameters."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    if not repo.is_dir():
        raise NemoTrtError(f"model repository {repo} does not exist",
                           "write one with `nemo-trt repo` or `nemo-trt build`")
    models = []
    for config_path in sorted(repo.glob("*/config.pbtxt")):
        text = config_path.read_text()
        config = model_config_pb2.ModelConfig()
        try:
            text_format.Parse(text, config)
        except text_format.ParseError as exc:
            hint = " (an unfilled ${...} placeholder?)" if "${" in text else ""
            raise NemoTrtError(
                f"{config_path} is not a valid model config{hint}: {exc}",
                "rewrite the repository with `nemo-trt repo`",
            ) from None
        params = {k: v.string_value for k, v in config.parameters.items()}
        backend = config.backend or config.platform
        models.append(RepoModel(config.name or config_path.parent.name, backend, params))
    if not models:
        raise NemoTrtError(f"{repo} holds no model (no */config.pbtxt)", "point --repo at a model repository")
    return models


def trtllm_engine_dirs(models: Sequence[RepoModel]) -> list[Path]:
    return [Path(m.parameters.get("gpt_model_path", "")) for m in models if m.backend == "tensorrtllm"]


def engine_world_size(engine_dir: Path) -> int:
    """Ranks of a TensorRT-LLM engine directory (manifest, else engine config.json mapping)."""
    import json

    manifest = engine_dir / "engine_manifest.json"
    if manifest.is_file():
        return int(json.loads(manifest.read_text()).get("world_size", 1))
    config = engine_dir / "config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        mapping = data.get("pretrained_config", {}).get("mapping", {})
        if "world_size" in mapping:
            return int(mapping["world_size"])
        return int(mapping.get("tp_size", 1)) * int(mapping.get("pp_size", 1))
    return len(list(engine_dir.glob("rank*.engine"))) or 1


def check_engine_runtime(engine_dir: Path) -> None:
    """Refuse engines built by another TensorRT-LLM than the serving environment's."""
    if not engine_dir.is_dir():
        raise NemoTrtError(
            f"the tensorrt_llm model points at {engine_dir}, which does not exist",
            "rewrite the repository with `nemo-trt build` / `nemo-trt repo --engine-dir ...`",
        )
    from nemo_trt.build.engine_manifest import check_runtime_compat

    check_runtime_compat(engine_dir)


# --------------------------------------------------------------------------- command lines


@dataclass
class ServerOptions:
    repo: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    model_control_mode: ModelControlMode = "none"
    load_models: list[str] = field(default_factory=list)
    log_verbose: int = 0
    backend_dir: Path | None = None
    shm_prefix: str | None = None  # python backend shared-memory region prefix
    exit_timeout: int | None = None  # seconds Triton waits for in-flight work on SIGTERM (its default: 30)
    extra_args: list[str] = field(default_factory=list)
    mpi_hostfile: Path | None = None  # ranks over several hosts (nemo_trt.serve.k8s.multinode writes it)


def tritonserver_args(binary: Path | str, options: ServerOptions, rank: int = 0) -> list[str]:
    """One tritonserver process; rank > 0 loads only tensorrt_llm (TRT-LLM leader mode)."""
    args = [
        str(binary),
        f"--model-repository={options.repo}",
        f"--http-address={options.host}",
        f"--http-port={options.http_port}",
        f"--grpc-address={options.host}",
        f"--grpc-port={options.grpc_port}",
        f"--metrics-address={options.host}",
        f"--metrics-port={options.metrics_port}",
        "--allow-metrics=true",
        f"--log-verbose={options.log_verbose}",
        "--disable-auto-complete-config",
    ]
    if options.exit_timeout is not None:
        args.append(f"--exit-timeout-secs={options.exit_timeout}")
    if options.backend_dir is not None:
        args.append(f"--backend-directory={options.backend_dir}")
    if rank == 0:
        args.append(f"--model-control-mode={options.model_control_mode}")
        if options.model_control_mode == "explicit":
            args += [f"--load-model={name}" for name in (options.load_models or ["*"])]
    else:
        args += ["--model-control-mode=explicit", f"--load-model={TRTLLM_MODEL_NAME}"]
    if options.shm_prefix is not None:
        # one prefix per rank: ranks on one host must not share python-backend regions
        args.append(f"--backend-config=python,shm-region-prefix-name={options.shm_prefix}rank{rank}_")
    return args + list(options.extra_args)


def server_command(binary: Path | str, options: ServerOptions, world_size: int = 1,
                   mpirun: str = "mpirun") -> list[str]:
    """tritonserver alone, or `mpirun --allow-run-as-root -n 1 <rank0> : -n 1 <rank1> ...`."""
    if world_size < 1:
        raise ValueError("world_size must be >= 1")
    if world_size == 1:
        return tritonserver_args(binary, options, 0)
    command = [mpirun, "--allow-run-as-root"]
    if options.mpi_hostfile is not None:
        # fill each host's slots in rank order: a TP group never straddles two hosts
        command += ["--hostfile", str(options.mpi_hostfile), "--map-by", "slot", "--bind-to", "none"]
    for rank in range(world_size):
        if rank:
            command.append(":")
        command += ["-n", "1", *tritonserver_args(binary, options, rank)]
    return command


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host if host not in ("0.0.0.0", "") else "127.0.0.1", 0))
        return sock.getsockname()[1]


def client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


# --------------------------------------------------------------------------- shm cleanup


def _mapped_paths() -> set[str]:
    """Files mapped by any process we can see (a live server's shm regions are mapped)."""
    seen: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            for line in maps.read_text(errors="replace").splitlines():
                if "/dev/shm/" in line:
                    seen.add(line.split(None, 5)[-1].replace(" (deleted)", ""))
        except OSError:
            continue
    return seen


def stale_shm_regions(shm_dir: Path = SHM_DIR, min_age_s: float = 60.0,
                      mapped: set[str] | None = None, now: float | None = None) -> list[Path]:
    """Python-backend shm regions that no process maps any more (left by crashed servers)."""
    if not shm_dir.is_dir():
        return []
    mapped = _mapped_paths() if mapped is None else mapped
    now = time.time() if now is None else now
    stale = []
    for path in shm_dir.iterdir():
        if DEFAULT_SHM_PREFIX not in path.name and not path.name.startswith("nemo_trt_"):
            continue
        try:
            age = now - path.stat().st_mtime
        except OSError:
            continue
        if str(path) not in mapped and age >= min_age_s:
            stale.append(path)
    return stale


def stale_python_env_dirs(tmp_dir: Path | None = None, min_age_s: float = 60.0, now: float | None = None) -> list[Path]:
    """Empty `python_env_*` directories the python backend leaves in the temp dir after crashes."""
    tmp_dir = Path(tempfile.gettempdir()) if tmp_dir is None else tmp_dir
    now = time.time() if now is None else now
    stale = []
    for path in tmp_dir.glob("python_env_*"):
        try:
            if path.is_dir() and not any(path.iterdir()) and now - path.stat().st_mtime >= min_age_s:
                stale.append(path)
        except OSError:
            continue
    return stale


def cleanup_stale_shm(shm_dir: Path = SHM_DIR) -> int:
    """Remove what crashed servers left: unmapped shm regions and empty python_env_* dirs."""
    removed = 0
    for path in stale_shm_regions(shm_dir):
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    for path in stale_python_env_dirs():
        with contextlib.suppress(OSError):
            path.rmdir()
            removed += 1
    return removed


# --------------------------------------------------------------------------- the server


def _tail(path: Path, lines: int = 40) -> str:
    if str(path) == STDOUT_LOG:
        return "(the server log went to standard output, above)"
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn by which the kernel sends the server SIGTERM when this process dies (Linux):
    a nemo-trt that crashed or was SIGKILLed then leaves no tritonserver holding GPUs and ports
    behind (a stop by signal or Ctrl-C already stops it in order). Only when starting from the
    main thread: the kernel ties the signal to the thread that forked, not to the process."""
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls it
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


class TritonServer:
    """A tritonserver process on a model repository.

    with TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0) as server:
        generate(server.grpc_url, request)

    Port 0 picks a free port. The server binds 127.0.0.1 unless `host` says otherwise.
    """

    def __init__(self, repo: str | Path, *, host: str = "127.0.0.1", http_port: int = 8000,
                 grpc_port: int = 8001, metrics_port: int = 8002, model_control_mode: ModelControlMode = "none",
                 load_models: Sequence[str] = (), log_verbose: int = 0, log_file: str | Path | None = None,
                 tritonserver: str | Path | None = None, startup_timeout: float = 180.0,
                 check_engines: bool = True, extra_args: Sequence[str] = (), exit_timeout: int = 10,
                 mpi_hostfile: str | Path | None = None, http_backpressure: bool = True):
        self.repo = Path(repo).resolve()
        self.host = host
        self.ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.model_control_mode = model_control_mode
        self.load_models = list(load_models)
        self.log_verbose = log_verbose
        self.log_file = Path(log_file) if log_file else None
        self.tritonserver = tritonserver
        self.startup_timeout = startup_timeout
        self.check_engines = check_engines
        self.extra_args = list(extra_args)
        self.exit_timeout = exit_timeout
        self.mpi_hostfile = Path(mpi_hostfile) if mpi_hostfile else None
        # Preload nemo_trt/serve/http_backpressure.c: Triton's HTTP frontend otherwise loses responses
        # when a worker falls behind. Unavailable (no C compiler): served without, and said here.
        self.http_backpressure = http_backpressure
        self.http_backpressure_missing: str | None = None
        self.process: subprocess.Popen | None = None
        self.command: list[str] = []
        self.world_size = 1
        self.startup_seconds: float | None = None
        self._shm_prefix = f"nemo_trt_{os.getpid()}_{id(self) & 0xFFFF:x}_"
        self._log_handle: IO[bytes] | None = None

    # -- urls -------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"http://{client_host(self.host)}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"{client_host(self.host)}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{client_host(self.host)}:{self.ports['metrics']}/metrics"

    # -- lifecycle ----------------------------------------------------------
    def prepare(self) -> tuple[list[str], dict[str, str]]:
        """Every check and the exact command + environment, without starting anything."""
        models = read_repository(self.repo)
        engine_dirs = trtllm_engine_dirs(models)
        install = find_tritonserver(self.tritonserver)
        if engine_dirs:
            if self.check_engines:
                for engine_dir in engine_dirs:
                    check_engine_runtime(engine_dir)
            if install.bundled:
                raise NemoTrtError(
                    f"{self.repo} uses the TensorRT-LLM backend, but the only tritonserver here is the "
                    "nvidia-pytriton copy (python backend only)",
                    "serve inside the NGC Triton TensorRT-LLM container, or write a CPU reference repository "
                    "(`nemo-trt repo --backend reference`)",
                )
            self.world_size = max(engine_world_size(d) for d in engine_dirs)
        if any(m.backend == "python" for m in models):
            check_numpy()
            if install.bundled:
                check_libpython()
        for name, port in self.ports.items():
            if port == 0:
                self.ports[name] = free_port(self.host)
        options = ServerOptions(
            repo=self.repo, host=self.host, http_port=self.ports["http"], grpc_port=self.ports["grpc"],
            metrics_port=self.ports["metrics"], model_control_mode=self.model_control_mode,
            load_models=self.load_models, log_verbose=self.log_verbose,
            backend_dir=prepare_backend_dir(install), shm_prefix=self._shm_prefix, extra_args=self.extra_args,
            exit_timeout=self.exit_timeout, mpi_hostfile=self.mpi_hostfile,
        )
        if self.world_size > 1 and shutil.which("mpirun") is None:
            raise NemoTrtError(
                f"the engines have {self.world_size} ranks and need mpirun, which is not on PATH",
                "serve inside the NGC Triton TensorRT-LLM container (it ships OpenMPI)",
            )
        self.command = server_command(install.binary, options, self.world_size)
        env = server_env(install)
        if self.http_backpressure:
            from nemo_trt.serve import http_backpressure

            try:
                http_backpressure.preload(env, http_backpressure.library(cache_dir()))
            except http_backpressure.CannotBuild as exc:  # a wrong $NEMO_TRT_HTTP_BACKPRESSURE_LIB still fails
                self.http_backpressure_missing = f"{exc.problem}; {exc.fix}"
        return self.command, env

    def start(self) -> TritonServer:
        if self.process is not None:
            return self
        command, env = self.prepare()
        cleanup_stale_shm()
        if self.log_file is None:
            self.log_file = Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        if str(self.log_file) == STDOUT_LOG:  # the server logs to our stdout (containers: `kubectl logs`)
            self._log_handle = None
        else:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = open(self.log_file, "wb")  # noqa: SIM115 - closed in stop()
        began = time.monotonic()
        self.process = subprocess.Popen(
            command, env=env, stdout=self._log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop the server in order
            preexec_fn=parent_death_signal(),
        )
        try:
            self._wait_ready(self.process, self.log_file, began)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _wait_ready(self, process: subprocess.Popen, log_file: Path, began: float) -> None:
        url = f"{self.http_url}/v2/health/ready"
        while True:
            code = process.poll()
            if code is not None:
                raise NemoTrtError(
                    f"tritonserver exited with code {code} while starting; last log lines "
                    f"({log_file}):\n{_tail(log_file)}",
                    "fix the model load error above (model config, checkpoint path, Python packages)",
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() - began > self.startup_timeout:
                raise NemoTrtError(
                    f"tritonserver not ready after {self.startup_timeout:.0f} s; last log lines "
                    f"({log_file}):\n{_tail(log_file)}",
                    "look for a model stuck loading above; raise the startup timeout for big models",
                )
            time.sleep(0.1)

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (Triton drains in-flight requests for exit_timeout s), then SIGKILL."""
        timeout = timeout if timeout is not None else (self.exit_timeout or 30) + 10
        process, self.process = self.process, None
        code = None
        if process is not None:
            # SIGTERM to the server (or mpirun, which forwards it) so it unloads models and
            # stops its stubs; SIGKILL the whole process group if it does not exit in time.
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                code = process.wait(10)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # orphaned stubs of a crashed server
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        for path in SHM_DIR.glob(f"{self._shm_prefix}*") if SHM_DIR.is_dir() else []:
            with contextlib.suppress(OSError):
                path.unlink()
        return code

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("server not started")
        return self.process.pid

    def wait(self) -> int:
        """Block until the server exits (Ctrl-C is the caller's to handle)."""
        if self.process is None:
            raise RuntimeError("server not started")
        return self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_file, lines) if self.log_file else ""

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
