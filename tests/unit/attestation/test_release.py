"""Building a runtime policy from an installed release (``shadowmesh attest runtime-policy``)."""

from __future__ import annotations

import hashlib
import os

from attestation import ima, release
from attestation import runtime_policy as rp


def _tree(root):
    (root / "pkg" / "__pycache__").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("x = 1\n")
    (root / "pkg" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\x00bytecode")
    (root / "exit.yaml").write_text("mtu: 1400\n")
    os.symlink(root / "exit.yaml", root / "link.yaml")


def test_every_file_is_listed_bytecode_included(tmp_path):
    _tree(tmp_path)
    policy = release.build([tmp_path], excludes=("^/var/lib/shadowmesh/",), release=4)
    pyc = str(tmp_path / "pkg/__pycache__/__init__.cpython-311.pyc")
    assert policy.digests[pyc] == {hashlib.sha256(b"\x00bytecode").digest()}
    assert str(tmp_path / "pkg/__init__.py") in policy.digests
    assert str(tmp_path / "exit.yaml") in policy.digests
    assert str(tmp_path / "link.yaml") not in policy.digests  # listed at the file's own path
    assert policy.release == 4 and policy.excludes == ("^/var/lib/shadowmesh/",)
    assert rp.parse(rp.dump(policy)) == policy


def test_relocate_and_merge(tmp_path):
    _tree(tmp_path)
    built = release.build([tmp_path / "pkg"])
    moved = release.relocate(built, tmp_path / "pkg", "/opt/shadowmesh/pkg")
    pyc = "/opt/shadowmesh/pkg/__pycache__/__init__.cpython-311.pyc"
    assert set(moved.digests) == {"/opt/shadowmesh/pkg/__init__.py", pyc}
    other = rp.RuntimePolicy({"/opt/shadowmesh/pkg/__init__.py": frozenset({bytes(32)})}, ("^/x",))
    merged = release.merge([moved, other])
    assert len(merged.digests["/opt/shadowmesh/pkg/__init__.py"]) == 2
    assert merged.excludes == ("^/x",)


def test_from_a_known_good_ima_list():
    data = (
        ima.encode_entry("boot_aggregate", bytes(32))
        + ima.encode_entry("/usr/bin/python3", b"\x01" * 32)
        + ima.encode_entry("/usr/bin/python3", b"\x02" * 32)
        + ima.encode_entry("/tmp/x", b"\x03" * 32, violation=True)
    )
    policy = release.from_ima_list(data)
    assert policy.digests == {"/usr/bin/python3": frozenset({b"\x01" * 32, b"\x02" * 32})}


def test_python_roots_name_the_interpreter_and_standard_library():
    roots = release.python_roots()
    assert any((r / "os.py").exists() for r in roots if r.is_dir())
    assert any(r.is_file() for r in roots)  # the interpreter binary
