"""The layout stays true: imports point downward, and nothing refers outside the repository.

The rules (docs/architecture.md draws them):

* Top-level packages form a stack; a module imports only its own package or packages below it:
  ``hardware`` (device adapters and their fakes) at the bottom, then ``timing``, ``attestation``,
  ``contracts``, ``l2bridge``, ``exitnode``, ``lab`` and ``bench`` on top. So ``l2bridge`` never
  imports ``exitnode`` or ``lab``, and no product package imports ``lab`` or ``bench``.
* Inside ``l2bridge`` the subpackages form the same kind of stack: the package-wide basics
  (``codec``, ``constants``, ``errors``), then ``crypto``, ``identity``, ``protocol``,
  ``transport``, ``node``, ``client``, ``commands``, and ``__main__`` on top.
* ``l2bridge.protocol`` and ``l2bridge.crypto`` are sans-I/O: no event loop, socket, process,
  thread, TLS or file-descriptor module, no network library and no device adapter.
* No tracked file names the team's notes outside the repository (a user's clone has none).

Every ``import``/``from ... import`` anywhere in a module counts, including imports inside
functions and under ``TYPE_CHECKING``, and ``importlib.import_module("literal")`` calls.
The ``shadowmesh`` dispatcher (``l2bridge/commands/main.py``) names each subcommand's module as
a string in its ``COMMANDS`` table and imports only the one asked for; it is the program's
entry point, and it is the one place that names upper packages.

``KNOWN_EXCEPTIONS`` lists the imports that break a rule today, each with the reason; an entry
that no longer occurs fails the test too, so the list only shrinks.
"""

from __future__ import annotations

import ast
import re
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Bottom to top.
PACKAGE_ORDER = (
    "hardware",
    "timing",
    "attestation",
    "contracts",
    "l2bridge",
    "exitnode",
    "lab",
    "bench",
)
PRODUCT = frozenset({"hardware", "timing", "attestation", "contracts", "l2bridge", "exitnode"})

# Inside l2bridge, bottom to top; names in one tuple share a rank.
L2BRIDGE_ORDER: tuple[tuple[str, ...], ...] = (
    ("__init__", "codec", "constants", "errors", "logsummary"),
    ("crypto",),
    ("identity",),
    ("protocol",),
    ("transport",),
    ("node",),
    ("client",),
    ("commands",),
    ("__main__",),
)

SANS_IO = ("l2bridge.protocol", "l2bridge.crypto")
IO_MODULES = frozenset(
    {
        "asyncio",
        "socket",
        "subprocess",
        "threading",
        "selectors",
        "ssl",
        "fcntl",
        "multiprocessing",
        "concurrent",
        "websockets",
        "pytun",
        "serial",
        "tpm2_pytss",
        "web3",
        "hardware",
    }
)

# (importing module, imported module) -> why it is still there.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True, slots=True)
class Import:
    source: str  # dotted name of the importing module
    target: str  # dotted name of what it imports (module or package)
    path: Path
    line: int


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(root: Path, dotted: str) -> bool:
    base = root.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(root: Path, path: Path) -> Iterator[Import]:
    """Every import in one file, with relative imports resolved against ``root``."""
    name = module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            # 'from pkg import sub' imports the module pkg.sub when there is one.
            subs = [f"{base}.{a.name}" for a in node.names if _is_module(root, f"{base}.{a.name}")]
            targets = subs or [base]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            targets = [node.args[0].value]
        for target in targets:
            yield Import(name, target, path, getattr(node, "lineno", 0))


def python_files(root: Path, packages: Iterable[str]) -> Iterator[Path]:
    for package in packages:
        base = root / package
        if base.is_dir():
            yield from sorted(p for p in base.rglob("*.py") if "node_modules" not in p.parts)


def all_imports(root: Path) -> list[Import]:
    return [i for p in python_files(root, PACKAGE_ORDER) for i in imports_of(root, p)]


def _l2bridge_layer(dotted: str) -> int | None:
    parts = dotted.split(".")
    if parts[0] != "l2bridge":
        return None
    head = parts[1] if len(parts) > 1 else "__init__"
    for rank, names in enumerate(L2BRIDGE_ORDER):
        if head in names:
            return rank
    return None


