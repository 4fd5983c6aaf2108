"""Permission checks as the kernel makes them, for callers the kernel did not check.

With `default_permissions` (the default) the kernel checks every request
before the daemon sees it; the checks here serve requests that reach the
daemon without that: the control channel's commands, where the daemon acts
for a caller it knows only by uid, gid and groups.

Promises: `check_access` grants what the owner, group or other bits of the
inode grant to `caller` (root may do anything but execute a file with no
execute bit), else EACCES; `check_sticky` refuses with EPERM the removal of
a name from a sticky directory by someone who owns neither the directory
nor the entry, as unlink(2) and rename(2) do.
"""

from __future__ import annotations

import errno
import stat

from ..format.records import Inode
from .attr import Ctx
from .errors import FsError

R_OK, W_OK, X_OK = 4, 2, 1


def check_access(inode: Inode, mask: int, caller: Ctx) -> None:
    """EACCES unless `caller` may access `inode` as `mask` (R_OK/W_OK/X_OK) asks."""
    if mask == 0:
        return
    if caller.uid == 0:
        if mask & X_OK and not (inode.mode & 0o111) and not stat.S_ISDIR(inode.mode):
            raise FsError(errno.EACCES)
        return
    if caller.uid == inode.uid:
        bits = (inode.mode >> 6) & 7
    elif caller.gid == inode.gid or inode.gid in caller.groups:
        bits = (inode.mode >> 3) & 7
    else:
        bits = inode.mode & 7
    if mask & ~bits & 7:
        raise FsError(errno.EACCES)


def check_sticky(directory: Inode, entry: Inode, caller: Ctx) -> None:
    """EPERM if `directory` is sticky and `caller` owns neither it nor `entry` (root excepted)."""
    if directory.mode & stat.S_ISVTX and caller.uid not in (0, directory.uid, entry.uid):
        raise FsError(errno.EPERM)
