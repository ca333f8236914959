"""Errors raised by the timing package.

The tree::

    TimingError                  root of everything raised here
    ├── ParseError               a line from a device was rejected (``reason`` says why)
    │   ├── NmeaError            NMEA 0183 sentence
    │   ├── ScpiError            SCPI-style rubidium/cesium reply or command
    │   └── Prs10Error           SRS PRS10 two-letter dialect
    ├── SourceError              a time source could not be opened or read (local)
    ├── ConfigError              the ``atomic_time`` configuration is invalid (``field`` names it)
    └── NoQuorumError            too few healthy sources and the fallback is ``refuse``

Parse errors carry a short machine-readable ``reason`` (one of the ``REASON_*``
constants in :mod:`timing.constants`) so counters can be kept per reason; their
text never includes more than a bounded prefix of the offending line.
"""

from __future__ import annotations


class TimingError(Exception):
    """Root of the timing package's exceptions."""


class ParseError(TimingError):
    """A device line was rejected; ``reason`` is a short stable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail[:80]
        super().__init__(f"{reason}: {self.detail}" if detail else reason)


class NmeaError(ParseError):
    """An NMEA 0183 sentence was rejected."""


class ScpiError(ParseError):
    """An SCPI-style line was rejected."""


class Prs10Error(ParseError):
    """A PRS10 line was rejected."""


class SourceError(TimingError):
    """A time source could not be opened or read."""


class ConfigError(TimingError):
    """The atomic_time configuration is invalid; ``field`` names the offending key."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"atomic_time.{field}: {reason}")


class NoQuorumError(TimingError):
    """Fewer healthy, agreeing sources than the quorum and the fallback is ``refuse``."""
