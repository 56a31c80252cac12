"""Checksum verification of stored bytes."""

from __future__ import annotations

import hmac

from fl.errors import IntegrityError
from fl.serialization import sha256_hex


def verify_sha256(data: bytes, expected: str, what: str) -> None:
    """Raise `IntegrityError` naming `what` and both hashes unless `data` hashes to `expected`."""
    actual = sha256_hex(data)
    if not hmac.compare_digest(actual, str(expected)):
        raise IntegrityError(
            f"{what}: stored bytes have sha256 {actual} but {expected} was recorded; "
            "the object is corrupted or was replaced"
        )
