"""The filesystem layer: POSIX semantics as operations over a transaction, and the `FileSystem` object.

Operation functions (create, remove, rename, setattr, write, xattrs,
fallocate, rmtree, lookup) each take a `Txn` and change keys only in it, so
several compose inside one transaction; `FileSystem` opens one per call.
Knows nothing of FUSE or of bytes on disk.
"""

from .attr import Attr, Ctx, StatFs
from .errors import FsError
from .filesystem import FileSystem, format_filesystem
from .setattr import NOW
from .txn import Txn

__all__ = ["Attr", "Ctx", "FileSystem", "FsError", "NOW", "StatFs", "Txn", "format_filesystem"]
