"""Regions as the registry stores them (``bytes8``; see ``_checkRegion`` in the contract).

A region is an ISO 3166 code in upper-case ASCII: a country (ISO 3166-1 alpha-2, ``"DE"``),
optionally followed by ``-`` and a subdivision of 1..3 letters or digits (ISO 3166-2,
``"US-CA"``, ``"GB-SCT"``). The country is the node's jurisdiction. On chain the code is
zero-padded on the right to 8 bytes; all zeros means the operator did not say. A region is the
operator's claim, not a proof of where the node runs.
"""

from __future__ import annotations

import re

from contracts.constants import REGION_BYTES

_REGION = re.compile(r"[A-Z]{2}(-[A-Z0-9]{1,3})?")


def check_region(code: str) -> str:
    """``code`` if it is a well-formed region; ValueError (naming the format) otherwise."""
    if not _REGION.fullmatch(code):
        raise ValueError(
            f"{code!r} is not a region: ISO 3166 country code in capitals, optionally "
            "with '-' and a subdivision of 1-3 letters or digits (DE, US-CA, GB-SCT)"
        )
    return code


def encode_region(code: str | None) -> bytes:
    """The contract's ``bytes8`` for ``code`` (None or "": all zeros, not said)."""
    if not code:
        return bytes(REGION_BYTES)
    return check_region(code).encode("ascii").ljust(REGION_BYTES, b"\0")


def decode_region(raw: bytes) -> str | None:
    """The region in a ``bytes8`` read from the chain; None when not said or not well formed
    (a client treats a code it cannot read as unknown rather than trusting its bytes)."""
    if len(raw) != REGION_BYTES:
        return None
    text = raw.rstrip(b"\0")
    if not text:
        return None
    try:
        code = text.decode("ascii")
        return check_region(code)
    except (UnicodeDecodeError, ValueError):
        return None


def jurisdiction(region: str) -> str:
    """The country of an ISO 3166 region; any other name (a client's own regions file may use
    free names such as ``eu-west``) is its own jurisdiction."""
    return region[:2] if _REGION.fullmatch(region) else region
