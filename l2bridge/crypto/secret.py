"""Handling of secret bytes: keep them in bytearrays and wipe them when retired.

Python cannot promise that no copy survives (``cryptography`` keeps its own
copy of a key inside its cipher object until that object is freed), so this is
best effort: we zero every buffer we own and drop the cipher objects.
"""

from __future__ import annotations

import hmac


def wipe(buf: bytearray | memoryview | None) -> None:
    """Overwrite a writable buffer with zeros in place (no-op for ``None``)."""
    if buf is None:
        return
    view = memoryview(buf).cast("B")
    view[:] = bytes(len(view))


def secret_copy(data: bytes | bytearray | memoryview) -> bytearray:
    """A bytearray copy of ``data`` that the caller owns and must ``wipe``."""
    return bytearray(data)


def equal(a: bytes | bytearray | memoryview, b: bytes | bytearray | memoryview) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(bytes(a), bytes(b))
