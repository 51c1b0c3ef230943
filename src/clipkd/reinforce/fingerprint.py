"""A sample's content fingerprint: what its cached teacher outputs were computed from."""

from __future__ import annotations

import hashlib
from typing import Optional

FINGERPRINT_BYTES = 16


def fingerprint(image: bytes, caption: Optional[str]) -> bytes:
    """First 16 bytes of SHA-256 over (8-byte big-endian length, bytes) of the image bytes, then of the UTF-8
    caption: the lengths keep the boundary from moving. A missing caption counts as empty; text holding bytes
    that were not UTF-8 (read with ``surrogateescape``) is hashed as those original bytes."""
    text = (caption or "").encode("utf-8", "surrogateescape")
    h = hashlib.sha256()
    for part in (image, text):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()[:FINGERPRINT_BYTES]