def violations(imports: Iterable[Import]) -> list[tuple[Import, str]]:
    """Each import that breaks a rule, with the rule it breaks (empty when the layout holds)."""
    found: list[tuple[Import, str]] = []
    for imp in imports:
        src_top = imp.source.split(".")[0]
        dst_top = imp.target.split(".")[0]
        upward = (
            src_top in PACKAGE_ORDER
            and dst_top in PACKAGE_ORDER
            and PACKAGE_ORDER.index(dst_top) > PACKAGE_ORDER.index(src_top)
        )
        if upward:
            rule = f"{src_top} may not import {dst_top} (it is above {src_top})"
            if src_top in PRODUCT and dst_top in ("lab", "bench"):
                rule = f"the product never imports {dst_top}"
            found.append((imp, rule))
            continue
        if src_top == dst_top == "l2bridge":
            src_rank, dst_rank = _l2bridge_layer(imp.source), _l2bridge_layer(imp.target)
            if src_rank is None or dst_rank is None:
                found.append((imp, "every l2bridge module belongs to a layer in L2BRIDGE_ORDER"))
            elif dst_rank > src_rank:
                found.append((imp, "inside l2bridge, imports point down the subpackage order"))
        sans_io = any(imp.source == p or imp.source.startswith(p + ".") for p in SANS_IO)
        if sans_io and dst_top in IO_MODULES:
            found.append((imp, f"{imp.source} is sans-I/O and may not import {dst_top}"))
    return found


def _describe(items: Iterable[tuple[Import, str]]) -> str:
    return "\n".join(f"{i.path}:{i.line}: {i.source} -> {i.target}: {why}" for i, why in items)


# --- the repository -----------------------------------------------------------------------


def test_imports_point_downward() -> None:
    found = violations(all_imports(REPO))
    unexpected = [(i, why) for i, why in found if (i.source, i.target) not in KNOWN_EXCEPTIONS]
    assert not unexpected, "layout violations:\n" + _describe(unexpected)
    still = {(i.source, i.target) for i, _ in found}
    stale = set(KNOWN_EXCEPTIONS) - still
    assert not stale, f"fixed, remove from KNOWN_EXCEPTIONS: {sorted(stale)}"


def test_every_l2bridge_module_is_in_a_layer() -> None:
    names = [module_name(REPO, p) for p in python_files(REPO, ["l2bridge"])]
    assert names, "no l2bridge modules found"
    assert [n for n in names if _l2bridge_layer(n) is None] == []


def test_the_checker_sees_the_repository() -> None:
    """Guards the guard: the walk finds the edges the architecture is built on."""
    edges = {(i.source, i.target) for i in all_imports(REPO)}
    assert any(s.startswith("exitnode.") and t.startswith("l2bridge.node") for s, t in edges)
    assert any(
        s.startswith("l2bridge.protocol.") and t.startswith("l2bridge.crypto") for s, t in edges
    )
    assert any(s.startswith("lab.") and t.startswith("exitnode") for s, t in edges)


def _outside_references() -> re.Pattern[bytes]:
    # Built from parts so that this file does not match itself.
    shared = "shared"
    return re.compile(
        ("(" + re.escape("..") + "|/work)/" + shared + r"\b").encode() + rb"|\b(DESIGN|STYLE)\.md\b"
    )


def tracked_files(root: Path) -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z"],
            check=True,
            capture_output=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "node_modules", "__pycache__"}
        return [
            p
            for p in root.rglob("*")
            if p.is_file() and not skip.intersection(p.relative_to(root).parts)
        ]
    return [root / name for name in out.decode().split("\0") if name]


def outside_references(files: Iterable[Path]) -> list[str]:
    pattern = _outside_references()
    hits = []
    for path in files:
        if not path.is_file():  # deleted in the work tree, or a symlink to a directory
            continue
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path}:{number}: {line.decode(errors='replace').strip()}")
    return hits


def test_no_file_refers_outside_the_repository() -> None:
    files = tracked_files(REPO)
    assert len(files) > 50
    assert outside_references(files) == []


