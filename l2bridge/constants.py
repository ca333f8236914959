"""Every size, limit and timer of the l2bridge protocol cores, in one place.

Times are seconds (floats, the same clock the driver passes in as ``now``).
"""

from __future__ import annotations

from enum import IntEnum


class Mode(IntEnum):
    """``post_quantum_mode``: which primitives the handshake and rekeys use."""

    HYBRID = 0  # X25519 + ML-KEM-1024, Ed25519 + ML-DSA-87 (default)
    PQC_ONLY = 1  # ML-KEM-1024, ML-DSA-87
    CLASSICAL = 2  # X25519, Ed25519 (for comparison only)

    @classmethod
    def from_name(cls, name: str) -> Mode:
        """``"hybrid"`` / ``"pqc_only"`` / ``"classical"`` (the config spelling)."""
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown post_quantum_mode {name!r}") from None

    @property
    def uses_classical(self) -> bool:
        return self is not Mode.PQC_ONLY

    @property
    def uses_pq(self) -> bool:
        return self is not Mode.CLASSICAL


class Cipher(IntEnum):
    AES_256_GCM = 1
    CHACHA20_POLY1305 = 2


PROTOCOL_VERSION = 2  # 2: the client names itself only in the sealed ClientFinish

# Primitive sizes (bytes).
X25519_PUBLIC_SIZE = 32
MLKEM_PUBLIC_SIZE = 1568  # ML-KEM-1024 encapsulation key
MLKEM_CIPHERTEXT_SIZE = 1568
MLKEM_SEED_SIZE = 64  # d || z
ED25519_PUBLIC_SIZE = 32
ED25519_SIGNATURE_SIZE = 64
ED25519_SEED_SIZE = 32
MLDSA_PUBLIC_SIZE = 2592  # ML-DSA-87
MLDSA_SIGNATURE_SIZE = 4627
MLDSA_SEED_SIZE = 32
NODE_ID_SIZE = 32  # SHA-256
RANDOM_SIZE = 32
ATTESTATION_NONCE_SIZE = 32
AEAD_KEY_SIZE = 32
AEAD_NONCE_SIZE = 12
AEAD_TAG_SIZE = 16
CHAIN_SECRET_SIZE = 48  # SHA-384 output

# Handshake messages.
MSG_CLIENT_HELLO = 0x51
MSG_SERVER_HELLO = 0x52
MAX_CIPHER_CHOICES = 4
# The exit's evidence in its ServerHello: a quote, the boot log and the kernel's IMA list
# (compressed, about 70 bytes per entry: a distribution's tcb list of thousands of entries,
# growing while the machine runs, must fit). Only a client receives it.
MAX_EVIDENCE_SIZE = 3 * 1024 * 1024
MAX_SERVER_HELLO_SIZE = MAX_EVIDENCE_SIZE + 64 * 1024
# Every other handshake message (what an exit or a hop reads from whoever connects, and a
# hop's CREATED, whose evidence travels in cells and is reassembled by the client).
MAX_HOP_EVIDENCE_SIZE = 256 * 1024
MAX_CERTIFICATE_SIZE = 16 * 1024
MAX_HANDSHAKE_MESSAGE_SIZE = MAX_HOP_EVIDENCE_SIZE + 64 * 1024

# Records: type (1) | key epoch (4) | counter (8), all used as associated data.
RECORD_DATA = 0x01
RECORD_FINISH = 0x02  # client's hybrid signature over the transcript
RECORD_REKEY_INIT = 0x03
RECORD_REKEY_REPLY = 0x04
RECORD_CLOSE = 0x05
RECORD_HEADER_SIZE = 13
# One frame: a GSO super-frame of up to 64 KiB plus its virtio-net header.
MAX_FRAME_SIZE = 65536 + 64
FRAME_LENGTH_SIZE = 4
# A batch: up to four full super-frames (plus length fields and padding).
MAX_RECORD_PLAINTEXT = 4 * (MAX_FRAME_SIZE + FRAME_LENGTH_SIZE) + 4096
MAX_RECORD_SIZE = RECORD_HEADER_SIZE + MAX_RECORD_PLAINTEXT + AEAD_TAG_SIZE
MAX_EPOCH = 2**32 - 1
MAX_COUNTER = 2**64 - 1

# Replay filter (RFC 6479): a ring of 64-bit blocks; one block is kept spare.
REPLAY_BLOCK_BITS = 64
REPLAY_RING_BLOCKS = 32
REPLAY_WINDOW_SIZE = (REPLAY_RING_BLOCKS - 1) * REPLAY_BLOCK_BITS

