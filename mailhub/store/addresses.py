"""The addresses a task is about, as the index files them: by digest.

The address index (`keys.address_index`) lists a person's tasks for the
owner's view and for erasure. Its key names carry a digest rather than the
address itself, so a listing of Redis keys names nobody. A task's hash keeps
the digests of its addresses (`people`) in base 85 (`members.compact`: 20
characters instead of 32); the scripts turn them back into key names.
"""

from __future__ import annotations

import functools
import hashlib
from email.utils import getaddresses

from mailhub.store.members import compact


def normalized(address: str) -> str:
    """The form an address is compared in: trimmed, lower case."""
    return address.strip().lower()


@functools.lru_cache(maxsize=4096)
def address_digest(address: str) -> str:
    """The index's name for `address` (128 bits of SHA-256 of its normalized form)."""
    return hashlib.sha256(normalized(address).encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=4096)
def people(to: str, reply_to: str = "") -> tuple[str, ...]:
    """Digests of everyone a task is about (each recipient, and its Reply-To), as its hash keeps them.

    Cached: the same recipients come back submit after submit."""
    found = [addr for _, addr in getaddresses([to, reply_to]) if "@" in addr]
    return tuple(sorted({compact(address_digest(addr)) for addr in found}))
