"""The README and docs/ stay true to the code: every metric a node or the coordinator exports
is listed, every link resolves inside the repository, and the image's build is written down."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from cachenode.metrics import NodeMetrics
from coordinator.metrics import CoordinatorMetrics

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = [ROOT / "README.md", ROOT / "loadtest" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def exported(registry: CollectorRegistry) -> Iterator[str]:
    """Yield the name of every metric family as a scrape shows it."""
    for family in registry.collect():
        yield family.name + ("_total" if family.type == "counter" else "")


@pytest.mark.parametrize("registry", [NodeMetrics().registry, CoordinatorMetrics().registry],
                         ids=["node", "coordinator"])
def test_the_readme_lists_every_metric(registry: CollectorRegistry) -> None:
    missing = [n for n in exported(registry) if f"`{n}" not in README]
    assert not missing, f"metrics the README does not list: {missing}"


def slug(heading: str) -> str:
    """Return the anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve_inside_the_repository(doc: Path) -> None:
    text = doc.read_text()
    assert "../shared" not in text and "/work/" not in text and "DESIGN.md" not in text
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        assert dest.is_relative_to(ROOT), f"{doc.name}: {target} points outside the repository"
        assert dest.exists(), f"{doc.name}: {target} does not exist"
        if anchor and dest.suffix == ".md":
            heads = {slug(h) for h in re.findall(r"^#+ (.+)$", dest.read_text(), re.M)}
            assert anchor in heads, f"{doc.name}: no heading for #{anchor} in {dest.name}"


def test_the_readme_says_how_to_build_push_and_deploy() -> None:
    for needed in ("docker build -t", "docker push", "kubectl apply -k deploy/k8s",
                   "blockcache-stack", "docs/design.md"):
        assert needed in README, needed


def test_every_command_takes_json_but_cat_and_mount() -> None:
    """As the README says: `cat` writes the bytes and `mount` mounts; the rest print JSON."""
    from client.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    without = {name for name, p in sub.choices.items()
               if not any("--json" in a.option_strings for a in p._actions)}
    assert without == {"cat", "mount"}
    assert "Every command but `cat` (the bytes) and `mount` takes `--json`" in README
