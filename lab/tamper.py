"""A root attacker on an attested exit: a rig with swtpm, the IMA harness and the exit's
attestation process, and one function per attack (shared by tests and bench/tamper.py).

The rig installs a copy of the release (the ShadowMesh packages, byte-compiled) in a work
directory, enrols an AK on a fresh swtpm (EK chain, credential activation), and boots an
exit: ``lab.imaharness`` plays firmware and kernel, ``lab.attested_exit`` is the exit's
attestation side, loading the exit's modules. The golden policy comes from the first
honest boot: its boot PCRs and the kernel command line, every file of the installed
release hashed from disk (``attestation.release.build``), and the interpreter, standard
library and libraries the honest exit loaded (Keylime's "from a known-good list" mode).
Every verdict comes from ``attestation.checker.EvidenceChecker``, the clients' verifier.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import os
import secrets
import selectors
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

from attestation import constants as ac
from attestation import enrol, eventlog, ima, release
from attestation import evidence as ev
from attestation import runtime_policy as rp
from attestation.checker import EvidenceChecker
from attestation.errors import AttestationRefused, TpmError
from attestation.policy import GoldenPolicy
from attestation.tpm import Tpm
from hardware.tpm import Swtpm
from lab.imaharness import EVENT_LOG, IMA_LIST, LAB_CMDLINE

PACKAGES = ("attestation", "contracts", "exitnode", "hardware", "l2bridge", "timing", "lab")
NODE_ID = hashlib.sha256(b"tampered exit").digest()
START_TIMEOUT_S = 90.0
ANSWER_TIMEOUT_S = 60.0
# A module the exit does not load at start (checked by ``learn``), and its file.
LATE_MODULE = "l2bridge.protocol.pair"
LATE_FILE = Path("l2bridge/protocol/pair.py")
NO_IMA_CMDLINE = "root=/dev/vda1 ro"


def system_watch() -> list[Path]:
    """Directories outside the installed copies whose files the harness measures: the
    interpreter with its standard library, and the system's libraries and programs."""
    dirs = {Path(sys.base_prefix), Path("/usr/lib"), Path("/usr/bin")}
    return sorted({d.resolve() for d in dirs if d.exists()})


def install_dependencies(deps: Path) -> None:
    """A private copy of the third-party packages, so nothing else that installs into the
    shared environment while the rig runs changes what the exit loads."""
    source = Path(sysconfig.get_paths()["purelib"])
    shutil.copytree(source, deps, symlinks=True,
                    ignore=shutil.ignore_patterns("~*", "*.pth", "__editable__*"))  # fmt: skip


def install_release(source: Path, site: Path) -> None:
    """Copy the packages (sources only) and byte-compile them, as a package install does."""
    shutil.rmtree(site, ignore_errors=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules")
    for name in PACKAGES:
        shutil.copytree(source / name, site / name, ignore=skip)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(site)], check=True,
                   capture_output=True, timeout=300)  # fmt: skip


