"""Write rendered manifests: one object per file, a kustomization.yaml listing them, all or nothing."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from nemo_trt import __version__
from nemo_trt.atomic import atomic_dir
from nemo_trt.serve.k8s.render import Rendered

ADAPTER_VALUES = "prometheus-adapter-values.yaml"
FACTS = "nemo-trt-deploy.json"


def to_yaml(doc: dict) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=120)


def header(workdir: str) -> str:
    return (f"# Rendered by nemo-trt {__version__} `deploy k8s` from {workdir}.\n"
            "# Change it with Kustomize patches (or re-render), not by hand.\n")


def files(rendered: Rendered) -> dict[str, str]:
    """File name -> text, in order."""
    head = header(rendered.facts["workdir"])
    out = {name: head + to_yaml(obj.manifest()) for name, obj in rendered.objects.items()}
    out["kustomization.yaml"] = head + to_yaml(rendered.kustomization.manifest())
    if rendered.adapter_rule is not None:
        out[ADAPTER_VALUES] = (
            head + "# Helm values for prometheus-adapter (not a Kubernetes object): the custom metric the HPA reads.\n"
            + to_yaml({"rules": {"custom": [rendered.adapter_rule.manifest()]}}))
    out[FACTS] = json.dumps({**rendered.facts, "notes": rendered.notes}, indent=2) + "\n"
    return out


def write(rendered: Rendered, out_dir: Path, *, force: bool = False) -> list[Path]:
    with atomic_dir(out_dir, replace=force) as tmp:
        for name, text in files(rendered).items():
            (tmp / name).write_text(text)
    return [out_dir / name for name in files(rendered)]
