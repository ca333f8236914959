"""Glue from the ``atomic_time`` configuration to a running clock.

Accepts the config engineer's ``l2bridge.node.config.AtomicTime`` (``enabled``, ``sources`` of
``TimeSource(kind, device)``, ``consensus_quorum``) or a plain mapping in the YAML's shape,
which may also carry what a real installation needs beyond the examples' short form::

    atomic_time:
      enabled: true
      consensus_quorum: 2
      fallback: holdover          # holdover | system | refuse
      chrony_socket: /run/chrony.shm.sock
      sources:
        - rubidium: /dev/ttyUSB0  # SCPI dialect; 'prs10' for the SRS PRS10, 'cesium' is SCPI
        - gpsdo: /dev/ttyUSB1
        - {kind: gpsdo, device: /dev/ttyS0, baudrate: 9600, pps: /dev/pps0, delay: 0.0}

Kinds: ``rubidium`` and ``cesium`` speak :mod:`timing.scpi`, ``prs10`` :mod:`timing.prs10`,
``gpsdo`` NMEA, ``system`` is the host clock. Serial lines default to 115200 8N1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hardware.pps import DcdPps, KernelPps, PpsReader
from hardware.serial_port import PySerialPort, SerialSettings
from timing.chrony import ChronyFeed, ChronyFeeder
from timing.clock import DisciplinedClock
from timing.constants import (
    DEFAULT_BAUDRATE,
    DEFAULT_FALLBACK,
    DEFAULT_QUORUM,
    FALLBACK_CHOICES,
    NMEA_DEFAULT_DELAY,
    NMEA_DEFAULT_UNCERTAINTY,
)
from timing.errors import ConfigError
from timing.sources import GpsdoSource, Prs10Source, ScpiSource, Source, SystemClockSource

KINDS = ("rubidium", "cesium", "prs10", "gpsdo", "system")
_SOURCE_KEYS = (
    "kind",
    "device",
    "baudrate",
    "bytesize",
    "parity",
    "stopbits",
    "pps",
    "delay",
    "uncertainty",
)
_SECTION_KEYS = ("enabled", "sources", "consensus_quorum", "fallback", "chrony_socket")
# Settings only some kinds use; given for another kind they are refused, not ignored.
_KINDS_USING = {
    "pps": ("gpsdo", "prs10"),
    "delay": ("gpsdo",),
    "uncertainty": ("gpsdo",),
}


@dataclass(frozen=True, slots=True)
class SourceSpec:
    kind: str
    device: str | None
    baudrate: int = DEFAULT_BAUDRATE
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1
    pps: str | None = None  # /dev/ppsN, or "dcd" for the serial line's DCD
    delay: float = NMEA_DEFAULT_DELAY
    uncertainty: float = NMEA_DEFAULT_UNCERTAINTY

    @property
    def gives_time(self) -> bool:
        """Whether it can be a consensus candidate (a PRS10 needs its 1 PPS captured)."""
        return self.kind != "prs10" or self.pps is not None


@dataclass(frozen=True, slots=True)
class TimeSettings:
    enabled: bool
    sources: tuple[SourceSpec, ...]
    quorum: int = DEFAULT_QUORUM
    fallback: str = DEFAULT_FALLBACK
    chrony_socket: str | None = None

    def warnings(self) -> list[str]:
        n = sum(1 for s in self.sources if s.gives_time)
        out = []
        if self.enabled and n < self.quorum:
            out.append(
                f"consensus_quorum {self.quorum} exceeds the {n} time-giving source(s): the "
                f"quorum can never be met and the clock will run on its fallback "
                f"({self.fallback})"
            )
        return out


def _get(obj: object, key: str, default: object = None) -> object:
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _source(item: object, where: str) -> SourceSpec:
    if item == "system":
        return SourceSpec("system", None)
    if not isinstance(item, Mapping):
        kind, device = _get(item, "kind"), _get(item, "device")
        extra: Mapping[str, object] = {}
    elif "kind" in item:
        kind, device, extra = item.get("kind"), item.get("device"), item
    elif len(item) == 1:
        ((kind, device),) = item.items()
        extra = {}
    else:
        raise ConfigError(where, "one 'kind: device' pair or a mapping with 'kind'")
    if kind not in KINDS:
        raise ConfigError(where, f"kind must be one of {', '.join(KINDS)}")
    if kind == "system":
        return SourceSpec("system", None)
    if not isinstance(device, str) or not device.startswith("/"):
        raise ConfigError(where, "a device path like /dev/ttyUSB0")
    unknown = sorted(str(k) for k in extra if k not in _SOURCE_KEYS)
    if unknown:
        raise ConfigError(
            where, f"unknown setting {unknown[0]!r} (known: {', '.join(_SOURCE_KEYS)})"
        )
    for key, kinds in _KINDS_USING.items():
        if key in extra and kind not in kinds:
            raise ConfigError(
                where, f"{key!r} is used only by {' and '.join(kinds)} sources, not {kind}"
            )
    try:
        spec = SourceSpec(
            str(kind),
            device,
            baudrate=int(str(extra.get("baudrate", DEFAULT_BAUDRATE))),
            bytesize=int(str(extra.get("bytesize", 8))),
            parity=str(extra.get("parity", "N")),
            stopbits=float(str(extra.get("stopbits", 1))),
            pps=None if extra.get("pps") is None else str(extra.get("pps")),
            delay=float(str(extra.get("delay", NMEA_DEFAULT_DELAY))),
            uncertainty=float(str(extra.get("uncertainty", NMEA_DEFAULT_UNCERTAINTY))),
        )
        SerialSettings(device, spec.baudrate, spec.bytesize, spec.parity, spec.stopbits)
    except ValueError as exc:
        raise ConfigError(where, str(exc)) from None
    return spec


def settings_from(section: object) -> TimeSettings:
    """Build settings from an AtomicTime dataclass or a mapping; ConfigError names the field."""
    if isinstance(section, TimeSettings):
        return section
    if isinstance(section, Mapping):
        unknown = sorted(str(k) for k in section if k not in _SECTION_KEYS)
        if unknown:
            raise ConfigError(unknown[0], f"unknown setting (known: {', '.join(_SECTION_KEYS)})")
    enabled = _get(section, "enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError("enabled", "true or false")
    raw_sources = _get(section, "sources", ()) or ()
    if not isinstance(raw_sources, list | tuple):
        raise ConfigError("sources", "a list of sources")
    sources = tuple(_source(s, f"sources[{i}]") for i, s in enumerate(raw_sources))
    quorum = _get(section, "consensus_quorum", DEFAULT_QUORUM)
    if not isinstance(quorum, int) or isinstance(quorum, bool) or not 1 <= quorum <= 16:
        raise ConfigError("consensus_quorum", "an integer from 1 to 16")
    fallback = _get(section, "fallback", DEFAULT_FALLBACK)
    if fallback not in FALLBACK_CHOICES:
        raise ConfigError("fallback", f"one of {', '.join(FALLBACK_CHOICES)}")
    chrony = _get(section, "chrony_socket")
    if chrony is not None and not isinstance(chrony, str):
        raise ConfigError("chrony_socket", "a socket path")
    return TimeSettings(enabled, sources, quorum, str(fallback), chrony)


def _pps(spec: SourceSpec) -> PpsReader | None:
    if spec.pps is None:
        return None
    if spec.pps == "dcd":
        assert spec.device is not None
        return DcdPps.open(spec.device)
    return KernelPps(spec.pps)


def build(
    settings: TimeSettings, clock: DisciplinedClock | None = None
) -> tuple[DisciplinedClock, list[Source]]:
    """A clock and its (not yet started) sources. Names are ``kind:device``."""
    clock = clock or DisciplinedClock(settings.quorum, settings.fallback)
    sources: list[Source] = []
    for spec in settings.sources:
        name = spec.kind if spec.device is None else f"{spec.kind}:{spec.device}"
        if spec.kind == "system":
            sources.append(SystemClockSource(name, clock))
            continue
        assert spec.device is not None
        port = PySerialPort(
            SerialSettings(spec.device, spec.baudrate, spec.bytesize, spec.parity, spec.stopbits)
        )
        if spec.kind == "gpsdo":
            sources.append(
                GpsdoSource(
                    name,
                    clock,
                    port,
                    delay=spec.delay,
                    uncertainty=spec.uncertainty,
                    pps=_pps(spec),
                )
            )
        elif spec.kind == "prs10":
            sources.append(Prs10Source(name, clock, port, pps=_pps(spec)))
        else:
            sources.append(ScpiSource(name, clock, port))
    return clock, sources


def feeders(settings: TimeSettings, clock: DisciplinedClock) -> list[ChronyFeeder]:
    """What the running node feeds from its clock: chronyd's SOCK refclock when configured.

    Started and stopped beside the sources by the node (not by ``shadowmesh clock status``,
    which only looks).
    """
    if not settings.enabled or settings.chrony_socket is None:
        return []
    return [ChronyFeeder(ChronyFeed(settings.chrony_socket, clock))]
