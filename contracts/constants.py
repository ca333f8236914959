"""Every size, limit and default of the registry client, in one place.

Values that the contract also knows (quote format, qualifying-data prefix) must match
``ExitNodeRegistry.sol``; the deployment defaults are the constructor arguments
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
DEFAULT_FRESHNESS_BLOCKS = 64  # a quote's nonce block must be at most this old (<= 256)
MAX_FRESHNESS_BLOCKS = 256  # blockhash() reaches no further

# Shared quote format (agreed with attestation/; see ExitNodeRegistry.sol).
QUALIFYING_PREFIX = b"shadowmesh-attest-v1"
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
# PCRs 0-7 and 23, as attestation.constants.DEFAULT_QUOTE_PCRS (byte i bit j = PCR 8i + j).
QUOTED_PCRS = (0, 1, 2, 3, 4, 5, 6, 7, 23)
PCR_SELECT_BITMAP = bytes([0xFF, 0x00, 0x80])

# Enrolment vouchers (ExitNodeRegistry._checkVoucher): r || s || v, EIP-191 personal_sign.
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
