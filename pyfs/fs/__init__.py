"""The filesystem core: POSIX semantics on the storage engine (no FUSE here)."""

from .attr import Attr, Ctx, StatFs
from .errors import FsError
from .filesystem import NOW, FileSystem, format_filesystem

__all__ = ["Attr", "Ctx", "FileSystem", "FsError", "NOW", "StatFs", "format_filesystem"]
