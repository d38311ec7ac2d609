"""Host-assigned identifiers: sortable, unique, URL-safe (SPEC §1 "run").

A ULID-style id: 48 bits of milliseconds since the epoch followed by 80 random bits, in
Crockford base32 (26 characters). Ids made by one process are strictly increasing even within a
millisecond, so ``ORDER BY id`` is creation order.
"""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_lock = threading.Lock()
_last = (0, 0)


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id() -> str:
    """A new 26-character sortable id."""
    global _last
    with _lock:
        ms = time.time_ns() // 1_000_000
        last_ms, last_rand = _last
        if ms <= last_ms:
            ms, rand = last_ms, last_rand + 1
        else:
            rand = int.from_bytes(os.urandom(10), "big") >> 1  # leave room to increment
        _last = (ms, rand)
    return _encode(ms, 10) + _encode(rand, 16)
