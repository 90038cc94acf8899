# nemo-trt in the NGC Triton TensorRT-LLM container: build engines and serve them with ONE image.
#
# Pairing (Triton "Release Compatibility Matrix", container trtllm-python-py3, rows 25.06 and 25.07):
#   nvcr.io/nvidia/tritonserver:25.06-trtllm-python-py3 = TensorRT-LLM 0.20.0, TensorRT 10.10.0.31,
#   CUDA 12.9.0, Python 3.12.3, driver >= 575 (data-center GPUs: R535/R545 compat drivers also work).
# The tag is kept in configs/trtllm/0.20.0.yaml; tests/test_build_dockerfile.py fails if they differ.
# TensorRT engines only load in the TensorRT-LLM/TensorRT that built them: `nemo-trt build` and
# `nemo-trt serve` must run in this same image (engine_manifest.json records the version; serve checks it).
# Acceptance on a GPU machine: docker run --gpus all --rm nemo-trt selftest --gpu (README "Build on GPUs").
FROM nvcr.io/nvidia/tritonserver:25.06-trtllm-python-py3

# sshd: the worker pods of a multi-node Kubernetes group (`nemo-trt deploy k8s`, LeaderWorkerSet) run it as the
# non-root user so the leader's mpirun can start their ranks. The distribution's current build (security fixes).
# gcc + libc6-dev: build the HTTP backpressure library below.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssh-server gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

COPY . /tmp/nemo-trt

# Everything the image already has (NVIDIA's torch, TensorRT-LLM, numpy, transformers) is pinned as a
# constraint so pip only adds what is missing and never swaps the container's CUDA builds for PyPI ones.
# PIP_BREAK_SYSTEM_PACKAGES: the image's Python is the system one (Ubuntu 24.04, PEP 668).
RUN python3 -m pip list --format=freeze > /tmp/container-constraints.txt \
 && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir -c /tmp/container-constraints.txt "/tmp/nemo-trt[selftest]" \
 && rm -rf /tmp/nemo-trt /tmp/container-constraints.txt \
 && python3 -m nemo_trt.serve.http_backpressure /opt/nemo-trt/lib/libnemo_trt_http_backpressure.so \
 && nemo-trt --version

# `nemo-trt serve` preloads this into tritonserver: Triton's HTTP frontend loses responses when a worker
# falls behind (nemo_trt/serve/http_backpressure.py); built once here, so serving needs no compiler.
ENV NEMO_TRT_HTTP_BACKPRESSURE_LIB=/opt/nemo-trt/lib/libnemo_trt_http_backpressure.so

ENV PYTHONUNBUFFERED=1
WORKDIR /workspace
ENTRYPOINT ["nemo-trt"]
CMD ["--help"]
