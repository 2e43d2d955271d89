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


def kustomize_version() -> int:
    """Return the major version of the Kustomize in `kubectl`, 0 without one."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return 0
    out = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True)
    m = re.search(r"Kustomize Version: v(\d+)", out.stdout)
    return int(m.group(1)) if m else 0


def render(path: Path) -> list[dict[str, Any]]:
    """Return the objects `kubectl kustomize` renders from a kustomization."""
    assert kustomize_version() >= 4, "these tests need kubectl with Kustomize 4 or newer"
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


@pytest.mark.parametrize("variant", ["", "external-etcd", "mount", "mount/examples"])
def test_every_object_validates_strictly(tmp_path: Path, variant: str) -> None:
    objs = render(K8S / variant)
    assert len(objs) >= (15 if "mount" not in variant else 1)
    out = tmp_path / "all.yaml"
    out.write_text(yaml.safe_dump_all(objs))
    for version in VERSIONS:
        r = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "-k", version,
                            str(out)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.count("INFO") == len(objs), r.stdout  # one "validated" per object


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


def test_the_http_port_is_closed_to_loaders(install: list[dict[str, Any]]) -> None:
    """8080 (range API and /_warm, /_evict, /ring, /metrics) only from the group's own."""
    policy = kinds(install, "NetworkPolicy")["blockcache-node"]["spec"]
    rules = {tuple(p["port"] for p in r["ports"]): r["from"] for r in policy["ingress"]}
    assert rules[(9000, 9090)] == [{"namespaceSelector": {}}]
    internal = rules[(8080,)]
    assert {"namespaceSelector": {}} not in internal
    assert all(f.get("podSelector") for f in internal)


def test_external_etcd_drops_the_bundled_one() -> None:
    objs = render(K8S / "external-etcd")
    assert not [o for o in objs if "etcd" in o["metadata"]["name"]
                and o["kind"] != "ConfigMap"]
    config = [o for o in objs if o["kind"] == "ConfigMap"
              and o["metadata"]["name"].startswith("blockcache-config")]
    assert config[0]["data"]["etcd"].startswith("http://etcd-0.etcd.infra:2379")


def test_the_mount_reads_through_its_site_and_may_reach_it() -> None:
    """The DaemonSet learns the group from its site's headless Service, port 8080."""
    (ds,) = render(K8S / "mount")
    assert ds["kind"] == "DaemonSet" and ds["metadata"]["namespace"] == "blockcache"
    tpl = ds["spec"]["template"]
    assert tpl["metadata"]["labels"]["blockcache.io/site"] == "hz"
    assert tpl["metadata"]["labels"]["blockcache.io/ring-client"] == "true"
    c = tpl["spec"]["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["CACHECTL_SITE"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['blockcache.io/site']")
    assert env["CACHECTL_NODES"]["value"] == "blockcache-$(CACHECTL_SITE):8080"
    assert "blockcache-hz" in kinds(render(K8S), "Service")  # the headless Service it names
    assert c["image"] == "registry.example.com/blockcache-mount:0.1.0"
    images = [c["image"] for o in render(K8S / "mount" / "examples")
              for c in o["spec"].get("template", o)["spec"].get("containers", [])]
    assert images and not [i for i in images if ":" not in i or i.endswith(":latest")]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "deploy/mount.Dockerfile"])
def test_the_dockerfiles_pass_hadolint_from_a_pinned_base(dockerfile: str) -> None:
    r = subprocess.run([str(BIN / "hadolint"), str(ROOT / dockerfile)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    text = (ROOT / dockerfile).read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim-\w+$", text, re.M)
    assert ":latest" not in text


def test_the_dockerfile_runs_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "USER 10001:10001" in text
