"""TAP device adapter: a real Linux TAP (via python-pytun) and an in-memory fake beside it.

Both hand over *tunnel frames* (``hardware.ethernet``: 10-byte offload header + Ethernet
frame), so the layers above never care which mode a TAP is in:

- plain (``IFF_TAP | IFF_NO_PI``, MTU 1500 or jumbo 9000): the adapter adds an all-zero
  offload header on read and strips it on write. A super-frame arriving for a plain TAP is
  cut into the frames it stands for in software (``hardware.gro.segment``); a frame whose
  checksum the sender left to offload is finished in software first.
- offload (``IFF_VNET_HDR`` + ``TUNSETOFFLOAD`` checksum/TSO4/TSO6): the kernel's
  ``virtio_net_hdr`` is the offload header, and TCP (and, on Linux 6.2+, UDP) arrives as
  GSO super-frames of up to 64 KiB, so Python pays per 64 KiB instead of per 1500 bytes.
  With ``coalesce``, runs of plain TCP/UDP frames read are merged into super-frames too
  (``hardware.gro``).

Reads are non-blocking and batched until the device is empty (``EAGAIN``) or a batch limit
is reached; the kernel's own transmit queue (``txqueuelen``) is the bounded queue in front
of us, and it drops when we fall behind. Writes are one syscall per frame (a TAP takes one
frame per ``write``); a frame the kernel refuses is dropped and counted, never raised.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytun

from hardware import ethernet, gro

log = logging.getLogger(__name__)

SYSFS_NET = Path("/sys/class/net")
# linux/if_tun.h
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
# UDP segmentation offload (Linux 6.2+): UDP also arrives as super-frames; older kernels
# refuse the flags, and the TAP runs with the TCP offloads alone.
OFFLOADS_USO = OFFLOADS | TUN_F_USO4 | TUN_F_USO6

PLAIN_MTU = 1500
JUMBO_MTU = 9000
MIN_MTU = 576
MAX_MTU = 65521  # Linux's largest TAP MTU
READ_SIZE = ethernet.OFFLOAD_HEADER_LEN + ethernet.MAX_GSO_FRAME + 64
READ_BATCH_FRAMES = 64
READ_BATCH_BYTES = 512 * 1024


class TapError(Exception):
    """A TAP device could not be opened or configured (local error)."""


@dataclass(frozen=True, slots=True)
class TapConfig:
    name: str
    mtu: int = PLAIN_MTU
    offload: bool = False
    mac: bytes | None = None  # None: the kernel's random one (a new one every open)
    coalesce: bool = False  # software GRO on reads (hardware.gro); offload TAPs only
    # Spread the kernel's work on the frames the node writes over every CPU it may run on
    # (Receive Packet Steering: ``spread_receive``).
    rps: bool = False

    def __post_init__(self) -> None:
        if not 0 < len(self.name) < 16:
            raise TapError(f"tap name {self.name!r}: 1-15 characters")
        if self.mac is not None and (len(self.mac) != 6 or self.mac[0] & 1):
            raise TapError("tap mac: 6 bytes, unicast")
        if not MIN_MTU <= self.mtu <= MAX_MTU:
            raise TapError(f"tap mtu {self.mtu}: must be {MIN_MTU}-{MAX_MTU}")


@dataclass(slots=True)
class TapStats:
    frames_read: int = 0
    bytes_read: int = 0
    coalesced: int = 0  # frames read that were merged into another (software GRO)
    segmented: int = 0  # super-frames cut up here for a device that cannot take them
    frames_written: int = 0
    bytes_written: int = 0
    drops: Counter[str] = field(default_factory=Counter)


class FrameDevice:
    """Batched, non-blocking frame I/O over one file descriptor (a TAP or a fake's socket).

    ``read_batch`` returns tunnel frames; ``write_batch`` takes tunnel frames. Not
    thread-safe per direction, but one reader thread and one writer thread may share it.
    """

    def __init__(self, fd: int, name: str, mtu: int, offload: bool, coalesce: bool = False) -> None:
        self._fd = fd
        self.name = name
        self.mtu = mtu
        self.offload = offload
        # Super-frames are only for a peer that takes them: one that runs with offloads too.
        self.coalesce = coalesce and offload
        self._merger = gro.Coalescer()
        self.stats = TapStats()
        self._closed = False
        # Plain mode reads into one reused buffer behind an all-zero offload header (the
        # read never touches it), and copies header + frame out in one step.
        self._buf = bytearray(READ_SIZE)
        self._whole = memoryview(self._buf)
        self._view = self._whole[ethernet.OFFLOAD_HEADER_LEN :]
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self._fd

    def read_batch(
        self, max_frames: int = READ_BATCH_FRAMES, max_bytes: int = READ_BATCH_BYTES
    ) -> list[bytes]:
        """Read frames until the device is empty or a limit is reached (maybe none).

        The batch never holds more than ``max_bytes``: reading stops while one more frame of
        the largest size might not fit (so at least ``READ_SIZE`` is needed for one frame).
        """
        if self.coalesce:
            return self._read_merged(max_frames, max_bytes)
        frames: list[bytes] = []
        total = 0
        fd = self._fd
        while len(frames) < max_frames and total + READ_SIZE <= max_bytes:
            try:
                if self.offload:
                    frame = os.read(fd, READ_SIZE)
                    if not frame:
                        break
                else:
                    n = os.readv(fd, [self._view])
                    if n == 0:
                        break
                    frame = self._whole[: ethernet.OFFLOAD_HEADER_LEN + n].tobytes()
            except BlockingIOError:
                break
            frames.append(frame)
            total += len(frame)
        self.stats.frames_read += len(frames)
        self.stats.bytes_read += total
        return frames

    def _read_merged(self, max_frames: int, max_bytes: int) -> list[bytes]:
        """``read_batch`` of an offload TAP with software GRO: each frame is merged as it
        is read (``hardware.gro``); the limits count frames read, not frames returned."""
        merger = self._merger
        count = total = 0
        fd = self._fd
        while count < max_frames and total + READ_SIZE <= max_bytes:
            try:
                frame = os.read(fd, READ_SIZE)
            except BlockingIOError:
                break
            if not frame:
                break
            merger.push(frame)
            count += 1
            total += len(frame)
        frames = merger.take()
        self.stats.frames_read += count
        self.stats.bytes_read += total
        self.stats.coalesced += count - len(frames)
        return frames

    def write_batch(self, frames: Iterable[bytes | bytearray | memoryview]) -> int:
        """Write frames; returns how many went in. Refused frames are dropped and counted."""
        written = 0
        fd = self._fd
        for frame in frames:
            if len(frame) < ethernet.OFFLOAD_HEADER_LEN + ethernet.ETH_HEADER_LEN:
                self.stats.drops["short"] += 1
                continue
            if not self.offload and frame[1] & ~ethernet.GSO_ECN != ethernet.GSO_NONE:
                written += self._write_cut(frame)
                continue
            data: bytes | bytearray | memoryview = frame
            if not self.offload:
                prepared = self._for_plain(frame)
                if prepared is None:
                    continue
                data = prepared
            try:
                os.write(fd, data)
            except BlockingIOError:
                self.stats.drops["device_busy"] += 1
                continue
            except OSError:
                # EINVAL for an offload header the kernel rejects (a kernel before 6.2 has
                # no UDP segmentation: cut those here), EIO when the link is down.
                if self.offload and frame[1] == ethernet.GSO_UDP_L4:
                    written += self._write_cut(frame)
                    continue
                self.stats.drops["rejected"] += 1
                continue
            written += 1
            self.stats.bytes_written += len(data)
        self.stats.frames_written += written
        return written

    def _write_cut(self, frame: bytes | bytearray | memoryview) -> int:
        """Write a super-frame the device cannot take as the plain frames it stands for."""
        try:
            pieces = gro.segment(frame)
        except ethernet.FrameError:
            self.stats.drops["bad_offload"] += 1
            return 0
        self.stats.segmented += 1
        skip = 0 if self.offload else ethernet.OFFLOAD_HEADER_LEN
        written = 0
        for piece in pieces:
            try:
                os.write(self._fd, memoryview(piece)[skip:])
            except BlockingIOError:
                self.stats.drops["device_busy"] += 1
                continue
            except OSError:
                self.stats.drops["rejected"] += 1
                continue
            written += 1
            self.stats.bytes_written += len(piece) - skip
        return written

    def _for_plain(self, frame: bytes | bytearray | memoryview) -> memoryview | None:
        flags = frame[0]
        if flags & ethernet.NEEDS_CSUM:
            copy = bytearray(frame)
            try:
                ethernet.finish_checksum(copy)
            except struct.error:
                self.stats.drops["bad_offload"] += 1
                return None
            return memoryview(copy)[ethernet.OFFLOAD_HEADER_LEN :]
        return memoryview(frame)[ethernet.OFFLOAD_HEADER_LEN :]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                os.close(self._fd)


class LinuxTap(FrameDevice):
    """A real TAP device. Needs ``CAP_NET_ADMIN`` in the current network namespace."""

    def __init__(self, config: TapConfig) -> None:
        flags = pytun.IFF_TAP | pytun.IFF_NO_PI
        if config.offload:
            flags |= pytun.IFF_VNET_HDR
        try:
            dev = pytun.TunTapDevice(name=config.name, flags=flags)
        except (pytun.Error, OSError) as exc:
            raise TapError(f"cannot open tap {config.name}: {exc}") from exc
        # Keep our own duplicate of the fd so closing is ours; pytun closes its copy.
        fd = os.dup(dev.fileno())
        try:
            if config.offload:
                try:
                    fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS_USO)
                except OSError:
                    fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS)
            dev.mtu = config.mtu
            if config.mac is not None:
                dev.hwaddr = config.mac
            dev.up()
        except (pytun.Error, OSError) as exc:
            os.close(fd)
            dev.close()
            raise TapError(f"cannot configure tap {config.name}: {exc}") from exc
        self._dev = dev
        super().__init__(fd, dev.name, config.mtu, config.offload, config.coalesce)
        if config.rps:
            try:
                mask = spread_receive(dev.name)
            except OSError as exc:
                self.close()
                raise TapError(
                    f"tap {config.name}: network.rps: cannot set its receive CPUs: "
                    f"{exc.strerror or exc}"
                ) from None
            if mask is None:
                log.warning("tap %s: network.rps: this node may use one CPU only; nothing to "
                            "spread", dev.name)  # fmt: skip
            else:
                log.info("tap %s: receive work spread over CPUs %s (network.rps)", dev.name, mask)
        # A TAP is a bridge port, not a host: no IPv6 link-local address, router
        # solicitations or MLD reports of its own leaking into the bridged LAN.
        with contextlib.suppress(OSError):
            Path(f"/proc/sys/net/ipv6/conf/{dev.name}/disable_ipv6").write_text("1\n")

    @property
    def hwaddr(self) -> bytes:
        return bytes(self._dev.hwaddr)

    def close(self) -> None:
        super().close()
        with contextlib.suppress(Exception):
            self._dev.close()


def cpu_mask(cpus: Iterable[int]) -> str:
    """``cpus`` as a Linux CPU mask (``rps_cpus``' format): hex in 32-bit groups, the
    highest first, separated by commas."""
    bits = 0
    for cpu in cpus:
        if cpu < 0:
            raise ValueError(f"cpu {cpu}: not a CPU number")
        bits |= 1 << cpu
    groups = [f"{bits & 0xFFFFFFFF:08x}"]
    while bits > 0xFFFFFFFF:
        bits >>= 32
        groups.append(f"{bits & 0xFFFFFFFF:08x}")
    return ",".join(reversed(groups))


def spread_receive(
    name: str, cpus: Iterable[int] | None = None, sysfs: Path = SYSFS_NET
) -> str | None:
    """Receive Packet Steering for the TAP ``name``: every frame the node writes to a TAP
    is "received" by the kernel, which then runs the bridge, netfilter, forwarding and the
    delivery to the LAN's sockets, by default in the writer's own system call, on the core
    the node's event loop needs. With the TAP's ``rps_cpus`` set to ``cpus`` (by default
    every CPU this process may run on), each flow's share of that work goes to a CPU chosen
    by its hash, so it runs beside the node's loop instead of in it. Returns the mask
    written; None (nothing written) where fewer than two CPUs are allowed. Raises OSError
    where the kernel has no RPS or the device is not there."""
    allowed = sorted(os.sched_getaffinity(0) if cpus is None else set(cpus))
    if len(allowed) < 2:
        return None
    mask = cpu_mask(allowed)
    (sysfs / name / "queues" / "rx-0" / "rps_cpus").write_text(mask + "\n")
    return mask


def open_tap(config: TapConfig) -> LinuxTap:
    return LinuxTap(config)


class FakeTap(FrameDevice):
    """An in-memory TAP: the "kernel side" is the other end of a SEQPACKET socket pair.

    The device end goes through exactly the same batching code as a real TAP. Tests play
    the kernel: ``inject`` hands a frame to the adapter as the kernel would (raw Ethernet in
    plain mode, offload header + frame in offload mode) and ``delivered`` returns what the
    adapter wrote, in the same form.
    """

    def __init__(
        self,
        name: str = "fake0",
        mtu: int = PLAIN_MTU,
        offload: bool = False,
        mac: bytes = bytes.fromhex("020000000001"),
        coalesce: bool = False,
    ) -> None:
        self.hwaddr = mac
        device, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for sock in (device, kernel):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        self._kernel = kernel
        self._kernel.setblocking(False)
        super().__init__(device.detach(), name, mtu, offload, coalesce)

    def inject(self, frame: bytes) -> None:
        self._kernel.send(frame)

    def delivered(self) -> list[bytes]:
        out: list[bytes] = []
        while True:
            try:
                out.append(self._kernel.recv(READ_SIZE))
            except BlockingIOError:
                return out

    def close(self) -> None:
        super().close()
        self._kernel.close()
