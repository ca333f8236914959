"""The documentation stays true to the code.

* ``docs/configuration.md`` lists exactly the configuration fields the loader accepts, and
  each default it states is the code's default (the written value is put through the real
  loader and compared with what an empty configuration gives).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from l2bridge.node import config as node_config
from timing import config as time_config

REPO = Path(__file__).resolve().parents[1].parent
REFERENCE = REPO / "docs" / "configuration.md"
NO_DEFAULT = "required"

_ROW = re.compile(r"^\|\s*`(?P<field>[a-z_\[\]\.]+)`\s*\|\s*(?P<default>[^|]*?)\s*\|")
_TIME_FIELD_FOR_KEY = {"consensus_quorum": "quorum"}  # YAML key -> TimeSettings field


def code_fields() -> set[str]:
    """Every field the loader accepts, as ``section.field`` (sources as ``sources[].key``)."""
    fields = {"version"}
    for section, (cls, _parsers) in node_config._SCHEMA.items():
        if section == "atomic_time":
            continue
        fields |= {f"{section}.{f.name}" for f in dataclasses.fields(cls)}
    fields |= {f"atomic_time.{key}" for key in time_config._SECTION_KEYS}
    fields |= {f"atomic_time.sources[].{key}" for key in time_config._SOURCE_KEYS}
    return fields


def documented(text: str) -> dict[str, str]:
    """``field -> default cell`` for every table row whose first cell is a code span."""
    rows: dict[str, str] = {}
    for line in text.splitlines():
        match = _ROW.match(line)
        if match is None:
            continue
        name = match["field"]
        if name in rows:
            raise AssertionError(f"{name} is documented twice")
        rows[name] = match["default"]
    return rows


def mismatch(text: str) -> tuple[set[str], set[str]]:
    """(in the code but not documented, documented but not in the code)."""
    docs = set(documented(text))
    code = code_fields()
    return code - docs, docs - code


def _default_value(cell: str) -> Any:
    match = re.fullmatch(r"`([^`]*)`", cell)
    if match is None:
        raise AssertionError(f"default {cell!r} is not one code span")
    return yaml.safe_load(match[1])


def _loaded(section: str, key: str, value: Any) -> Any:
    """The value the loader produces for ``section.key: value``, next to the default."""
    if section == "version":
        return node_config.config_from_mapping({"version": value}, env={}).version
    loaded = node_config.config_from_mapping({section: {key: value}}, env={})
    return getattr(getattr(loaded, section), key)


def default_problems(text: str) -> list[str]:
    problems = []
    empty = node_config.config_from_mapping({}, env={})
    base_source = {"kind": "gpsdo", "device": "/dev/ttyS9"}
    for name, cell in documented(text).items():
        if name in ("atomic_time.sources[].kind", "atomic_time.sources[].device"):
            if cell != NO_DEFAULT:
                problems.append(f"{name}: has no default, write {NO_DEFAULT!r}")
            continue
        try:
            value = _default_value(cell)
            if name.startswith("atomic_time.sources[]."):
                key = name.rsplit(".", 1)[1]
                got = time_config.settings_from({"sources": [{**base_source, key: value}]})
                want = time_config.settings_from({"sources": [base_source]})
                ok = got.sources[0] == want.sources[0]
            elif name.startswith("atomic_time."):
                key = name.split(".", 1)[1]
                got_t = time_config.settings_from({key: value})
                field = _TIME_FIELD_FOR_KEY.get(key, key)
                ok = getattr(got_t, field) == getattr(empty.atomic_time, field)
            elif name == "version":
                ok = _loaded("version", "", value) == empty.version
            else:
                section, key = name.split(".", 1)
                ok = _loaded(section, key, value) == getattr(getattr(empty, section), key)
        except Exception as exc:
            problems.append(f"{name}: default {cell} does not load ({exc})")
            continue
        if not ok:
            problems.append(f"{name}: documented default {cell} is not the code's")
    return problems


# --- the reference ------------------------------------------------------------------------


def test_every_field_is_documented_and_nothing_else() -> None:
    missing, extra = mismatch(REFERENCE.read_text(encoding="utf-8"))
    assert not missing, f"add to docs/configuration.md: {sorted(missing)}"
    assert not extra, f"not in the code, remove from docs/configuration.md: {sorted(extra)}"


def test_documented_defaults_are_the_code_defaults() -> None:
    assert default_problems(REFERENCE.read_text(encoding="utf-8")) == []


def test_loader_schema_and_dataclasses_agree() -> None:
    """The reference is built from the dataclasses; the loader must accept exactly those."""
    for section, (cls, parsers) in node_config._SCHEMA.items():
        if section != "atomic_time":
            assert set(parsers) == {f.name for f in dataclasses.fields(cls)}, section
    time_fields = {f.name for f in dataclasses.fields(time_config.TimeSettings)}
    keys = {_TIME_FIELD_FOR_KEY.get(k, k) for k in time_config._SECTION_KEYS}
    assert keys == time_fields
    source_fields = {f.name for f in dataclasses.fields(time_config.SourceSpec)}
    assert set(time_config._SOURCE_KEYS) == source_fields
    config_sections = {f.name for f in dataclasses.fields(node_config.Config)}
    assert config_sections == {"version", *node_config._SCHEMA}


# --- the checks catch drift ---------------------------------------------------------------


def _without(text: str, field: str) -> str:
    return "\n".join(line for line in text.splitlines() if f"| `{field}` |" not in line)


def test_a_missing_field_is_caught() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    missing, extra = mismatch(_without(text, "endpoints.token_window"))
    assert missing == {"endpoints.token_window"}
    assert extra == set()
    missing, _ = mismatch(_without(text, "atomic_time.sources[].pps"))
    assert missing == {"atomic_time.sources[].pps"}


def test_a_field_the_code_does_not_have_is_caught() -> None:
    text = REFERENCE.read_text(encoding="utf-8") + "\n| `network.speed` | `1` | x | y |\n"
    missing, extra = mismatch(text)
    assert (missing, extra) == (set(), {"network.speed"})


@pytest.mark.parametrize(
    ("field", "wrong"),
    [
        ("security.key_rotation_interval", "`2h`"),
        ("network.mtu", "`1500`"),
        ("obfuscation.cover_traffic", "`on`"),
        ("status.listen", "`127.0.0.1:9471`"),
        ("atomic_time.consensus_quorum", "`2`"),
        ("atomic_time.sources[].baudrate", "`9600`"),
        ("endpoints.tls_ca", "`ca.pem`"),
    ],
)
def test_a_wrong_default_is_caught(field: str, wrong: str) -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    lines = []
    for line in text.splitlines():
        cells = line.split("|")
        if line.startswith(f"| `{field}` |"):
            cells[2] = f" {wrong} "
        lines.append("|".join(cells))
    problems = default_problems("\n".join(lines))
    assert len(problems) == 1
    assert problems[0].startswith(field)
