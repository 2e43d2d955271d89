"""The dashboard and alert rules against a live node and coordinator: every metric they use
is exported, `promtool` accepts the rules and the scrape config, and the README lists every
metric the node and the coordinator export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.cluster import LocalGroup
from tests.coordproc import CoordinatorProcess

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "k8s" / "base" / "monitoring"
RULES, SCRAPE = MONITORING / "blockcache-rules.yml", MONITORING / "blockcache-scrape.yml"
DASHBOARD = MONITORING / "blockcache-dashboard.json"
METRIC = re.compile(r"\b((?:blockcache|process|python)_[a-z0-9_]+)\b")


def exported(text: str) -> set[str]:
    """Return every sample name a /metrics page can carry (from its TYPE lines)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names |= {name + s for s in ("_bucket", "_count", "_sum")}
    return names


def used_metrics() -> dict[str, set[str]]:
    """Return the metric names each alert rule and dashboard panel uses."""
    used: dict[str, set[str]] = {}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            used[f"rule {rule['alert']}"] = set(METRIC.findall(rule["expr"]))
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        used[f"panel {panel['title']}"] = {m for t in panel["targets"]
                                           for m in METRIC.findall(t["expr"])}
    return used


def page(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


@pytest.fixture
def live(tmp_path: Path, s3, etcd):  # type: ignore[no-untyped-def]
    """Return the /metrics pages of a live node (of a group) and coordinator replica."""
    with LocalGroup(tmp_path, s3.env(), etcd.endpoint, 1, "--capacity", "1GiB") as group:
        coord = CoordinatorProcess(tmp_path, s3.env(), etcd.endpoint, group.cluster,
                                   "c1").start()
        try:
            coord.wait_leader()
            yield group.nodes[0], page(f"{group.nodes[0].url}/metrics"), page(
                f"{coord.url}/metrics")
        finally:
            coord.stop()


def test_every_dashboard_and_alert_metric_is_exported(live) -> None:  # type: ignore[no-untyped-def]
    node, node_page, coord_page = live
    have = exported(node_page) | exported(coord_page)
    used = used_metrics()
    assert len(used) >= 30, used
    assert [w for w, names in used.items() if not names] == ["rule BlockcacheNodeDown"]  # up
    missing = {where: sorted(names - have) for where, names in used.items() if names - have}
    assert not missing, missing
    for page_text, component in ((node_page, "node"), (coord_page, "coordinator")):
        assert f'blockcache_build_info{{component="{component}"' in page_text
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                     "process_open_fds"):
            assert re.search(rf"^{name} ", page_text, re.M), (component, name)
    # The S3 port (the read Service's) serves none of the node's internal endpoints.
    for method, path in (("POST", "/_evict"), ("POST", "/_warm"), ("GET", "/metrics"),
                         ("GET", "/ring")):
        req = urllib.request.Request(f"{node.s3_url}{path}", method=method, data=b"{}"
                                     if method == "POST" else None)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        e.value.close()  # the error holds the connection
        assert e.value.code in (400, 403, 404, 405, 501), (path, e.value.code)


def test_the_readme_lists_every_exported_metric(live) -> None:  # type: ignore[no-untyped-def]
    _, node_page, coord_page = live
    readme = (ROOT / "README.md").read_text()
    families = {re.sub(r"_(total|bucket|count|sum)$", "", n)
                for n in exported(node_page) | exported(coord_page)
                if n.startswith("blockcache_")}
    missing = sorted(f for f in families if f not in readme)
    assert not missing, f"README.md does not name: {missing}"


def test_promtool_accepts_the_rules() -> None:
    """`promtool check rules` passes. (Debian's promtool is built without Kubernetes service
    discovery, so it cannot check the scrape config: its jobs are checked against the rules.)"""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/setup.sh installs Debian's prometheus"
    r = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 11 rules found" in r.stdout, r.stdout
    jobs = {c["job_name"] for c in yaml.safe_load(SCRAPE.read_text())["scrape_configs"]}
    assert jobs == {"blockcache-node", "blockcache-coordinator"}
    assert 'job="blockcache-node"' in RULES.read_text()
