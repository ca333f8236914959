"""The IMA harness: plays firmware, boot loader and kernel IMA for an exit on swtpm.

swtpm has no kernel behind it, so nobody measures what the exit runs. This separate process
does what the real layers below the exit do, in their formats and order:

1. **Boot** (once per TPM power cycle): writes a TCG crypto-agile event log (CRTM version,
   separators, the kernel command line on PCR 8, the kernel on PCR 9) and extends each
   event into PCRs 0-9 of the swtpm, as firmware and boot loader would.
2. **IMA** (``ima_policy=tcb``-like): the first list entry is ``boot_aggregate`` (SHA-256 of
   PCRs 0-9). Then it launches the exit as its child in a private mount namespace where
   every watched directory is a bind mount marked with fanotify permission events
   (FAN_OPEN_PERM and FAN_OPEN_EXEC_PERM). The kernel holds each open of a file there
   until the harness answers; the harness hashes the file through the descriptor fanotify
   gives it, appends an ``ima-ng`` entry to the binary list, extends PCR 10, and only then
   allows the open. Like IMA it measures a file once per inode and again after it changed
   (mtime, ctime or size differ).

What differs from the product path (a kernel booted with ``ima_policy=tcb
ima_template=ima-ng ima_hash=sha256`` and real firmware):

* only the watched directories are measured (IMA's tcb policy measures every file root
  reads, every executable and every mmap'ed library on the machine);
* files are measured when opened; IMA also measures at mmap(PROT_EXEC) and would record a
  violation (zero digest) for a file opened for write while measured - the harness does
  not produce violations;
* the harness runs as root beside the exit and could be killed by the same root: it stands
  for a kernel, it is not one. The swtpm itself is real: PCRs 0-10 cannot be reset by
  software, and the quote is signed by its AK.

Usage: ``python -m lab.imaharness --tcti T --out DIR --watch DIR... -- exit command...``
writes ``DIR/binary_bios_measurements`` and ``DIR/binary_runtime_measurements`` (give
those to the exit as ``tpm.event_log`` / ``tpm.ima_list``) and exits with the child's code.
``--boot-only`` only plays the boot (at "power on", before any exit runs);
``--install SRC=DST`` shows the directory SRC at DST inside the exit's mount namespace
(an exit's own installed copy at the release's standard path) and watches it.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import logging
import os
import signal
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from attestation import constants as ac
from attestation import eventlog, ima
from attestation.errors import AttestationError
from attestation.tpm import Tpm

log = logging.getLogger("imaharness")

EVENT_LOG = "binary_bios_measurements"
IMA_LIST = "binary_runtime_measurements"
LAB_CMDLINE = "root=/dev/vda1 ro " + " ".join(ac.DEFAULT_CMDLINE_REQUIRES)
FIRMWARE = b"ShadowMesh lab firmware 1.0"

# <linux/fanotify.h>, <linux/sched.h>, <sys/mount.h>
FAN_CLOEXEC = 0x01
FAN_CLASS_CONTENT = 0x04
FAN_MARK_ADD = 0x01
FAN_MARK_MOUNT = 0x10
FAN_OPEN_PERM = 0x00010000
FAN_OPEN_EXEC_PERM = 0x00040000
FAN_ALLOW = 0x01
FAN_DENY = 0x02
FAN_NOFD = -1
AT_FDCWD = -100
CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
_METADATA = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_RESPONSE = struct.Struct("=iI")
READ_SIZE = 64 * 1024
CHUNK = 1 << 20


class HarnessError(Exception):
    """The harness cannot play its part (no fanotify, TPM state not ours...)."""


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                ctypes.c_char_p]  # fmt: skip
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]  # fmt: skip


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise HarnessError(f"{what}: {os.strerror(err)}")
    return result


def boot_events(cmdline: str) -> list[eventlog.Event]:
    """What firmware and boot loader measure: CRTM, separators, command line, kernel."""
    kernel = Path("/proc/version").read_bytes()  # stands for the kernel image
    events = [eventlog.measured(0, eventlog.EV_S_CRTM_VERSION, FIRMWARE)]
    events += [eventlog.measured(i, eventlog.EV_SEPARATOR, b"\0\0\0\0") for i in range(8)]
    events.append(eventlog.cmdline_event(cmdline))
    events.append(eventlog.measured(9, eventlog.EV_IPL, b"/boot/vmlinuz", kernel))
    return events


@dataclass(frozen=True, slots=True)
class _Seen:
    mtime_ns: int
    ctime_ns: int
    size: int


class Kernel:
    """The measuring side: boot log, IMA list and PCR extends on one TPM."""

    def __init__(self, tpm: Tpm, out: Path) -> None:
        self.tpm = tpm
        self.log_path = out / EVENT_LOG
        self.list_path = out / IMA_LIST
        self._seen: dict[tuple[int, int], _Seen] = {}
        self._lock = threading.Lock()
        self.measured = 0

    def boot(self, cmdline: str) -> None:
        """Boot on a fresh TPM, or resume on one this harness booted before."""
        values = self.tpm.read_pcrs(ac.QUOTE_PCRS)
        if all(v == bytes(ac.SHA256_SIZE) for v in values):
            events = boot_events(cmdline)
            self.log_path.write_bytes(eventlog.encode(events))
            for e in events:
                self.tpm.extend_pcr(e.pcr, dict(e.digests)[ac.TPM_ALG_SHA256])
            boot = self.tpm.read_pcrs(range(ac.BOOT_AGGREGATE_PCRS))
            self.list_path.write_bytes(b"")
            self._append(ac.BOOT_AGGREGATE_PATH, ima.boot_aggregate(boot))
            return
        try:
            replayed = eventlog.replay(eventlog.parse(self.log_path.read_bytes()))
            state = ima.replay(self.list_path.read_bytes(), 0, ima.INITIAL_STATE).state
        except (OSError, AttestationError) as exc:
            raise HarnessError(f"TPM was booted by someone else: {exc}") from None
        boot_ok = all(replayed.get(i, bytes(32)) == values[i] for i in range(10))
        if not boot_ok or state.pcr10 != values[ac.IMA_PCR]:
            raise HarnessError("TPM PCRs do not match our logs: power-cycle the swtpm")

    def _append(self, path: str, digest: bytes) -> None:
        raw = ima.encode_entry(path, digest)
        (entry,) = ima.parse_list(raw)
        # The kernel's order: add to the list, then extend PCR 10.
        with self.list_path.open("ab") as f:
            f.write(raw)
        self.tpm.extend_pcr(ac.IMA_PCR, entry.pcr_extend_value())
        self.measured += 1

    def measure_fd(self, fd: int) -> None:
        """Measure the file behind ``fd`` unless it is unchanged since last measured."""
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return
        key = (st.st_dev, st.st_ino)
        seen = _Seen(st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        with self._lock:
            if self._seen.get(key) == seen:
                return
            h = hashlib.sha256()
            offset = 0
            while chunk := os.pread(fd, CHUNK, offset):
                h.update(chunk)
                offset += len(chunk)
            path = os.readlink(f"/proc/self/fd/{fd}")
            self._append(path, h.digest())
            self._seen[key] = seen


class Watcher:
    """fanotify permission events on bind mounts of the watched directories."""

    def __init__(
        self, kernel: Kernel, watch: Sequence[Path], install: Sequence[tuple[Path, Path]] = ()
    ) -> None:
        self.kernel = kernel
        self.install = [(src.resolve(), dst) for src, dst in install]
        self.watch = [w.resolve() for w in watch] + [dst for _, dst in install]
        self.fd = -1
        self.own_pid = os.getpid()
        self._thread: threading.Thread | None = None

    def isolate(self) -> None:
        """A private mount namespace where each watched directory is its own mount."""
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        for src, dst in self.install:
            dst.mkdir(parents=True, exist_ok=True)
            raw_src, raw_dst = str(src).encode(), str(dst).encode()
            _check(_libc.mount(raw_src, raw_dst, None, MS_BIND | MS_REC, None), f"install {dst}")
        installed = {dst for _, dst in self.install}
        for path in self.watch:
            if path in installed:
                continue
            raw = str(path).encode()
            _check(_libc.mount(raw, raw, None, MS_BIND | MS_REC, None), f"bind {path}")

    def start(self) -> None:
        flags = os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC
        self.fd = _check(_libc.fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC, flags),
                         "fanotify_init (needs CAP_SYS_ADMIN)")  # fmt: skip
        mask = FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM
        for path in self.watch:
            _check(_libc.fanotify_mark(self.fd, FAN_MARK_ADD | FAN_MARK_MOUNT, mask, AT_FDCWD,
                                       str(path).encode()), f"fanotify_mark {path}")  # fmt: skip
        self._thread = threading.Thread(target=self._loop, name="fanotify", daemon=True)
        self._thread.start()

    def _answer(self, fd: int, pid: int) -> None:
        verdict = FAN_ALLOW
        if pid != self.own_pid:
            try:
                self.kernel.measure_fd(fd)
            except Exception as exc:
                log.error("could not measure an open by pid %d: %s; denied", pid, exc)
                verdict = FAN_DENY  # an unmeasured file must not run
        os.write(self.fd, _RESPONSE.pack(fd, verdict))

    def _loop(self) -> None:
        while True:
            try:
                buf = os.read(self.fd, READ_SIZE)
            except OSError:
                return  # closed: the kernel allows whatever is still pending
            pos = 0
            while pos + _METADATA.size <= len(buf):
                length, _v, _r, _m, mask, fd, pid = _METADATA.unpack_from(buf, pos)
                if length < _METADATA.size:
                    return
                pos += length
                if fd == FAN_NOFD:
                    continue
                try:
                    if mask & (FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM):
                        self._answer(fd, pid)
                finally:
                    os.close(fd)

    def stop(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def run(
    tcti: str,
    out: Path,
    watch: Sequence[Path],
    cmdline: str,
    command: list[str],
    *,
    install: Sequence[tuple[Path, Path]] = (),
) -> int:
    out.mkdir(parents=True, exist_ok=True)
    tpm = Tpm(tcti)
    try:
        kernel = Kernel(tpm, out)
        kernel.boot(cmdline)
        if not command:
            return 0  # --boot-only
        watcher = Watcher(kernel, watch, install)
        watcher.isolate()
        watcher.start()
        child = subprocess.Popen(command)

        def forward(signum: int, _frame: object) -> None:
            child.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        code = child.wait()
        watcher.stop()
        log.info("exit finished (%d); %d files measured", code, kernel.measured)
        return code
    finally:
        tpm.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.imaharness",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tcti", required=True)
    parser.add_argument("--out", type=Path, required=True, help="where the logs are written")
    parser.add_argument("--watch", type=Path, action="append", default=[],
                        help="directory (or file) measured when opened; repeat")  # fmt: skip
    parser.add_argument("--install", action="append", default=[], metavar="SRC=DST",
                        help="show SRC at DST for the exit, measured; repeat")  # fmt: skip
    parser.add_argument("--boot-only", action="store_true", help="play the boot and stop")
    parser.add_argument("--cmdline", default=LAB_CMDLINE, help="the kernel command line booted")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the exit's command")
    ns = parser.parse_args(argv)
    command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    if not command and not ns.boot_only:
        parser.error("give the exit's command after -- (or --boot-only)")
    if ns.boot_only:
        command = []
    install = []
    for item in ns.install:
        src, sep, dst = item.partition("=")
        if not sep or not dst.startswith("/"):
            parser.error(f"--install {item}: expected SRC=/absolute/DST")
        install.append((Path(src), Path(dst)))
    logging.basicConfig(level=logging.INFO, format="imaharness: %(message)s")
    try:
        return run(ns.tcti, ns.out, ns.watch, ns.cmdline, command, install=install)
    except (HarnessError, AttestationError) as exc:
        print(f"imaharness: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
