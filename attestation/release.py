"""Build a runtime policy (Keylime layout) from an installed ShadowMesh release.

What an exit loads, and so what the policy lists with the SHA-256 of every file:

* every file of the ShadowMesh packages, *including* ``__pycache__/*.pyc``: Python runs the
  cached bytecode, not the source, so the .pyc files are code like any other. Exits should
  run with PYTHONDONTWRITEBYTECODE=1 (or a read-only install) so no new .pyc appears;
* the Python interpreter (the resolved binary), the standard library with lib-dynload, and
  the site-packages the exit imports from;
* every shared object mapped into an interpreter that imported the exit's modules (libc,
  libssl, the TSS libraries...), read from that child process's /proc/self/maps;
* extra files and directories the operator names (the configuration, CA certificates).

``excludes`` are Keylime regular expressions for paths that legitimately change per node
(the node's state directory: keys, AK blob, enrolment record). Nothing that runs as code
may be excluded: an excluded path is not checked at all.

This module reads the file system; it is an operator's tool, not part of verification.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

from attestation import constants as c
from attestation import ima
from attestation import runtime_policy as rp
from attestation.errors import MeasurementError

PACKAGES = ("attestation", "contracts", "exitnode", "hardware", "l2bridge", "timing")
# Imported before reading /proc/self/maps, so their native libraries are mapped.
EXIT_MODULES = ("exitnode.server", "exitnode.attested", "attestation.tpm", "contracts.client")
CHUNK = 1 << 20
MAPS_TIMEOUT_S = 60.0


def file_digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.digest()


def package_roots(names: Iterable[str] = PACKAGES) -> list[Path]:
    """Where the named packages are installed (found without importing them)."""
    roots = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            roots.append(Path(next(iter(spec.submodule_search_locations))).resolve())
    return roots


def python_roots() -> list[Path]:
    """The interpreter, the standard library and the site-packages directories."""
    paths = sysconfig.get_paths()
    roots = {Path(sys.executable).resolve()}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        roots.add(Path(paths[key]).resolve())
    return sorted(roots)


def mapped_objects(modules: Iterable[str] = EXIT_MODULES) -> list[Path]:
    """Files mapped into a fresh interpreter after it imported ``modules`` (the shared
    libraries the exit loads). Runs a child process so nothing is imported here."""
    script = (
        "import sys\nfor m in sys.argv[1:]: __import__(m)\nprint(open('/proc/self/maps').read())"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", script, *modules],
            capture_output=True, text=True, timeout=MAPS_TIMEOUT_S, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        raise MeasurementError(f"cannot list the exit's shared libraries: {exc}") from None
    found = set()
    for line in out.stdout.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            path = Path(fields[5].strip())
            if path.is_file():
                found.add(path.resolve())
    return sorted(found)


def _files(root: Path) -> Iterable[Path]:
    if root.is_file():
        yield root
        return
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath, name)
            if path.is_file() and not path.is_symlink():
                yield path


def build(
    roots: Iterable[Path], excludes: Iterable[str] = (), release: int = 0, timestamp: str = ""
) -> rp.RuntimePolicy:
    """A policy listing every regular file under ``roots`` at its absolute path.

    Symbolic links are not listed: the kernel records the path of the file opened, after
    links are followed; a file under a linked directory is listed at both paths. Raises
    MeasurementError if a file cannot be read.
    """
    digests: dict[str, frozenset[bytes]] = {}
    try:
        for root in roots:
            for path in _files(root):
                digest = frozenset({file_digest(path)})
                digests[str(path)] = digest
                digests.setdefault(str(path.resolve()), digest)
    except OSError as exc:
        raise MeasurementError(f"cannot hash {exc.filename}: {exc.strerror}") from None
    return rp.RuntimePolicy(digests, tuple(excludes), release, timestamp)


def default_roots(extra: Iterable[Path] = ()) -> list[Path]:
    """Everything an exit of this installation loads (see the module docstring)."""
    return [*package_roots(), *python_roots(), *mapped_objects(), *extra]


def relocate(policy: rp.RuntimePolicy, src: Path, dst: str) -> rp.RuntimePolicy:
    """The policy with paths under ``src`` moved under ``dst`` (a release hashed in a staging
    directory, installed at its standard path)."""
    prefix = str(src.resolve()) + "/"
    moved = {
        (dst.rstrip("/") + "/" + p[len(prefix) :] if p.startswith(prefix) else p): d
        for p, d in policy.digests.items()
    }
    return rp.RuntimePolicy(moved, policy.excludes, policy.release, policy.timestamp)


def merge(policies: Iterable[rp.RuntimePolicy]) -> rp.RuntimePolicy:
    """One policy allowing every digest any of ``policies`` allows for a path."""
    digests: dict[str, frozenset[bytes]] = {}
    excludes: list[str] = []
    release = 0
    for p in policies:
        for path, ds in p.digests.items():
            digests[path] = digests.get(path, frozenset()) | ds
        excludes += [e for e in p.excludes if e not in excludes]
        release = max(release, p.release)
    return rp.RuntimePolicy(digests, tuple(excludes), release)


def from_ima_list(data: bytes, excludes: Iterable[str] = (), release: int = 0) -> rp.RuntimePolicy:
    """A policy allowing what a known-good machine's IMA list shows it loaded (Keylime's
    ``--ima-measurement-list`` mode). Raises EvidenceError if the list is malformed."""
    digests: dict[str, set[bytes]] = {}
    for entry in ima.parse_list(data):
        if entry.path == c.BOOT_AGGREGATE_PATH or entry.violation:
            continue
        digests.setdefault(entry.path, set()).add(entry.file_digest)
    return rp.RuntimePolicy({p: frozenset(d) for p, d in digests.items()}, tuple(excludes), release)