# Key lifetime.  AES-GCM's safety margin with records of up to ~260 KiB is
# about 2**22.5 records per key (TLS 1.3's 2**24.5 for 16 KiB records, scaled),
# so a key is refused past 2**22 records; the driver is told to rekey at half.
REKEY_AFTER_RECORDS = 2**21
REJECT_AFTER_RECORDS = 2**22
REJECT_AFTER_SECONDS = 3 * 3600.0  # default; sessions take their own from config
REKEY_AFTER_SECONDS = 2 * 3600.0  # needs_rekey() turns true (the clock usually rotates sooner)
REKEY_GRACE_SECONDS = 2.0  # the previous epoch is still accepted this long
REKEY_TIMEOUT_SECONDS = 10.0  # a pending rekey may be restarted after this
MAX_EPOCH_SKEW = 1  # epochs either side of the exit's own clock epoch
# A client's rotation interval in REKEY_INIT (ms; 0: none): key_rotation_interval's range
MIN_REKEY_INTERVAL_MS = 1_000
MAX_REKEY_INTERVAL_MS = 86_400_000

# Close reasons carried in a CLOSE record (one byte; never free text).
CLOSE_NORMAL = 0
CLOSE_NOT_AUTHORIZED = 1
CLOSE_PROTOCOL_ERROR = 2
CLOSE_KEY_EXPIRED = 3
CLOSE_REVOKED = 4  # the device's certificate was revoked: the client stops retrying

# Identities, certificates, lists.
CERT_VERSION = 1
CERT_SERIAL_SIZE = 16
MAX_NAME_SIZE = 255
MAX_VERIFIED_CERTIFICATES = 4096  # the Authorizer remembers this many verified signatures
MAX_REASON_SIZE = 255
MAX_LIST_ENTRIES = 100_000

# Cover traffic (l2bridge.node.cover): mean records/s, padding bytes min..max, byte budget per
# second, idle time before cover starts. Sizes stay under one Ethernet frame.
COVER_ON = (1.0, 64, 1200, 4096.0, 1.0)
COVER_AGGRESSIVE = (10.0, 64, 1400, 32768.0, 0.2)
DEFAULT_PAD_TO = 256  # obfuscation.padding: records padded to multiples of this

# Multi-hop circuits (l2bridge.protocol.onion, cells, hopshake, circuit).
MAX_HOPS = 5  # onion headers are always this many slots, whatever the circuit's length
ONION_SLOT_SIZE = 32  # per hop: AES block holding (sequence, generation) + the layer's tag
ONION_HEADER_SIZE = MAX_HOPS * ONION_SLOT_SIZE
# Relay payload size classes (bytes inside every layer). A cell is padded up to the
# smallest class its message fits in: small, a 1500-byte frame, a jumbo 9000-byte frame,
# then GSO super-frames in steps that waste at most a third (every layer of every hop seals
# the padding too, so one 64 KiB class for all super-frames cost several times the work).
# A whole cell (9-byte cell header + onion header + the largest class) must itself fit in
# one link frame (MAX_FRAME_SIZE), so a GSO super-frame above 65 274 bytes takes two cells.
RELAY_SIZE_CLASSES = (512, 2048, 9728, 16384, 24576, 32768, 49152, 65280)
RELAY_MESSAGE_HEADER_SIZE = 6  # command u8 | flags u8 | length u32
CONTROL_FRAGMENT_CLASS = 2048  # control messages (EXTEND/EXTENDED) go out in this class
# A hop's CREATED carries the hop's evidence, up to MAX_HOP_EVIDENCE_SIZE; EXTENDED wraps
# a CREATED (plus its own few header bytes).
MAX_HOP_HANDSHAKE = MAX_HANDSHAKE_MESSAGE_SIZE  # CREATE / CREATED reassembly bound
MAX_RELAY_MESSAGE = MAX_HOP_HANDSHAKE + 1024  # relay-message reassembly bound
CIRCUIT_GRACE_SECONDS = 10.0  # the previous layer generation is still opened this long
MAX_GENERATION_STEP = 1  # a receiver follows a sender at most this many ratchets ahead

# The exit's first look at a ClientHello (protocol/helloguard.py), before any work for it.
HELLO_REPLAY_WINDOW_S = 600.0  # a hello random seen within this long is refused again
HELLO_REPLAY_CAPACITY = 65536  # randoms remembered; past it the oldest is forgotten
QUOTES_PER_DEVICE_PER_MINUTE = 6.0  # attested hellos per device (or source) per minute
QUOTE_QUOTA_KEYS = 16384  # devices/sources whose quota is tracked at once