# --- the checker catches what it should ---------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for path in list(tmp_path.rglob("*")):
        if path.is_dir() and not (path / "__init__.py").exists():
            (path / "__init__.py").write_text("", encoding="utf-8")
    return tmp_path


def _rules(root: Path) -> set[tuple[str, str, str]]:
    return {(i.source, i.target, why) for i, why in violations(all_imports(root))}


def test_a_clean_tree_passes(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "hardware/tap.py": "import fcntl\n",
            "timing/sources.py": "from hardware import tap\n",
            "l2bridge/errors.py": "",
            "l2bridge/protocol/session.py": "from l2bridge import errors\nimport hashlib\n",
            "l2bridge/node/link.py": "import asyncio\nfrom ..protocol import session\n",
            "exitnode/server.py": "from l2bridge.node.link import x\n",
            "lab/demo.py": "import exitnode.server\n",
        },
    )
    assert _rules(root) == set()


@pytest.mark.parametrize(
    ("files", "rule"),
    [
        ({"l2bridge/node/x.py": "from exitnode import server\n"}, "may not import exitnode"),
        ({"l2bridge/x.py": "import lab.demo\n"}, "the product never imports lab"),
        ({"hardware/x.py": "from timing import epoch\n"}, "may not import timing"),
        ({"exitnode/x.py": "def f():\n    import bench\n"}, "the product never imports bench"),
        (
            {"contracts/x.py": "import importlib\nimportlib.import_module('lab.demo')\n"},
            "the product never imports lab",
        ),
        (
            {
                "attestation/x.py": "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from l2bridge.node import config\n"
            },
            "may not import l2bridge",
        ),
        ({"l2bridge/protocol/x.py": "import asyncio\n"}, "sans-I/O and may not import asyncio"),
        ({"l2bridge/crypto/x.py": "import socket\n"}, "sans-I/O and may not import socket"),
        ({"l2bridge/protocol/x.py": "from hardware import tap\n"}, "may not import hardware"),
        ({"l2bridge/protocol/x.py": "import subprocess as sp\n"}, "may not import subprocess"),
        ({"l2bridge/crypto/x.py": "from threading import Lock\n"}, "may not import threading"),
        ({"l2bridge/protocol/x.py": "from ..node import link\n"}, "imports point down"),
        ({"l2bridge/codec.py": "from l2bridge.crypto import pq\n"}, "imports point down"),
        (
            {
                "l2bridge/protocol/kex.py": "",
                "l2bridge/identity/x.py": "from l2bridge import protocol\n",
            },
            "imports point down",
        ),
        ({"l2bridge/client/x.py": "from l2bridge.commands import main\n"}, "imports point down"),
        ({"l2bridge/gadgets/x.py": "from l2bridge import errors\n"}, "belongs to a layer"),
    ],
)
def test_each_violation_is_caught(tmp_path: Path, files: dict[str, str], rule: str) -> None:
    root = _tree(tmp_path, {"l2bridge/node/link.py": "", **files})
    found = _rules(root)
    assert found, f"not caught: {files}"
    assert any(rule in why for _, _, why in found), found


def test_from_package_import_submodule_resolves_to_the_submodule(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {"l2bridge/codec.py": "", "l2bridge/identity/keys.py": "from l2bridge import codec\n"},
    )
    [imp] = list(imports_of(root, root / "l2bridge/identity/keys.py"))
    assert imp.target == "l2bridge.codec"


def test_a_reference_outside_the_repository_is_caught(tmp_path: Path) -> None:
    parent, design, style = "..", "DESIGN" + ".md", "STYLE" + ".md"
    bad = {
        "README.md": f"See `{parent}/shared/{design}`.\n",
        "x.py": f"SPEC = '/work/{'shared'}/spec/spec.md'\n",
        "CONTRIBUTING.md": f"Read {style} first.\n",
    }
    good = tmp_path / "ok.md"
    good.write_text("Keys are shared by both ends; see docs/architecture.md.\n")
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
    hits = outside_references(sorted(tmp_path.iterdir()))
    assert len(hits) == 3
    assert not any("ok.md" in h for h in hits)
