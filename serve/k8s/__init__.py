"""Kubernetes: manifests rendered from a built WORKDIR (`nemo-trt deploy k8s`) and the multi-node pod entrypoints."""
