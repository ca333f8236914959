"""Every size, limit, identifier and timer of the attestation package."""

from __future__ import annotations

# --- TPM 2.0 identifiers (TCG TPM 2.0 Library, Part 2) ---
TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ALG_SHA256 = 0x000B
TPM_ALG_NULL = 0x0010
TPM_ALG_ECDSA = 0x0018
TPM_ALG_ECC = 0x0023
TPM_ECC_NIST_P256 = 0x0003

# TPMA_OBJECT bits an AK must (or must not) have.
TPMA_FIXED_TPM = 0x00000002
TPMA_FIXED_PARENT = 0x00000010
TPMA_SENSITIVE_DATA_ORIGIN = 0x00000020
TPMA_USER_WITH_AUTH = 0x00000040
TPMA_RESTRICTED = 0x00010000
TPMA_DECRYPT = 0x00020000
TPMA_SIGN_ENCRYPT = 0x00040000
AK_REQUIRED_ATTRIBUTES = (
    TPMA_FIXED_TPM | TPMA_FIXED_PARENT | TPMA_SENSITIVE_DATA_ORIGIN | TPMA_RESTRICTED
) | TPMA_SIGN_ENCRYPT

SHA256_SIZE = 32
P256_COORD_SIZE = 32
PCR_COUNT = 24  # PC Client TPMs have 24 PCRs per bank
PCR_SELECT_SIZE = 3  # bytes of bitmap for 24 PCRs

# --- Handshake quotes ---
# The registry's quotes use a domain of their own (contracts/), never this one.
HANDSHAKE_DOMAIN = b"shadowmesh/handshake/v1"
NONCE_SIZE = 32
NODE_ID_SIZE = 32

# --- What is quoted: boot PCRs 0-9 (firmware, boot loader, kernel command line) and the
# kernel's runtime measurements in PCR 10. None of them can be reset from software.
QUOTE_PCRS = tuple(range(11))
DEFAULT_CMDLINE_REQUIRES = ("ima_policy=tcb", "ima_template=ima-ng", "ima_hash=sha256")

# --- Evidence encoding ---
EVIDENCE_MAGIC = b"SMEV"
EVIDENCE_VERSION = 2
MAX_EVIDENCE_SIZE = 3 * 1024 * 1024  # the ServerHello's limit (l2bridge.constants)
MAX_ATTEST_SIZE = 1024
MAX_SIGNATURE_SIZE = 256
MAX_PUBLIC_SIZE = 512
MAX_TPM2B_SIZE = 1024  # any TPM2B inside a structure we parse

# --- Verification ---
DEFAULT_MAX_AGE_S = 300.0
# The TPM clock may run this much slower than ours before a quote counts as stale.
TPM_CLOCK_DRIFT = 0.05
POLICY_VERSION = 2

# --- Exit-side provider and schedule ---
DEFAULT_REATTEST_INTERVAL_S = 3600.0
RATE_BURST = 4  # quotes answered back to back
RATE_PER_SECOND = 2.0  # then this many per second
REATTEST_RETRY_S = 60.0  # after a failed scheduled attestation

# --- TPM objects ---
EK_CERT_NV_RSA2048 = 0x01C00002
EK_CERT_NV_ECC256 = 0x01C0000A
CREDENTIAL_SIZE = 32  # secret sent through MakeCredential
NV_READ_CHUNK = 512

# --- TCG PC Client event log ---
EVENT_LOG_PATH = "/sys/kernel/security/tpm0/binary_bios_measurements"
MAX_EVENT_LOG_SIZE = 4 * 1024 * 1024
MAX_EVENT_DATA = 1024 * 1024
MAX_EVENT_DIGESTS = 8
EV_NO_ACTION = 0x00000003
SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"
STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\x00"
# TCG algorithm id -> digest size, for the banks an event log may carry.
EVENT_LOG_DIGEST_SIZES = {0x0004: 20, 0x000B: 32, 0x000C: 48, 0x000D: 64, 0x0012: 32}
MAX_EVENT_COUNT = 10_000

# --- Linux IMA (runtime measurements, PCR 10) ---
IMA_PCR = 10
BOOT_AGGREGATE_PCRS = 10  # boot_aggregate covers PCRs 0-9 in non-SHA-1 banks
BOOT_AGGREGATE_PATH = "boot_aggregate"
IMA_LIST_PATH = "/sys/kernel/security/ima/binary_runtime_measurements"
MAX_IMA_PATH = 4096  # PATH_MAX, counting the NUL
MAX_IMA_TEMPLATE = 8 + 8 + SHA256_SIZE + MAX_IMA_PATH
MAX_IMA_ENTRIES = 100_000
MAX_IMA_LIST_SIZE = 16 * 1024 * 1024

# --- Runtime policy (Keylime layout) ---
MAX_RUNTIME_POLICY_SIZE = 64 * 1024 * 1024
MAX_POLICY_PATHS = 500_000
MAX_POLICY_DIGESTS_PER_PATH = 64
