"""Directory entry names: validation and the hash that orders a directory.

Promises: every call that takes a name rejects names longer than NAME_MAX
bytes with ENAMETOOLONG (FUSE does not check this for us) and names with '/'
or NUL with EINVAL.  `name_hash` is the readdir cookie of an entry: stable
for the life of the entry, never 0, 1 or 2 (reserved for the start, '.' and
'..'), and below 2**63 so it fits FUSE's signed offsets.
"""

from __future__ import annotations

import errno

import xxhash

from .errors import FsError

NAME_MAX = 255
FIRST_COOKIE = 3


def check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise FsError(errno.ENAMETOOLONG)
    if not name or b"/" in name or b"\x00" in name:
        raise FsError(errno.EINVAL, f"invalid file name {name!r}")


def check_new_name(name: bytes) -> None:
    """A name that is about to be created: also not '.' or '..'."""
    check_name(name)
    if name in (b".", b".."):
        raise FsError(errno.EEXIST)


def name_hash(name: bytes) -> int:
    h = xxhash.xxh3_64_intdigest(name) >> 1
    return h if h >= FIRST_COOKIE else h + FIRST_COOKIE
