"""Whether a store's disk is in rotation: an I/O error takes it out, it is tried again later."""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from pathlib import Path

from cachenode.errors import Overloaded

log = logging.getLogger("cachenode.store.disk")
RETRY_FAILED_DISK_S = 30.0  # a failed store tries the disk again after this long
_BUSY = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN}  # the process, not the disk


class DiskHealth:
    """The failure state of one store's disk (juicefs disk_cache_state, in small)."""

    def __init__(self, root: Path, on_retry: Callable[[], None]) -> None:
        self.root, self._on_retry = root, on_retry  # on_retry: reopen what failed, or raise
        self.failed: str | None = None  # set when the disk fails; the store stops serving
        self._failed_at = 0.0

    def os_error(self, what: str, err: OSError) -> None:
        """Take the disk out of rotation, unless the process (not the disk) is short of fds."""
        if err.errno in _BUSY:
            raise Overloaded(f"{what}: {err}") from err
        self.fail(f"{what}: {err}")

    def fail(self, why: str) -> None:
        """Take the disk out of rotation for a while, saying why."""
        if not self.failed:
            log.error("block store %s taken out of rotation for %.0fs: %s", self.root,
                      RETRY_FAILED_DISK_S, why)
        self.failed, self._failed_at = why, time.monotonic()

    def usable(self) -> bool:
        """Return whether the store serves; a failed one tries again after a while."""
        if self.failed and time.monotonic() - self._failed_at > RETRY_FAILED_DISK_S:
            log.warning("block store %s: trying the disk again after: %s", self.root,
                        self.failed)
            self.failed = None
            try:
                self._on_retry()
            except OSError as err:
                self.fail(f"retry: {err}")
        return self.failed is None
