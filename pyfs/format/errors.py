"""Errors raised while decoding on-disk records.

Each carries an errno so that the layer that catches it can hand it straight
to a FUSE caller (EIO for damaged records, EINVAL for impossible arguments).
"""

from __future__ import annotations

import errno


class FormatError(OSError):
    """A record on disk is not what it claims to be (bad magic, checksum, length)."""

    def __init__(self, message: str, err: int = errno.EIO) -> None:
        super().__init__(err, message)

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class NotPyfs(FormatError):
    """Neither superblock copy carries the pyfs magic."""


class UnsupportedVersion(FormatError):
    """The superblock is valid but written by a newer, unknown format version."""


# What decoding a checksummed but wrongly shaped msgpack body can raise; the
# decoders turn every one of these into a FormatError (or "not an entry").
MALFORMED = (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError)
