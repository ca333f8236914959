"""TPM adapters: the swtpm process used by tests and demos, and the real device's TCTI.

Nothing above this module starts swtpm or names a TPM device; they get a TCTI string.
``Swtpm`` manufactures a fresh TPM 2.0 in a temporary directory with ``swtpm_setup
--create-ek-cert``; the EK certificate is issued by a local CA created in the same
directory (standing in for the TPM maker's CA, never the machine's /etc/swtpm-localca),
then serves it with ``swtpm socket`` on two free loopback ports.

With ``netns=NAME`` the process runs inside that network namespace (``ip netns exec``) on
the standard ports 2321/2322 of its loopback, so only processes in that namespace (the
exit it belongs to) reach it; ``tcti`` is then meant to be used from inside it.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DEVICE_PATH = "/dev/tpmrm0"
START_TIMEOUT_S = 10.0
SETUP_TIMEOUT_S = 60.0
PORT_ATTEMPTS = 50
EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
FIXED_PORTS_FROM = 10000  # below this, well-known and registered services
NETNS_PORT = 2321  # swtpm's usual server port; its control port is the next one


def device_tcti(path: str = DEVICE_PATH) -> str:
    """TCTI string for a kernel TPM (through the in-kernel resource manager)."""
    return f"device:{path}"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path(EPHEMERAL_RANGE_FILE).read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _free_port_pair() -> int:
    """A port p such that p and p+1 are both free on 127.0.0.1 right now.

    Taken below the kernel's ephemeral range: after a burst of connections that range is
    full of TIME_WAIT sockets, where a port handed out by bind(0) often has a busy p+1."""
    low, high = _ephemeral_range()
    lo, hi = (FIXED_PORTS_FROM, low - 2) if low - 2 > FIXED_PORTS_FROM else (high + 1, 65533)
    for _ in range(PORT_ATTEMPTS):
        port = random.randint(lo, hi)
        try:
            for candidate in (port, port + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no pair of free loopback ports")


class Swtpm:
    """A manufactured software TPM process. Use as a context manager or call stop()."""

    def __init__(self, *, directory: Path | None = None, netns: str | None = None) -> None:
        self._own_dir = directory is None
        self.netns = netns
        self.dir = Path(tempfile.mkdtemp(prefix="swtpm-")) if directory is None else directory
        self.state_dir = self.dir / "state"
        self.ca_dir = self.dir / "ca"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._manufacture()

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    @property
    def root_ca(self) -> Path:
        """The local CA's root certificate (the trust anchor for EK certificates)."""
        return self.ca_dir / "swtpm-localca-rootca-cert.pem"

    @property
    def intermediate_ca(self) -> Path:
        """The local CA's issuing certificate, signed by the root, that signs EK certs."""
        return self.ca_dir / "issuercert.pem"

    def _manufacture(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ca_dir.mkdir(parents=True, exist_ok=True)
        ca = self.ca_dir
        (ca / "swtpm-localca.conf").write_text(
            f"statedir = {ca}\nsigningkey = {ca}/signkey.pem\n"
            f"issuercert = {ca}/issuercert.pem\ncertserial = {ca}/certserial\n"
        )
        (ca / "swtpm-localca.options").write_text(
            "--platform-manufacturer ShadowMesh\n--platform-version 1.0\n--platform-model swtpm\n"
        )
        (ca / "swtpm_setup.conf").write_text(
            f"create_certs_tool = {shutil.which('swtpm_localca') or '/usr/bin/swtpm_localca'}\n"
            f"create_certs_tool_config = {ca}/swtpm-localca.conf\n"
            f"create_certs_tool_options = {ca}/swtpm-localca.options\n"
            "active_pcr_banks = sha256\n"
        )
        cmd = [
            "swtpm_setup", "--tpm2", "--tpmstate", str(self.state_dir),
            "--create-ek-cert", "--config", str(ca / "swtpm_setup.conf"),
            "--pcr-banks", "sha256", "--overwrite",
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, timeout=SETUP_TIMEOUT_S, check=False)
        if result.returncode != 0:
            self._remove_dir()
            tail = result.stderr.decode(errors="replace")[-500:]
            raise RuntimeError(f"swtpm_setup failed ({result.returncode}): {tail}")

    def start(self) -> Swtpm:
        if self._proc is not None:
            return self
        for _ in range(PORT_ATTEMPTS):
            # A namespace of our own has every port free; the root namespace is shared.
            port = NETNS_PORT if self.netns is not None else _free_port_pair()
            prefix = ["ip", "netns", "exec", self.netns] if self.netns is not None else []
            cmd = [
                *prefix, "swtpm", "socket", "--tpm2",
                "--tpmstate", f"dir={self.state_dir}",
                "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                "--flags", "not-need-init,startup-clear",
            ]  # fmt: skip
            with open(self.dir / "swtpm.log", "ab") as log:
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
            if self._wait_listening(proc, port):
                self._proc, self.port = proc, port
                return self
            _stop(proc)  # lost the port race; try another pair
            if self.netns is not None:
                break  # no race inside our own namespace: it failed for a real reason
        raise RuntimeError(f"swtpm did not start (log: {self.dir / 'swtpm.log'})")

    def _listening(self, port: int) -> bool:
        if self.netns is not None:
            out = subprocess.run(
                ["ss", "-N", self.netns, "-Hltn", f"sport = :{port}"],
                capture_output=True, text=True, timeout=5, check=False,
            )  # fmt: skip
            return bool(out.stdout.strip())
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.2),
        ):
            return True
        return False

    def _wait_listening(self, proc: subprocess.Popen[bytes], port: int) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if self._listening(port + 1):
                return True
            time.sleep(0.02)
        return False

    def restart(self) -> None:
        """Power-cycle: stop the process and start it again on the same state.

        The TPM comes back through TPM2_Startup(CLEAR), so its reset count goes up.
        """
        self._stop_process()
        self.start()

    def _stop_process(self) -> None:
        if self._proc is not None:
            _stop(self._proc)
            self._proc = None

    def _remove_dir(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def stop(self) -> None:
        self._stop_process()
        self._remove_dir()

    def __enter__(self) -> Swtpm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def device_present(path: str = DEVICE_PATH) -> bool:
    return os.path.exists(path)
