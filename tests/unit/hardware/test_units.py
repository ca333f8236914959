"""The systemd units start commands that exist, with options the commands accept."""

import argparse
import importlib
import shlex
from pathlib import Path

import pytest

from l2bridge.commands.main import COMMANDS

UNITS = sorted((Path(__file__).resolve().parents[3] / "hardware" / "units").glob("*.service"))


def _directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def test_units_exist():
    assert {p.name for p in UNITS} >= {"shadowmesh-exit.service", "shadowmesh-client.service"}


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_execstart_parses_with_the_real_command(unit):
    d = _directives(unit)
    argv = shlex.split(d["ExecStart"][0])
    assert argv[0].endswith("/shadowmesh")
    name, args = argv[1], argv[2:]
    assert name in COMMANDS
    parser = argparse.ArgumentParser()
    importlib.import_module(COMMANDS[name][0]).register(parser)
    ns = parser.parse_args(args)
    assert str(ns.config) == "/etc/shadowmesh/" + name + ".yaml"
    assert callable(ns.func)


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_is_confined(unit):
    d = _directives(unit)
    assert d["NoNewPrivileges"] == ["true"]
    assert d["ProtectSystem"] == ["strict"]
    assert d["DevicePolicy"] == ["closed"]
    assert "/dev/net/tun rw" in d["DeviceAllow"]
    assert set(d["CapabilityBoundingSet"][0].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert d["UMask"] == ["0077"]
