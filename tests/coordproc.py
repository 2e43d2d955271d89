"""A coordinator process for tests and benchmarks (the local stack's, package `stack`)."""

from client.stack.coordinator import CACHECOORDINATOR, FAST, CoordinatorProcess

__all__ = ["CACHECOORDINATOR", "FAST", "CoordinatorProcess"]
