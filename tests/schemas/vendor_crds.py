"""Regenerate the vendored CRD schemas (not run by the tests; see README.md here).

    python tests/schemas/vendor_crds.py LWS_CRD.yaml PODMONITOR_CRD.yaml

Keeps each CRD's `openAPIV3Schema` as published, minus `description` fields (size). The
LeaderWorkerSet pod templates' `spec` (the core PodSpec, 68 KB each as controller-gen copies
it) is replaced by a marker: tests validate it against the core PodTemplate schema of
kubernetes-validate for the same Kubernetes version instead. Their `metadata` (the
embedded-ObjectMeta subset the CRD accepts) is kept.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).parent
CORE_POD_SPEC = {"type": "object", "x-nemo-trt-core": "PodSpec"}


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def schema(crd_path: str) -> tuple[str, dict]:
    crd = yaml.safe_load(Path(crd_path).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    out = strip(version["schema"]["openAPIV3Schema"])
    kind = crd["spec"]["names"]["kind"]
    if kind == "LeaderWorkerSet":
        lwt = out["properties"]["spec"]["properties"]["leaderWorkerTemplate"]["properties"]
        for key in ("leaderTemplate", "workerTemplate"):
            lwt[key]["properties"]["spec"] = CORE_POD_SPEC
    return f"{kind.lower()}_{version['name']}.json", out


if __name__ == "__main__":
    for path in sys.argv[1:]:
        name, data = schema(path)
        (HERE / name).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"wrote {HERE / name}")
