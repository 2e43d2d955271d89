"""A cache node process for tests and benchmarks (the local stack's, package `stack`)."""

from client.stack.node import CACHENODE, NodeProcess

__all__ = ["CACHENODE", "NodeProcess"]
