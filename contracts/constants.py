"""Every size, limit and default of the registry client, in one place.

Values that the contract also knows (quote format, qualifying-data domain, EIP-712 domain)
must match ``ExitNodeRegistry.sol``; the deployment defaults are the constructor arguments
``RegistryClient.deploy`` uses when none are given.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_PATH = PACKAGE_DIR / "ExitNodeRegistry.sol"
ARTIFACT_PATH = PACKAGE_DIR / "build" / "ExitNodeRegistry.json"
NODE_MODULES = PACKAGE_DIR / "node_modules"

WEI_PER_ETHER = 10**18

# Deployment defaults (constructor arguments).
DEFAULT_MINIMUM_STAKE_WEI = 10 * WEI_PER_ETHER  # the registry's MINIMUM_STAKE
DEFAULT_ATTESTATION_INTERVAL_S = 3600  # hourly attestation
DEFAULT_UNBONDING_DELAY_S = 7 * 24 * 3600
# Bounds the contract puts on them (ExitNodeRegistry.MIN_INTERVAL etc.); the unbonding delay
# must also be at least twice the attestation interval.
MIN_INTERVAL_S = 5
MAX_INTERVAL_S = 7 * 24 * 3600
MIN_UNBONDING_DELAY_S = 3600
MAX_UNBONDING_DELAY_S = 365 * 24 * 3600
DEFAULT_FRESHNESS_BLOCKS = 64  # a quote's nonce block must be at most this old (<= 256)
MAX_FRESHNESS_BLOCKS = 256  # blockhash() reaches no further

# Registry quote format (see ExitNodeRegistry.sol). The qualifying data is the registry's own
# domain: keccak256(REGISTRY_DOMAIN || chainid u256 || registry address || blockhash || nodeId),
# never the handshake's SHA-256 domain, so no handshake quote is ever a registry quote.
REGISTRY_DOMAIN = b"shadowmesh/registry/v1"
TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ALG_SHA256 = 0x000B
TPM_ALG_ECDSA = 0x0018
NONCE_BYTES = 32
NODE_ID_BYTES = 32
P256_COORD_BYTES = 32
MAX_ATTEST_BYTES = 1024  # the contract refuses larger TPMS_ATTEST blobs
MAX_ENDPOINT_BYTES = 256
# The one PCR selection the contract takes (ExitNodeRegistry.PCR_SELECTION): SHA-256 bank,
# PCRs 0-9, the boot state (byte i bit j = PCR 8i + j). PCR 10 (IMA) is checked by clients.
QUOTED_PCRS = tuple(range(10))
PCR_SELECT_BITMAP = bytes([0xFF, 0x03, 0x00])

# Releases: the release number this code is (its runtime policy's hash is what the owner
# approves for it on chain, ExitNodeRegistry.approveRelease). Bump with each release.
SOFTWARE_RELEASE = 1
MAX_RELEASE = 2**64 - 1

# Enrolment vouchers (ExitNodeRegistry._checkVoucher): r || s || v over the EIP-712 digest of
# Enrolment(operator, nodeId, akX, akY) in the domain below.
EIP712_NAME = "ShadowMesh ExitNodeRegistry"
EIP712_VERSION = "2"
VOUCHER_BYTES = 65
VOUCHER_V_VALUES = (27, 28)
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_HALF_ORDER = SECP256K1_ORDER // 2  # larger s: the malleable twin, refused
MAX_VOUCHER_FILE_BYTES = 4096

# Misbehaviour kinds (ExitNodeRegistry.MISBEHAVIOR_*).
MISBEHAVIOR_OUT_OF_POLICY = 1
MISBEHAVIOR_MISSED_WINDOW = 2

# Node status (ExitNodeRegistry.Status).
STATUS_NAMES = ("none", "active", "stale", "unbonding")

# Client behaviour.
MAX_PAGE = 500  # the contract's limit per listHealthy call
DEFAULT_PAGE = 100
RECEIPT_TIMEOUT_S = 30.0
RPC_TIMEOUT_S = 10.0
GAS_HEADROOM_DIVISOR = 5  # send estimate + estimate/5 as the gas limit
KEY_ENV = "SHADOWMESH_REGISTRY_KEY"  # hex private key of the operator
KEYSTORE_PASSWORD_ENV = "SHADOWMESH_KEYSTORE_PASSWORD"  # noqa: S105 - a variable name

# A node's region on chain: bytes8, an ISO 3166 code zero-padded on the right (contracts.region)
REGION_BYTES = 8
