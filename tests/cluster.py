"""A local cache group for tests and benchmarks (the local stack's, package `stack`)."""

from client.stack.group import LocalGroup

__all__ = ["LocalGroup"]
