"""The Kubernetes package (deploy/k8s) renders for its sites and every object validates
strictly against two Kubernetes versions; the Dockerfile passes hadolint.

Rendering needs `kubectl` with Kustomize 4 or newer (`kubectl kustomize`, offline);
validation `kubernetes-validate`, whose schemas ship in the package (no download).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
VERSIONS = ("1.29.0", "1.33.0")  # the oldest and a recent release we claim
BIN = Path(sys.executable).parent


def kustomize_ok() -> bool:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return False
    out = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True)
    m = re.search(r"Kustomize Version: v(\d+)", out.stdout)
    return m is not None and int(m.group(1)) >= 4


needs_kustomize = pytest.mark.skipif(not kustomize_ok(), reason="kubectl with Kustomize 4+ "
                                     "is not installed")


def render(path: Path) -> list[dict[str, Any]]:
    """Return the objects `kubectl kustomize` renders from a kustomization."""
    r = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.fixture(scope="module")
def install() -> list[dict[str, Any]]:
    return render(K8S)


def sites() -> list[str]:
    """Return the list of sites (deploy/k8s/sites/kustomization.yaml)."""
    return list(yaml.safe_load((K8S / "sites" / "kustomization.yaml").read_text())[
        "resources"])


def kinds(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


@needs_kustomize
@pytest.mark.parametrize("variant", ["", "external-etcd"])
def test_every_object_validates_strictly(tmp_path: Path, variant: str) -> None:
    objs = render(K8S / variant)
    assert len(objs) >= 15
    out = tmp_path / "all.yaml"
    out.write_text(yaml.safe_dump_all(objs))
    for version in VERSIONS:
        r = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "-k", version,
                            str(out)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.count("INFO") == len(objs), r.stdout  # one "validated" per object


@needs_kustomize
def test_one_cache_group_per_site_from_one_list(install: list[dict[str, Any]]) -> None:
    assert sites() == ["hz", "fra"]
    sets = kinds(install, "StatefulSet")
    assert set(sets) == {"blockcache-etcd"} | {f"blockcache-{s}" for s in sites()}
    services, pdbs = kinds(install, "Service"), kinds(install, "PodDisruptionBudget")
    for site in sites():
        ss = sets[f"blockcache-{site}"]
        tpl = ss["spec"]["template"]
        assert tpl["metadata"]["labels"]["blockcache.io/site"] == site
        assert ss["spec"]["selector"]["matchLabels"]["blockcache.io/site"] == site
        assert ss["spec"]["serviceName"] == f"blockcache-{site}"
        env = {e["name"]: e for e in tpl["spec"]["containers"][0]["env"]}
        assert env["CACHENODE_SITE"]["valueFrom"]["fieldRef"]["fieldPath"] == (
            "metadata.labels['blockcache.io/site']")
        pod = tpl["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["fsGroup"]
        assert pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert pod["topologySpreadConstraints"]
        c = pod["containers"][0]
        assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 1800
        assert c["resources"]["requests"] and c["resources"]["limits"]
        assert c["image"].startswith("registry.example.com/blockcache:")
        headless, read = services[f"blockcache-{site}"], services[f"blockcache-read-{site}"]
        assert headless["spec"]["clusterIP"] == "None"
        assert {p["port"] for p in read["spec"]["ports"]} == {9000, 9090}  # no 8080
        assert read["spec"]["selector"]["blockcache.io/site"] == site
        assert pdbs[f"blockcache-{site}"]["spec"]["selector"]["matchLabels"][
            "blockcache.io/site"] == site
    coord = kinds(install, "Deployment")["blockcache-coordinator"]
    assert coord["spec"]["replicas"] == 2
    assert all(o["metadata"].get("namespace") == "blockcache" for o in install
               if o["kind"] != "Namespace")


@needs_kustomize
def test_the_http_port_is_closed_to_loaders(install: list[dict[str, Any]]) -> None:
    """8080 (range API and /_warm, /_evict, /ring, /metrics) only from the group's own."""
    policy = kinds(install, "NetworkPolicy")["blockcache-node"]["spec"]
    rules = {tuple(p["port"] for p in r["ports"]): r["from"] for r in policy["ingress"]}
    assert rules[(9000, 9090)] == [{"namespaceSelector": {}}]
    internal = rules[(8080,)]
    assert {"namespaceSelector": {}} not in internal
    assert all(f.get("podSelector") for f in internal)


@needs_kustomize
def test_external_etcd_drops_the_bundled_one() -> None:
    objs = render(K8S / "external-etcd")
    assert not [o for o in objs if "etcd" in o["metadata"]["name"]
                and o["kind"] != "ConfigMap"]
    config = [o for o in objs if o["kind"] == "ConfigMap"
              and o["metadata"]["name"].startswith("blockcache-config")]
    assert config[0]["data"]["etcd"].startswith("http://etcd-0.etcd.infra:2379")


def test_the_dockerfile_passes_hadolint_and_runs_as_non_root() -> None:
    r = subprocess.run([str(BIN / "hadolint"), str(ROOT / "Dockerfile")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim-\w+$", text, re.M)
    assert "USER 10001:10001" in text and ":latest" not in text