class Exit:
    """One boot of the exit: the harness process and the exit's attestation process."""

    def __init__(self, rig: Rig, cmdline: str) -> None:
        self.rig = rig
        path = f"{rig.site}:{rig.deps}"
        harness = [sys.executable, "-m", "lab.imaharness", "--tcti", rig.tpm.tcti,
                   "--out", str(rig.logs), "--cmdline", cmdline]  # fmt: skip
        for d in [rig.site, rig.deps, *system_watch()]:
            harness += ["--watch", str(d)]
        # -S: no site-packages of the shared environment, only the installed copies.
        exit_cmd = [sys.executable, "-S", "-m", "lab.attested_exit", "--tcti", rig.tpm.tcti,
                    "--state-dir", str(rig.state), "--node-id", NODE_ID.hex(),
                    "--ima-list", str(rig.logs / IMA_LIST),
                    "--event-log", str(rig.logs / EVENT_LOG)]  # fmt: skip
        harness_env = dict(os.environ, PYTHONPATH=str(rig.source))
        self._log = (rig.work / "exit.log").open("ab")
        self.proc = subprocess.Popen(
            [*harness, "--", "env", f"PYTHONPATH={path}", "PYTHONDONTWRITEBYTECODE=1",
             *exit_cmd],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            text=True, env=harness_env, cwd=rig.work,
        )  # fmt: skip
        line = self._line(START_TIMEOUT_S)
        if line != "ready":
            self.stop()
            raise RuntimeError(f"exit did not start: {line!r} (see {rig.work / 'exit.log'})")

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout)
        sel.close()
        if not ready:
            raise TimeoutError("the exit did not answer")
        return self.proc.stdout.readline().strip()

    def ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self._line(ANSWER_TIMEOUT_S)
        if not answer.startswith("ok"):
            raise RuntimeError(f"{command.split(maxsplit=1)[0]}: {answer}")
        return answer[3:]

    def quote(self, nonce: bytes) -> bytes:
        return bytes.fromhex(self.ask(f"quote {nonce.hex()}"))

    def load(self, module: str) -> None:
        self.ask(f"import {module}")

    def run(self, path: str) -> None:
        self.ask(f"run {path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class Rig:
    def __init__(self, work: Path, source: Path) -> None:
        self.work = work
        self.source = source
        self.site = work / "site"
        self.deps = work / "deps"
        self.logs = work / "logs"
        self.state = work / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        # One snapshot of the release; every boot restores the installed copy from it.
        self.pristine = work / "release"
        install_release(source, self.pristine)
        shutil.copytree(self.pristine, self.site)
        install_dependencies(self.deps)
        self.tpm = Swtpm(directory=work / "tpm").start()
        self.booted = False
        now = datetime.datetime.now(datetime.UTC)
        anchors = enrol.load_certificates([self.tpm.root_ca])
        inter = enrol.load_certificates([self.tpm.intermediate_ca])
        ak, record = enrol.enrol(self.tpm.tcti, anchors, inter, now)
        ak.save(self.state / "ak.json")
        self.ak_public = record.ak_public
        self.exit: Exit | None = None
        self.golden: GoldenPolicy | None = None

    def boot(self, cmdline: str = LAB_CMDLINE) -> Exit:
        """Power-cycle the TPM, restore the installed release and start a fresh exit."""
        self.halt()
        if self.booted:
            with Tpm(self.tpm.tcti) as tpm:
                tpm.shutdown()
            self.tpm.restart()
            shutil.rmtree(self.site)
            shutil.copytree(self.pristine, self.site)
        self.booted = True
        shutil.rmtree(self.logs, ignore_errors=True)
        self.exit = Exit(self, cmdline)
        return self.exit

    def halt(self) -> None:
        if self.exit is not None:
            self.exit.stop()
            self.exit = None

    def close(self) -> None:
        self.halt()
        self.tpm.stop()

    def learn(self) -> GoldenPolicy:
        """The golden policy from an honest boot (see the module docstring)."""
        assert self.exit is not None
        e = ev.decode(self.exit.quote(secrets.token_bytes(32)))
        site = str(self.site) + "/"
        seen = release.from_ima_list(e.ima_list)
        outside = {p: d for p, d in seen.digests.items() if not p.startswith(site)}
        installed = release.build([self.site])
        runtime = release.merge([installed, rp.RuntimePolicy(outside, ())])
        boot = eventlog.BootPolicy(tuple(e.pcrs[:ac.BOOT_AGGREGATE_PCRS]),
                                   ac.DEFAULT_CMDLINE_REQUIRES)  # fmt: skip
        self.golden = GoldenPolicy(boot, runtime)
        pyc = self.site / LATE_FILE.parent / "__pycache__" / (LATE_FILE.stem + ".")
        late = (str(self.site / LATE_FILE), str(pyc))
        if any(p.startswith(late) for p in seen.digests):
            raise RuntimeError(f"{LATE_MODULE} is loaded at start: the attacks need another")
        return self.golden

    def checker(self, ak_public: bytes | None = None) -> EvidenceChecker:
        assert self.golden is not None
        return EvidenceChecker(self.golden, {NODE_ID: ak_public or self.ak_public})


def check(checker: EvidenceChecker, evidence: bytes, nonce: bytes) -> tuple[str, ...]:
    """The checker's reasons for refusing; () if it accepted."""
    try:
        checker(evidence, nonce, NODE_ID)
    except AttestationRefused as exc:
        return exc.reasons
    return ()


def honest(rig: Rig) -> tuple[str, ...]:
    """A fresh boot of the approved exit, checked twice (the second time incrementally)."""
    exit_ = rig.boot()
    checker = rig.checker()
    reasons: tuple[str, ...] = ()
    for _ in range(2):
        nonce = secrets.token_bytes(32)
        reasons = reasons or check(checker, exit_.quote(nonce), nonce)
    return reasons


def _attested(rig: Rig) -> tuple[Exit, EvidenceChecker]:
    """A booted exit whose honest evidence a client has already accepted."""
    exit_ = rig.boot()
    checker = rig.checker()
    nonce = secrets.token_bytes(32)
    reasons = check(checker, exit_.quote(nonce), nonce)
    if reasons:
        raise RuntimeError(f"honest exit refused: {reasons}")
    return exit_, checker


def _tamper_late_file(rig: Rig) -> None:
    path = rig.site / LATE_FILE
    path.write_text(path.read_text() + "\nLOGGED = []  # keeps a copy of every frame\n")


def _fresh(exit_: Exit, checker: EvidenceChecker) -> tuple[str, ...]:
    nonce = secrets.token_bytes(32)
    return check(checker, exit_.quote(nonce), nonce)


def modify_installed_file(rig: Rig) -> tuple[str, ...]:
    exit_, checker = _attested(rig)
    _tamper_late_file(rig)
    exit_.load(LATE_MODULE)
    return _fresh(exit_, checker)


def modify_bytecode(rig: Rig) -> tuple[str, ...]:
    """The .pyc Python runs, changed while the source stays as approved."""
    exit_, checker = _attested(rig)
    pyc = next((rig.site / LATE_FILE.parent / "__pycache__").glob("pair.*.pyc"))
    data = bytearray(pyc.read_bytes())
    data[-1] ^= 0x01
    pyc.write_bytes(bytes(data))
    os.utime(pyc, ns=(0, 0))
    with contextlib.suppress(RuntimeError):  # a corrupted .pyc may fail to import: still measured
        exit_.load(LATE_MODULE)
    return _fresh(exit_, checker)


def reset_pcr10(rig: Rig) -> tuple[str, ...]:
    """Load a changed file, then try to reset PCR 10 and replay the approved list."""
    exit_, checker = _attested(rig)
    _tamper_late_file(rig)
    exit_.load(LATE_MODULE)
    refused_reset = False
    with Tpm(rig.tpm.tcti) as tpm:
        try:
            tpm.reset_pcr(ac.IMA_PCR)
        except TpmError:
            refused_reset = True
    if not refused_reset:
        return ()  # the TPM let software reset PCR 10: the attack would work
    return ("tpm: PCR_Reset(10) refused", *_fresh(exit_, checker))


def _forge_list(
    exit_: Exit, change: Callable[[list[ima.ImaEntry]], list[ima.ImaEntry]]
) -> tuple[bytes, bytes]:
    nonce = secrets.token_bytes(32)
    e = ev.decode(exit_.quote(nonce))
    entries = change(list(ima.parse_list(e.ima_list)))
    raw = b"".join(ima.encode_entry(x.path, x.file_digest) for x in entries)
    return ev.encode(dataclasses.replace(e, ima_list=raw)), nonce


def _offending(entries: list[ima.ImaEntry]) -> int:
    return next(i for i, x in enumerate(entries) if x.path.endswith(str(LATE_FILE)))


def old_list_fresh_quote(rig: Rig) -> tuple[str, ...]:
    exit_, checker = _attested(rig)
    before = ev.decode(exit_.quote(secrets.token_bytes(32))).ima_list
    _tamper_late_file(rig)
    exit_.load(LATE_MODULE)
    nonce = secrets.token_bytes(32)
    e = ev.decode(exit_.quote(nonce))
    return check(checker, ev.encode(dataclasses.replace(e, ima_list=before)), nonce)


def drop_entry(rig: Rig) -> tuple[str, ...]:
    exit_, checker = _attested(rig)
    _tamper_late_file(rig)
    exit_.load(LATE_MODULE)
    data, nonce = _forge_list(
        exit_, lambda es: [x for i, x in enumerate(es) if i != _offending(es)]
    )
    return check(checker, data, nonce)


def reorder_entries(rig: Rig) -> tuple[str, ...]:
    exit_, checker = _attested(rig)
    _tamper_late_file(rig)
    exit_.load(LATE_MODULE)

    def swap(es: list[ima.ImaEntry]) -> list[ima.ImaEntry]:
        i = _offending(es)
        es[1], es[i] = es[i], es[1]  # hide it among the boot-time entries
        return es

    data, nonce = _forge_list(exit_, swap)
    return check(checker, data, nonce)


def edit_entry(rig: Rig) -> tuple[str, ...]:
    exit_, checker = _attested(rig)
    approved = release.file_digest(rig.site / LATE_FILE)
    _tamper_late_file(rig)
    exit_.load(LATE_MODULE)

    def edit(es: list[ima.ImaEntry]) -> list[ima.ImaEntry]:
        i = _offending(es)
        es[i] = dataclasses.replace(es[i], file_digest=approved)
        return es

    data, nonce = _forge_list(exit_, edit)
    return check(checker, data, nonce)


def extra_module(rig: Rig) -> tuple[str, ...]:
    exit_, checker = _attested(rig)
    (rig.site / "l2bridge" / "mirror.py").write_text("MIRROR_TO = '203.0.113.7'\n")
    exit_.load("l2bridge.mirror")
    return _fresh(exit_, checker)


def extra_executable(rig: Rig) -> tuple[str, ...]:
    exit_, checker = _attested(rig)
    tool = rig.site / "exitnode" / "capture"
    shutil.copy2("/usr/bin/true", tool)
    exit_.run(str(tool))
    return _fresh(exit_, checker)


def boot_without_ima(rig: Rig) -> tuple[str, ...]:
    exit_ = rig.boot(NO_IMA_CMDLINE)
    return _fresh(exit_, rig.checker())


def forged_boot_log(rig: Rig) -> tuple[str, ...]:
    """Booted without IMA, presenting a log that claims the approved command line."""
    exit_ = rig.boot(NO_IMA_CMDLINE)
    nonce = secrets.token_bytes(32)
    e = ev.decode(exit_.quote(nonce))
    events = list(eventlog.parse(e.event_log)[1:])
    events = [eventlog.cmdline_event(LAB_CMDLINE) if x.pcr == eventlog.CMDLINE_PCR else x
              for x in events]  # fmt: skip
    forged = ev.encode(dataclasses.replace(e, event_log=eventlog.encode(events)))
    return check(rig.checker(), forged, nonce)


def quote_from_another_tpm(rig: Rig) -> tuple[str, ...]:
    """The exit's honest logs, quoted by a TPM whose AK was never enrolled for this node."""
    exit_, checker = _attested(rig)
    nonce = secrets.token_bytes(32)
    honest_evidence = ev.decode(exit_.quote(nonce))
    with Swtpm() as other, Tpm(other.tcti) as tpm:
        ak = enrol.create_ak(tpm)
        handle = tpm.load_ak(ak.private, ak.public)
        attest, signature = tpm.quote(handle, ac.QUOTE_PCRS, ev.qualifying_data(nonce, NODE_ID))
        values = tpm.read_pcrs(ac.QUOTE_PCRS)
    forged = dataclasses.replace(
        honest_evidence, attest=attest, signature=signature, ak_public=ak.tpmt_public,
        pcrs=tuple(zip(ac.QUOTE_PCRS, values, strict=True)),
    )  # fmt: skip
    return check(checker, ev.encode(forged), nonce)


def replay_old_quote(rig: Rig) -> tuple[str, ...]:
    exit_, checker = _attested(rig)
    old_nonce = secrets.token_bytes(32)
    old = exit_.quote(old_nonce)
    check(checker, old, old_nonce)
    _tamper_late_file(rig)
    exit_.load(LATE_MODULE)
    nonce = secrets.token_bytes(32)  # the client's fresh nonce; the attacker shows the old
    return check(checker, old, nonce)


def reset_pcr23(rig: Rig) -> tuple[str, ...]:
    """Load a changed file, then reset and re-extend PCR 23 the way the old self-measurement
    did: nothing trusts PCR 23 any more, so the change is still seen."""
    exit_, checker = _attested(rig)
    _tamper_late_file(rig)
    exit_.load(LATE_MODULE)
    with Tpm(rig.tpm.tcti) as tpm:
        tpm.reset_pcr(23)
        tpm.extend_pcr(23, hashlib.sha256(b"golden manifest").digest())
    return _fresh(exit_, checker)


ATTACKS: dict[str, Callable[[Rig], tuple[str, ...]]] = {
    "modify-installed-file": modify_installed_file,
    "modify-bytecode": modify_bytecode,
    "reset-pcr10": reset_pcr10,
    "old-list-fresh-quote": old_list_fresh_quote,
    "drop-entry": drop_entry,
    "reorder-entries": reorder_entries,
    "edit-entry": edit_entry,
    "extra-module": extra_module,
    "extra-executable": extra_executable,
    "boot-without-ima": boot_without_ima,
    "forged-boot-log": forged_boot_log,
    "quote-from-another-tpm": quote_from_another_tpm,
    "replay-old-quote": replay_old_quote,
    "reset-pcr23": reset_pcr23,
}
