"""xxh3_64 checksums, seeded per filesystem.

The seed comes from the superblock uuid, so a record left on the disk by an
earlier format of the same device never validates after `mkfs --force`.
"""

from __future__ import annotations

import xxhash


def checksum(data: bytes | bytearray | memoryview, seed: int = 0) -> int:
    """The 64-bit xxh3 checksum of `data` under `seed`."""
    return xxhash.xxh3_64_intdigest(data, seed)


def seed_from_uuid(uuid: bytes) -> int:
    """The checksum seed of a filesystem: the low 64 bits of its uuid."""
    return int.from_bytes(uuid[:8], "little")
