"""The documentation stays true to the code.

* ``docs/configuration.md`` lists exactly the configuration fields the loader accepts, and
  each default it states is the code's default (the written value is put through the real
  loader and compared with what an empty configuration gives).
* Each byte-layout table in ``docs/wire-protocol.md`` (marked ``<!-- layout: name -->``) tiles
  a message built by the real encoder (the handshake, records, rekey, the attestation
  evidence from a fake TPM and kernel, the enrolment binding): offsets contiguous, sizes
  summing to the message's length, and each field's bytes the ones the encoder wrote. Limits
  quoted in its text are the constants; the registry domain, PCR selection and EIP-712 types
  it quotes are the contract's.
* The four documents exist, and every relative link in README, CONTRIBUTING and ``docs/``
  points at a file that exists.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
import zlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from attestation import ceremony
from attestation import constants as attestation_constants
from attestation import evidence as attestation_evidence
from attestation.enrol import Challenge
from attestation.fake import FakeAttester
from contracts import constants as contracts_constants
from l2bridge import constants as l2_constants
from l2bridge.constants import RECORD_CLOSE, Cipher, Mode
from l2bridge.identity.keys import AdminKey, HybridSigningKey
from l2bridge.node import config as node_config
from l2bridge.protocol.handshake import ClientHello, ServerHello
from l2bridge.protocol.pair import SessionPair
from l2bridge.protocol.records import SendKey
from l2bridge.protocol.session import ClientFinish
from l2bridge.transport import constants as transport_constants
from l2bridge.transport import token
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
    assert config_sections == {"version", "devices", *node_config._SCHEMA}


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
        ("network.mtu", "`1400`"),
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


# --- wire-protocol.md: every layout table matches the encoders ----------------------------

WIRE = REPO / "docs" / "wire-protocol.md"
_LAYOUT = re.compile(r"<!-- layout: (\w+) -->")
_LAYOUT_ROW = re.compile(r"^\|\s*([^|]+?)\s*\|\s*([^|]+?)\s*\|\s*`(\w+)`\s*\|")


def layout_tables(text: str) -> dict[str, list[tuple[str, str, str]]]:
    """``name -> [(offset, size, field)]`` for each table after a ``layout`` marker."""
    tables: dict[str, list[tuple[str, str, str]]] = {}
    current: list[tuple[str, str, str]] | None = None
    for line in text.splitlines():
        marker = _LAYOUT.search(line)
        if marker is not None:
            current = tables.setdefault(marker[1], [])
            continue
        if current is None:
            continue
        if not line.startswith("|"):
            if current:
                current = None
            continue
        row = _LAYOUT_ROW.match(line)
        if row is not None and row[1] != "Offset":
            current.append((row[1], row[2], row[3]))
    return tables


def _value(expr: str, names: dict[str, int]) -> int:
    """``2652 + N + O`` with ``names`` bound; only sums of numbers and names."""
    total = 0
    for part in expr.split("+"):
        term = part.strip()
        total += int(term) if term.isdigit() else names[term]
    return total


def layout_problems(
    rows: list[tuple[str, str, str]],
    message: bytes,
    fields: dict[str, bytes | None],
    names: dict[str, int],
) -> list[str]:
    """Rows must tile ``message`` exactly, and each named field hold the expected bytes."""
    problems = []
    position = 0
    for offset_expr, size_expr, field in rows:
        offset, size = _value(offset_expr, names), _value(size_expr, names)
        if offset != position:
            problems.append(f"{field}: offset {offset}, but the previous field ends at {position}")
        expected = fields.get(field, b"")
        if field not in fields:
            problems.append(f"{field}: not a field of this message")
        elif expected is not None and message[offset : offset + size] != expected:
            problems.append(f"{field}: bytes {offset}..{offset + size} differ from the encoder's")
        position = offset + size
    if position != len(message):
        problems.append(f"the table covers {position} bytes, the message has {len(message)}")
    missing = set(fields) - {f for _, _, f in rows}
    if missing:
        problems.append(f"fields not in the table: {sorted(missing)}")
    return problems


def _examples() -> dict[str, tuple[bytes, dict[str, bytes | None], dict[str, int]]]:
    """Each documented message built by the code, with what each field must hold."""

    def u(n: int, size: int) -> bytes:
        return n.to_bytes(size, "big")

    out: dict[str, tuple[bytes, dict[str, bytes | None], dict[str, int]]] = {}

    master = token.MasterKey(bytes(range(32)))
    node = bytes(32)
    handle = b"\x0b" * 16
    credential = token.Credential.derive(master, node, handle)
    nonce16 = b"\x01" * 16
    text = token.mint_token(credential, 1_000_000.0, window_s=60, nonce=nonce16)
    raw = base64.urlsafe_b64decode(text)
    secret = token.credential_secret(master, node, handle)
    window = token.window_of(1_000_000.0, 60)
    tag = token.window_tag(secret, window)
    sealed = token.seal_handle(token.hide_key(master, node), nonce16, tag)
    mac = token.token_mac(secret, node, window, nonce16, sealed)
    out["token"] = (raw, {"nonce": nonce16, "sealed_tag": sealed, "mac": mac}, {})

    device, admin_key = HybridSigningKey.generate(), HybridSigningKey.generate()
    pub = device.public
    out["public_key"] = (
        pub.encode(),
        {"version": b"\x01", "ed25519": pub.ed25519, "mldsa": pub.mldsa},
        {},
    )
    sig = device.sign(b"label", b"message")
    out["signature"] = (
        sig.encode(),
        {
            "ed25519_length": u(len(sig.ed25519), 2),
            "ed25519": sig.ed25519,
            "mldsa_length": u(len(sig.mldsa), 2),
            "mldsa": sig.mldsa,
        },
        {},
    )
    cert = AdminKey(admin_key).issue(pub, "laptop", "acme", 1_700_000_000, 1_800_000_000)
    out["certificate"] = (
        cert.encode(),
        {
            "magic": b"SMCERT",
            "version": b"\x01",
            "serial": cert.serial,
            "device": pub.encode(),
            "name_length": u(6, 2),
            "name": b"laptop",
            "organisation_length": u(4, 2),
            "organisation": b"acme",
            "issued": u(1_700_000_000, 8),
            "expires": u(1_800_000_000, 8),
            "issuer": admin_key.node_id,
            "signature": cert.signature.encode(),
        },
        {"N": 6, "O": 4},
    )

    x, kem, rnd, nonce = b"\x11" * 32, b"\x22" * 1568, b"\x33" * 32, b"\x44" * 32
    ciphers = (Cipher.AES_256_GCM, Cipher.CHACHA20_POLY1305)
    hello = ClientHello(Mode.HYBRID, ciphers, x, kem, rnd, nonce, None)
    out["client_hello"] = (
        hello.encode(),
        {
            "type": b"\x51",
            "version": b"\x02",
            "mode": b"\x00",
            "cipher_count": b"\x02",
            "ciphers": b"\x01\x02",
            "flags": b"\x01",
            "x25519": x,
            "mlkem": kem,
            "random": rnd,
            "nonce": nonce,
        },
        {},
    )
    finish = ClientFinish(pub, cert, sig)
    out["client_finish"] = (
        finish.encode(),
        {
            "identity": pub.encode(),
            "certificate_length": u(len(cert.encode()), 2),
            "certificate": cert.encode(),
            "signature": sig.encode(),
        },
        {"C": len(cert.encode())},
    )
    evidence = b"\x55" * 100
    reply = ServerHello(Mode.HYBRID, Cipher.AES_256_GCM, x, kem, rnd, pub, evidence, sig)
    out["server_hello"] = (
        reply.encode(),
        {
            "type": b"\x52",
            "version": b"\x02",
            "mode": b"\x00",
            "cipher": b"\x01",
            "x25519": x,
            "mlkem": kem,
            "random": rnd,
            "identity": pub.encode(),
            "evidence_length": u(100, 4),
            "evidence": evidence,
            "signature": sig.encode(),
        },
        {"E": 100},
    )

    send = SendKey(Cipher.AES_256_GCM, bytearray(32), bytearray(12), 7, 0.0)
    send.next_counter = 5
    record = bytes(send.seal_body(RECORD_CLOSE, b"\x00"))
    out["record"] = (
        record,
        {
            "type": b"\x05",
            "epoch": u(7, 4),
            "counter": u(5, 8),
            "ciphertext": None,
            "tag": None,
        },
        {"n": 1},
    )

    pair = SessionPair.connect(now=0.0)
    init = pair.client.start_rekey(3, 1.0)
    pending = pair.client._pending
    assert pending is not None
    out["rekey_init"] = (
        pending.init_body,
        {
            "generation": u(1, 4),
            "clock_epoch": u(3, 4),
            "interval_ms": u(0, 4),  # this pair's client has no rotation interval
            "x25519": pending.ephemeral.x25519_public,
            "mlkem": pending.ephemeral.kem_public,
        },
        {},
    )
    replies: list[bytes] = []
    client = pair.client
    on_reply = client._on_rekey_reply

    def capture(body: bytes, now: float) -> Any:
        replies.append(bytes(body))
        return on_reply(body, now)

    client._on_rekey_reply = capture  # type: ignore[method-assign]
    [reply_record] = pair.exit.receive(init, 1.0).replies
    client.receive(reply_record, 1.0)
    [reply_body] = replies
    assert client.epoch == 1
    out["rekey_reply"] = (
        reply_body,
        {"generation": u(1, 4), "x25519": None, "mlkem": None},
        {},
    )

    attester = FakeAttester()  # real-format quote, boot event log and IMA list
    attester.load("/usr/bin/python3.11", b"interpreter")
    node_id = pub.node_id
    blob = attester.evidence(nonce, node_id, 1_800_000_000.0)
    e = attestation_evidence.decode(blob)
    event_log, ima_list = zlib.compress(e.event_log, 6), zlib.compress(e.ima_list, 6)
    pcrs = b"".join(bytes([index]) + value for index, value in e.pcrs)
    out["evidence"] = (
        blob,
        {
            "magic": b"SMEV",
            "version": b"\x02",
            "nonce": nonce,
            "node_id": node_id,
            "attest_size": u(len(e.attest), 2),
            "attest": e.attest,
            "signature_size": u(len(e.signature), 2),
            "signature": e.signature,
            "ak_public_size": u(len(e.ak_public), 2),
            "ak_public": attester.ak_public,
            "pcr_count": bytes([len(e.pcrs)]),
            "pcrs": pcrs,
            "event_log_size": u(len(event_log), 4),
            "event_log": event_log,
            "ima_first": u(0, 4),
            "ima_list_size": u(len(ima_list), 4),
            "ima_list": ima_list,
        },
        {
            "A": len(e.attest),
            "S": len(e.signature),
            "P": len(e.ak_public),
            "R": len(pcrs),
            "L": len(event_log),
            "M": len(ima_list),
        },
    )

    operator, registry = b"\x0a" * 20, b"\x0b" * 20
    terms = ceremony.Terms(operator, 31337, registry)
    ak_public = attester.ak_public
    request = ceremony.Request(b"ek", b"cert", ak_public, pub.encode(), node_id, terms)
    challenge = Challenge(b"\x66" * 70, b"\x77" * 258)
    out["enrol_binding"] = (
        ceremony.binding_message(request, challenge),
        {
            "domain": b"shadowmesh/enrol/v1",
            "operator": operator,
            "chain_id": u(31337, 32),
            "registry": registry,
            "node_id": node_id,
            "ak_sha256": hashlib.sha256(ak_public).digest(),
            "challenge_sha256": hashlib.sha256(
                u(70, 2) + challenge.credential_blob + challenge.secret
            ).digest(),
        },
        {},
    )
    out.update(_circuit_examples(pub, sig))
    return out


def _circuit_examples(
    pub: Any, sig: Any
) -> dict[str, tuple[bytes, dict[str, bytes | None], dict[str, int]]]:
    """Section 8: cells, onion slots, relay messages, EXTEND, CREATE and CREATED."""
    from l2bridge.protocol import cells, hopshake, onion

    def u(n: int, size: int) -> bytes:
        return n.to_bytes(size, "big")

    out: dict[str, tuple[bytes, dict[str, bytes | None], dict[str, int]]] = {}
    x, kem, rnd, nonce = b"\x11" * 32, b"\x22" * 1568, b"\x33" * 32, b"\x44" * 32
    create = hopshake.Create(Mode.HYBRID, x, kem, nonce)
    (cell,) = cells.handshake_cells(cells.CellKind.CREATE, 9, create.encode())
    out["cell"] = (
        cell,
        {"magic": b"SMC\x01", "kind": b"\x01", "circuit": u(9, 4), "body": cell[9:]},
        {},
    )
    out["create"] = (
        create.encode(),
        {"type": b"\x61", "version": b"\x02", "mode": b"\x00", "x25519": x, "mlkem": kem,
         "nonce": nonce},
        {},
    )  # fmt: skip
    evidence = b"\x55" * 100
    created = hopshake.Created(Mode.HYBRID, x, kem, rnd, pub, evidence, sig)
    out["created"] = (
        created.encode(),
        {"type": b"\x62", "version": b"\x02", "mode": b"\x00", "x25519": x, "mlkem": kem,
         "random": rnd, "identity": pub.encode(), "evidence_length": u(100, 4),
         "evidence": evidence, "signature": sig.encode()},
        {"E": 100},
    )  # fmt: skip
    fwd, _ = onion.derive_hop(b"k" * 64, b"salt")
    sender = onion.LayerSender(fwd, onion.FORWARD)
    (payload,) = cells.relay_payloads(cells.RelayCommand.DATA, b"frame")
    body = onion.wrap_forward([sender], payload, 3)
    out["relay_body"] = (body, {"header": None, "payload": None}, {"S": 512})
    _ct, slot = sender.seal(payload, 4)
    out["onion_slot"] = (slot, {"block": None, "tag": None}, {})
    out["relay_message"] = (
        payload,
        {"command": b"\x01", "flags": b"\x00", "length": u(5, 4), "data": b"frame",
         "padding": bytes(512 - 11)},
        {"n": 5, "P": 512 - 11},
    )  # fmt: skip
    node = b"\x66" * 32
    extend = cells.Extend(node, "ws://a/ws", b"CR")
    out["extend"] = (
        extend.encode(),
        {"node_id": node, "endpoint_length": u(9, 2), "endpoint": b"ws://a/ws",
         "create_length": u(2, 2), "create": b"CR"},
        {"U": 9, "C": 2},
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def examples() -> dict[str, tuple[bytes, dict[str, bytes | None], dict[str, int]]]:
    return _examples()


def test_every_layout_table_matches_the_encoder(examples: dict[str, Any]) -> None:
    tables = layout_tables(WIRE.read_text(encoding="utf-8"))
    assert set(tables) == set(examples), "a layout table without an example, or the reverse"
    problems = {
        name: layout_problems(tables[name], *examples[name])
        for name in tables
        if layout_problems(tables[name], *examples[name])
    }
    assert problems == {}


def test_the_record_example_opens_with_its_header_as_associated_data(
    examples: dict[str, Any],
) -> None:
    record = examples["record"][0]
    nonce = (5).to_bytes(12, "big")  # IV of zeros XOR counter 5
    assert AESGCM(bytes(32)).decrypt(nonce, record[13:], record[:13]) == b"\x00"


def test_a_wrong_offset_or_size_is_caught(examples: dict[str, Any]) -> None:
    rows = layout_tables(WIRE.read_text(encoding="utf-8"))["client_hello"]
    message, fields, names = examples["client_hello"]
    shifted = [(o, s, f) if f != "random" else (o, "31", f) for o, s, f in rows]
    assert layout_problems(shifted, message, fields, names)
    swapped = [(o, s, {"random": "nonce", "nonce": "random"}.get(f, f)) for o, s, f in rows]
    assert layout_problems(swapped, message, fields, names)
    dropped = [r for r in rows if r[2] != "flags"]
    assert layout_problems(dropped, message, fields, names)


@pytest.mark.parametrize(
    ("phrase", "value", "actual"),
    [
        ("266 541 bytes", 266_541, "MAX_RECORD_SIZE"),
        ("1984 counters", 1984, "REPLAY_WINDOW_SIZE"),
        ("1 ≤ length ≤ 65 600", 65_600, "MAX_FRAME_SIZE"),
        ("at most 2^22 records", 2**22, "REJECT_AFTER_RECORDS"),
        ("2^21 records", 2**21, "REKEY_AFTER_RECORDS"),
        ("lives at most\n3 hours", 3 * 3600, "REJECT_AFTER_SECONDS"),
        ("or 2 hours", 2 * 3600, "REKEY_AFTER_SECONDS"),
        ("keeps the old receive key 2\nseconds", 2, "REKEY_GRACE_SECONDS"),
        ("restarted\nafter 10 seconds", 10, "REKEY_TIMEOUT_SECONDS"),
        ("E, at most 3 MiB", 3 * 1024 * 1024, "MAX_EVIDENCE_SIZE"),
        ("a\nhop's evidence is at most 256 KiB", 256 * 1024, "MAX_HOP_EVIDENCE_SIZE"),
        ("at most 320 KiB", 320 * 1024, "MAX_HANDSHAKE_MESSAGE_SIZE"),
        ("a hop handshake is at most 320 KiB", 320 * 1024, "MAX_HOP_HANDSHAKE"),
        ("a message is at most 321 KiB", 321 * 1024, "MAX_RELAY_MESSAGE"),
    ],
)
def test_numbers_in_the_text_are_the_constants(phrase: str, value: int, actual: str) -> None:
    assert getattr(l2_constants, actual) == value
    text = " ".join(WIRE.read_text(encoding="utf-8").split())
    assert " ".join(phrase.split()) in text


@pytest.mark.parametrize(
    ("phrase", "value", "actual"),
    [
        ("at most\n100 000 per window", 100_000, "REPLAY_CACHE_PER_WINDOW"),
        ("pings every 25 s", 25, "SERVER_PING_INTERVAL_S"),
        ("limited to 4 MiB", 4 << 20, "MAX_MESSAGE_BYTES"),
        ("64-character", 64, "TOKEN_TEXT_LENGTH"),
    ],
)
def test_transport_numbers_in_the_text_are_the_constants(
    phrase: str, value: int, actual: str
) -> None:
    assert getattr(transport_constants, actual) == value
    text = " ".join(WIRE.read_text(encoding="utf-8").split())
    assert " ".join(phrase.split()) in text


def test_the_evidence_example_is_what_the_verifier_reads(examples: dict[str, Any]) -> None:
    """The evidence table's example decodes to the logs the fake kernel kept."""
    blob, fields, _ = examples["evidence"]
    e = attestation_evidence.decode(blob)
    assert zlib.decompress(fields["event_log"]) == e.event_log
    assert zlib.decompress(fields["ima_list"]) == e.ima_list
    assert [index for index, _ in e.pcrs] == list(attestation_constants.QUOTE_PCRS)


