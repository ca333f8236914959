"""The exit keeps its admission decisions current for tunnels that are already running.

``RevocationWatch`` re-reads the revocation list files and the allow-list file when they
change: every ``interval`` their (mtime, size, inode) are compared with the last read, a
changed revocation list is handed to ``Authorizer.update_revocations`` (it must be signed
by a listed admin and newer than the one in use) and a changed allow-list replaces the one
in use (``Authorizer.update_allow_list``). A file that is gone, unreadable or invalid is
logged and the list in use is kept (a half-written file must not let anyone in).

``LiveSessions`` holds every admitted tunnel. After any reload, and every
``reauth_interval`` besides (continuous authentication: certificates expire, and a list
may have been replaced by an equal-stamped file), each session asks the Authorizer again
(``Session.reauthorize``); a refused one has its keys wiped at once, so not one more
frame passes in either direction, and its link is closed. With the default poll of half a
second a revocation or an allow-list removal ends the device's tunnels within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from exitnode.constants import REAUTH_INTERVAL_S, REVOCATION_POLL_S
from l2bridge.constants import CLOSE_REVOKED as RECORD_REVOKED
from l2bridge.errors import AuthenticationFailed, KeyFileError, NotAuthorized, StateError
from l2bridge.identity.keyfiles import load_allow_list, load_revocations
from l2bridge.identity.keys import Authorization, Authorizer
from l2bridge.node.link import is_revoked

log = logging.getLogger(__name__)

Stamp = tuple[int, int, int] | None


def _stamp(path: Path) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class RevocationWatch:
    """Reloads changed revocation list files and the allow-list file into ``authorizer``."""

    def __init__(
        self,
        authorizer: Authorizer,
        paths: Sequence[Path],
        interval: float = REVOCATION_POLL_S,
        *,
        allow_list: Path | None = None,
    ) -> None:
        self._authorizer = authorizer
        self._interval = interval
        self._allow_path = allow_list
        # The files were loaded at start (exitnode.server.load_authorizer).
        watched = [*paths, *([allow_list] if allow_list is not None else [])]
        self._stamps: dict[Path, Stamp] = {p: _stamp(p) for p in watched}
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
            what = "allow-list" if path == self._allow_path else "revocation list"
            if stamp is None:
                log.warning("%s %s is gone; keeping the list in use", what, path)
                continue
            try:
                if path == self._allow_path:
                    self._authorizer.update_allow_list(load_allow_list(path))
                else:
                    self._authorizer.update_revocations(load_revocations(path))
            except (KeyFileError, AuthenticationFailed) as exc:
                self.failures += 1
                log.warning("%s %s not used: %s", what, path, exc)
                continue
            reloaded += 1
            log.info("%s %s reloaded", what, path)
        self.reloads += reloaded
        return reloaded

    async def run(
        self,
        stop: asyncio.Event,
        sessions: LiveSessions | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """Poll until ``stop``; after a reload, and every ``sessions.interval``, re-check
        ``sessions`` at ``clock()`` (the exit's clock, which certificates are judged by)."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
                return
            reloaded = self.check()
            if sessions is None or clock is None:
                continue
            if reloaded or loop.time() - last >= sessions.interval:
                last = loop.time()
                sessions.recheck(clock())


class AdmittedSession(Protocol):
    def reauthorize(self, now: float) -> Authorization: ...

    def close(self, parting: int | None = None) -> None: ...


class AdmittedLink(Protocol):
    """What ``LiveSessions`` needs of a tunnel (``l2bridge.node.link.Link``)."""

    @property
    def session(self) -> AdmittedSession: ...

    async def close(self, *, revoked: bool = False) -> None: ...


class LiveSessions:
    """Every admitted tunnel of the exit, re-authorised on demand."""

    def __init__(self, interval: float = REAUTH_INTERVAL_S) -> None:
        self.interval = interval
        self._links: dict[AdmittedLink, str] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.rechecks = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self._links)

    def add(self, link: AdmittedLink, name: str, now: float) -> bool:
        """Track ``link``; it is re-checked once at once (a list may have changed since its
        handshake). False when that check refused it (the link is being closed)."""
        self._links[link] = name
        return self._check(link, name, now)

    def discard(self, link: AdmittedLink) -> None:
        self._links.pop(link, None)

    def recheck(self, now: float) -> int:
        """Ask the Authorizer about every tracked session; the number refused and closed."""
        self.rechecks += 1
        return sum(not self._check(link, name, now) for link, name in list(self._links.items()))

    def _check(self, link: AdmittedLink, name: str, now: float) -> bool:
        try:
            link.session.reauthorize(now)
        except StateError:
            self._links.pop(link, None)  # the session ended already: its link is ending
            return True
        except NotAuthorized as exc:
            log.warning("device %s no longer admitted (%s): closing its tunnel", name, exc.detail)
            self._links.pop(link, None)
            self.refused += 1
            # Keys wiped now: nothing more is sealed or opened for this device, whatever
            # the link still has queued. The close then ends the connection. A revoked
            # device is told so in one CLOSE record sealed first (and by the close code;
            # it believes the record only) and stops retrying; any other refusal (taken
            # off the allow-list, expired) is a bare close.
            revoked = is_revoked(exc)
            link.session.close(parting=RECORD_REVOKED if revoked else None)
            task = asyncio.ensure_future(link.close(revoked=revoked))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            return False
        return True
