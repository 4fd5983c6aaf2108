"""Errors of the filesystem core: an OSError carrying the errno a POSIX caller expects."""

from __future__ import annotations

import errno
import os


class FsError(OSError):
    def __init__(self, err: int, detail: str = "") -> None:
        super().__init__(err, detail or os.strerror(err))


def fail(err: int, detail: str = "") -> FsError:
    return FsError(err, detail)


__all__ = ["FsError", "fail", "errno"]