@pytest.mark.parametrize(
    ("phrase", "value", "actual"),
    [
        ("A, at most 1024", 1024, "MAX_ATTEST_SIZE"),
        ("S, at most 256", 256, "MAX_SIGNATURE_SIZE"),
        ("P, at most 512", 512, "MAX_PUBLIC_SIZE"),
        ("n, at most 24", 24, "PCR_COUNT"),
        ("at most 4 MiB once expanded", 4 << 20, "MAX_EVENT_LOG_SIZE"),
        ("below 100 000", 100_000, "MAX_IMA_ENTRIES"),
        ("at most 16 MiB once expanded", 16 << 20, "MAX_IMA_LIST_SIZE"),
        (
            'SHA-256("shadowmesh/handshake/v1" ‖ nonce',
            b"shadowmesh/handshake/v1",
            "HANDSHAKE_DOMAIN",
        ),
    ],
)
def test_attestation_numbers_in_the_text_are_the_constants(
    phrase: str, value: object, actual: str
) -> None:
    assert getattr(attestation_constants, actual) == value
    text = " ".join(WIRE.read_text(encoding="utf-8").split())
    assert " ".join(phrase.split()) in text


def test_registry_domain_and_voucher_in_the_text_are_the_contract_s() -> None:
    text = " ".join(WIRE.read_text(encoding="utf-8").split())
    source = (REPO / "contracts" / "ExitNodeRegistry.sol").read_text(encoding="utf-8")
    domain = contracts_constants.REGISTRY_DOMAIN.decode()
    assert f'"{domain}"' in text and f'"{domain}"' in source
    bitmap = "0x" + contracts_constants.PCR_SELECT_BITMAP.hex().upper()
    assert f"`{bitmap}`" in text and f"PCR_SELECTION = {bitmap};" in source
    for typed in (
        "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)",
        "Enrolment(address operator,bytes32 nodeId,bytes32 akX,bytes32 akY)",
    ):
        assert typed in text and f'"{typed}"' in source
    assert f'name "{contracts_constants.EIP712_NAME}"' in text
    assert f'version "{contracts_constants.EIP712_VERSION}"' in text
    assert f"({contracts_constants.DEFAULT_FRESHNESS_BLOCKS} by default, at most 256)" in text
    online = (REPO / "exitnode" / "enrol_online.py").read_text(encoding="utf-8")
    assert 'CHALLENGE_DOMAIN = b"shadowmesh/enrol/challenge/v1"' in online
    assert '"shadowmesh/enrol/challenge/v1"' in text


# --- links --------------------------------------------------------------------------------

_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _markdown_files() -> list[Path]:
    return [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]


def test_the_four_documents_exist() -> None:
    names = {p.name for p in (REPO / "docs").glob("*.md")}
    assert {"architecture.md", "threat-model.md", "wire-protocol.md", "configuration.md"} <= names


def test_relative_links_resolve() -> None:
    broken = []
    for page in _markdown_files():
        for target in _LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue  # http:, https:, mailto:
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert broken == []


def test_a_broken_link_is_caught(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("[ok](page.md) [web](https://example.org) [gone](docs/nothing.md#part)\n")
    targets = [t for t in _LINK.findall(page.read_text()) if not re.match(r"[a-z]+:", t)]
    assert [t for t in targets if not (tmp_path / t).exists()] == ["docs/nothing.md"]
