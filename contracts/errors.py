"""Exceptions of the registry client.

RegistryError                 root of everything raised by ``contracts``
├── ArtifactError             the committed build artifact is missing, unreadable or stale
├── QuoteFormatError          a quote, signature or key cannot be encoded for the contract
├── VoucherError              an enrolment voucher is malformed, unreadable or for another node
├── KeyLoadError              no operator key, or the keystore could not be decrypted
├── ChainError                the RPC endpoint is unreachable or answered nonsense
└── RegistryReverted          the contract refused a call; ``reason`` is its revert string
"""

from __future__ import annotations


class RegistryError(Exception):
    """Root of the registry client's exceptions."""


class ArtifactError(RegistryError):
    """The ABI/bytecode artifact is missing, unreadable or does not match the source."""


class QuoteFormatError(RegistryError):
    """A quote, signature or public key is not in the shared format."""


class VoucherError(RegistryError):
    """An enrolment voucher is malformed, cannot be read, or vouches for another
    (registry, chain, node, AK) than the one it is used for."""


class KeyLoadError(RegistryError):
    """The operator key could not be found or decrypted."""


class ChainError(RegistryError):
    """The chain's RPC endpoint failed or gave an unusable answer."""


class RegistryReverted(RegistryError):
    """The contract reverted; ``reason`` is its revert string ("" when it gave none)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason or "reverted without a reason")
        self.reason = reason
