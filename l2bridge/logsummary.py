"""Rate-limited log summaries for events that strangers can cause at line rate.

A probe, a failed handshake or a dropped connection is logged at DEBUG one by one; at
INFO only a ``Summary`` line per interval says how many of each kind there were, so a
flood of 1,000 probes a second writes one line a minute rather than megabytes.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

SUMMARY_INTERVAL_S = 60.0


class Summary:
    """Counts events by kind; logs one line with the counts at most every ``interval_s``.

    The line for an interval is written by the first ``note`` after it ends (or by
    ``flush``), so a quiet period costs nothing.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        interval_s: float = SUMMARY_INTERVAL_S,
        level: int = logging.INFO,
        monotonic: Callable[[], float] = time.monotonic,
        total: Counter[str] | None = None,
    ) -> None:
        self._log = logger
        self._what = what
        self._interval = interval_s
        self._level = level
        self._monotonic = monotonic
        self._counts: Counter[str] = Counter()
        self._since = monotonic()
        # Since start, for status pages and metrics; ``total`` lets summaries logged at
        # different levels count into one tally.
        self.total: Counter[str] = Counter() if total is None else total

    def note(self, kind: str) -> None:
        self._counts[kind] += 1
        self.total[kind] += 1
        if self._monotonic() - self._since >= self._interval:
            self.flush()

    def flush(self) -> None:
        """Log the counts gathered so far (nothing when there are none) and start over."""
        now = self._monotonic()
        if self._counts:
            parts = ", ".join(f"{k} {n}" for k, n in sorted(self._counts.items()))
            self._log.log(
                self._level, "%s in the last %.0f s: %s", self._what, now - self._since, parts
            )
            self._counts.clear()
        self._since = now
