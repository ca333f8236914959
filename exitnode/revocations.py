"""The exit re-reads its revocation list files when they change.

Every ``interval`` the files' (mtime, size, inode) are compared with the last read; a
changed file is loaded and handed to ``Authorizer.update_revocations`` (a list must be
signed by a listed admin and newer than the one in use). The Authorizer is shared with
every handshake and every session, so a revoked device is refused on its next
connection and on its tunnel's next rekey (the session asks again at every rekey). A
file that cannot be read or is not a valid list is logged and the list in use is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from exitnode.constants import REVOCATION_POLL_S
from l2bridge.errors import AuthenticationFailed, KeyFileError
from l2bridge.identity.keyfiles import load_revocations
from l2bridge.identity.keys import Authorizer

log = logging.getLogger(__name__)

Stamp = tuple[int, int, int] | None


def _stamp(path: Path) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class RevocationWatch:
    """Reloads changed revocation list files into ``authorizer``."""

    def __init__(
        self, authorizer: Authorizer, paths: Sequence[Path], interval: float = REVOCATION_POLL_S
    ) -> None:
        self._authorizer = authorizer
        self._interval = interval
        # The files were loaded at start (exitnode.server.load_authorizer).
        self._stamps: dict[Path, Stamp] = {p: _stamp(p) for p in paths}
        self.reloads = 0
        self.failures = 0

    def check(self) -> int:
        """Reload every file that changed since the last look; the number reloaded."""
        reloaded = 0
        for path, old in self._stamps.items():
            stamp = _stamp(path)
            if stamp == old:
                continue
            self._stamps[path] = stamp
            if stamp is None:
                log.warning("revocation list %s is gone; keeping the list in use", path)
                continue
            try:
                self._authorizer.update_revocations(load_revocations(path))
            except (KeyFileError, AuthenticationFailed) as exc:
                self.failures += 1
                log.warning("revocation list %s not used: %s", path, exc)
                continue
            reloaded += 1
            log.info("revocation list %s reloaded", path)
        self.reloads += reloaded
        return reloaded

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
                return
            self.check()
