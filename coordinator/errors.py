"""Coordinator errors: each maps to one HTTP status and carries a reason a person can act on."""

from __future__ import annotations


class CoordinatorError(Exception):
    """Base of every error the coordinator reports to a caller."""

    status = 500


class BadRequest(CoordinatorError):
    """The request is malformed."""

    status = 400


class BadPrefix(BadRequest):
    """The prefix is not s3://<bucket>/<prefix>/."""


class BadSite(BadRequest):
    """The site name is invalid or no cache node is registered for it."""


class BadPattern(BadRequest):
    """The model/version pattern does not compile or does not split the prefix."""


class EmptyPrefix(CoordinatorError):
    """Nothing to warm: the prefix holds no objects, or the bucket does not exist."""

    status = 404


class NotFound(CoordinatorError):
    """No such job or version."""

    status = 404


class Conflict(CoordinatorError):
    """The request does not fit the current state (e.g. cancelling a finished job)."""

    status = 409


class OriginFailed(CoordinatorError):
    """The object store could not be listed."""

    status = 502


class StateUnavailable(CoordinatorError):
    """etcd, where all state lives, cannot be reached."""

    status = 503


class NotLeader(CoordinatorError):
    """This replica lost the leadership while writing (the write was refused by etcd)."""

    status = 503
