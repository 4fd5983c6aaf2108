"""The marks a serving daemon leaves for other processes: its image in mountinfo, a lock under the mount.

`pyfs umount` is another process: it learns which image a mount point
serves, and when the daemon behind it has let go, from these marks alone.
No FUSE library is needed to read them.

Promises (tests/test_mount.py):
- `fsname_option` names the image in the FUSE options, so that
  /proc/self/mountinfo shows the mount's source as `pyfs:<image>`;
  `image_of` reads it back.  The path may hold any character: it is
  escaped for libfuse (which splits options at commas) and unescaped from
  the kernel's octal escapes.
- The daemon holds an exclusive flock on the directory under its mount
  (`hold_directory`) from before the kernel mount until it has released
  the image; `is_unlocked` of that directory and of the image tells a
  waiter the daemon is done.  The image lock alone cannot, for a read-only
  mount: that lock is shared.
"""

from __future__ import annotations

import fcntl
import os
import re

SOURCE_PREFIX = "pyfs:"


def fsname_option(image: str) -> str:
    """The FUSE option that makes mountinfo show `pyfs:<absolute image path>` as the source."""
    # libfuse splits -o at commas unless escaped with a backslash.
    escaped = os.path.abspath(image).replace("\\", "\\\\").replace(",", "\\,")
    return f"fsname={SOURCE_PREFIX}{escaped}"


def _unescape_mountinfo(field: str) -> str:
    """The kernel writes space, tab, newline and backslash in mountinfo as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def image_of(mountpoint: str) -> str | None:
    """The image behind a pyfs mount, from /proc/self/mountinfo (None if not a pyfs mount)."""
    target = os.path.realpath(mountpoint)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                source = _unescape_mountinfo(fields[sep + 2])
                if _unescape_mountinfo(fields[4]) == target and source.startswith(SOURCE_PREFIX):
                    return source[len(SOURCE_PREFIX):]
    except OSError:
        return None
    return None


def hold_directory(mountpoint: str) -> int | None:
    """Lock the directory under the mount for the daemon's life; the descriptor, or None.

    None when it cannot be locked (another daemon stacked on the same
    directory holds it): the daemon then does without.
    """
    try:
        fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def release_directory(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def is_unlocked(path: str) -> bool:
    """True once nobody holds an exclusive flock on `path` (or it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
