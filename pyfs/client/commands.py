"""A small client for the control channel of a mounted pyfs (wire format: pyfs/format/control.py).

Long operations FUSE cannot carry (collapse and insert ranges, punching and
zeroing ranges, removing a whole tree) and the daemon's queries are reached
through extended attributes of the hidden control file at the root of the
mount.  This module turns paths into those requests; it needs no FUSE
library and no privilege, so any program may use it.

Promises (DESIGN.md: control channel; invariants 7 and 9; proven by
tests/test_client.py and tests/test_control_mount.py):
- Every failure is an `OSError` whose `errno` says why and whose `filename`
  is the path the caller gave: the daemon's errno for a refused command
  (EINVAL for a misaligned or impossible range, EACCES or EPERM for a caller
  without permission, EISDIR, ENOTDIR, ENOENT, EFBIG, ENOSPC, EROFS...),
  ENOTTY for a path outside any pyfs mount, EBUSY for rmtree of a mount root
  or of a tree with a mount point inside (as far as this process sees),
  EINVAL for a negative offset or length and for rmtree of "." or "..".
- A command returns when the daemon has done what it promises:
  collapse/insert/punch/zero when the operation is complete and will
  survive a crash (after a crash in the middle, the next mount completes
  it), and the kernel's idea of the file's size is current;
  rmtree when the directory is durably gone from its parent (its contents
  are deleted in the background, listed by `ops`); flush when everything
  committed before it is durable.
- Files are named to the daemon by inode number, found with `os.stat` of the
  path, so a symlink to a file is followed as fallocate(1) would.  rmtree
  never follows its final component: a symlink there, like any other
  non-directory, is refused with ENOTDIR.
- Every request carries the absolute path the caller gave as its `label`,
  which `ops` shows while the operation runs; bytes of the path that are
  not UTF-8 are sent as \\xNN escapes (the label is for people to read).
- A path is on pyfs when, walking up from it while the device stays the
  same, the top directory holds the control file with inode `CONTROL_INO`.
  (A bind mount of a subdirectory of pyfs therefore does not count.)
"""

from __future__ import annotations

import errno
import json
import logging
import operator
import os
import re
import stat as statmod

from ..format import control

log = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]


def _error(err: int, path: StrPath, message: str | None = None) -> OSError:
    return OSError(err, message or os.strerror(err), os.fspath(path))


def control_file(path: StrPath) -> str:
    """The control file of the pyfs mount holding `path` (ENOTTY if there is none)."""
    return _control_file(os.path.realpath(path), path)


def _control_file(real: str, given: StrPath) -> str:
    dev = _stat(os.stat, real, given).st_dev
    top = real if os.path.isdir(real) else os.path.dirname(real)
    while True:
        parent = os.path.dirname(top)
        if parent == top:
            break
        try:
            if os.stat(parent).st_dev != dev:
                break
        except OSError:
            break
        top = parent
    candidate = os.path.join(top, os.fsdecode(control.CONTROL_NAME))
    try:
        st = os.lstat(candidate)
    except FileNotFoundError:
        st = None
    except OSError as exc:  # e.g. ENOTCONN: a pyfs mount whose daemon died
        raise _error(exc.errno or errno.EIO, given) from None
    if st is None or st.st_dev != dev or st.st_ino != control.CONTROL_INO:
        raise _error(errno.ENOTTY, given, "not on a pyfs filesystem")
    return candidate


def _stat(fn, real: StrPath, given: StrPath) -> os.stat_result:
    """`fn(real)`, its failure reported against the path the caller gave."""
    try:
        return fn(real)
    except OSError as exc:
        raise _error(exc.errno or errno.EIO, given) from None


# -- requests (pure: no I/O) -------------------------------------------------------------


def _count(value: int, what: str, path: StrPath) -> int:
    value = operator.index(value)
    if value < 0:
        raise _error(errno.EINVAL, path, f"negative {what}")
    return value


def range_request(op: str, ino: int, offset: int, length: int, *, label: str | None = None,
                  keep_size: bool | None = None) -> dict:
    """The request for collapse/insert/punch/zero of `length` bytes at `offset` of inode `ino`."""
    if op not in ("collapse", "insert", "punch", "zero"):
        raise ValueError(f"not a range operation: {op!r}")
    request: dict = {"op": op, "ino": ino, "offset": offset, "length": length}
    if op in ("punch", "zero"):
        if keep_size is None:
            raise ValueError(f"{op} needs keep_size")
        request["keep_size"] = bool(keep_size)
    if label is not None:
        request["label"] = label
    return request


def rmtree_request(parent_ino: int, name: str | bytes, *, label: str | None = None) -> dict:
    """The request to remove the entry `name` of directory `parent_ino` with all below it."""
    request: dict = {"op": "rmtree", "parent": parent_ino, "name": os.fsdecode(name)}
    if label is not None:
        request["label"] = label
    return request


def split_for_rmtree(path: StrPath) -> tuple[str, str]:
    """(the parent directory with symlinks resolved, the final name, not followed).

    "." and ".." as the final name are refused with EINVAL, as rm -r does.
    """
    text = os.fspath(path)
    stripped = text.rstrip("/")
    if not stripped:
        raise _error(errno.EBUSY, path, "refusing to remove the root directory")
    head, name = os.path.split(stripped)
    if name in (".", ".."):
        raise _error(errno.EINVAL, path, "refusing to remove '.' or '..'")
    return os.path.realpath(head or "."), name


def mounts_below(directory: str) -> list[str]:
    """Mount points strictly below `directory` (a path without symlinks), from /proc/self/mountinfo."""
    prefix = os.fsencode(directory).rstrip(b"/") + b"/"
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split(b" ")
        if len(fields) < 5:
            continue
        # The kernel writes space, tab, newline and backslash as octal escapes.
        point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])
        if point.startswith(prefix):
            found.append(os.fsdecode(point))
    return found


# -- sending -------------------------------------------------------------------------------


def label_of(path: StrPath) -> str:
    """The label of a request about `path`: its absolute form, as valid UTF-8 text."""
    return os.fsencode(os.path.abspath(path)).decode("utf-8", "backslashreplace")


def _send(control_path: str, request: dict, path: StrPath) -> None:
    raw = control.encode(request)
    log.debug("%s: %s", control_path, raw)
    try:
        os.setxattr(control_path, control.COMMAND_XATTR, raw)
    except OSError as exc:
        raise _error(exc.errno or errno.EIO, path) from None


def _query(path: StrPath, name: bytes):
    ctl = control_file(path)
    try:
        raw = os.getxattr(ctl, name)
    except OSError as exc:
        raise _error(exc.errno or errno.EIO, path) from None
    try:
        return json.loads(raw)
    except ValueError:
        raise _error(errno.EIO, path, "the daemon answered something that is not JSON") from None


def _range_op(op: str, path: StrPath, offset: int, length: int, keep_size: bool | None = None) -> None:
    offset = _count(offset, "offset", path)
    length = _count(length, "length", path)
    ctl = control_file(path)
    ino = _stat(os.stat, path, path).st_ino
    _send(ctl, range_request(op, ino, offset, length, label=label_of(path), keep_size=keep_size), path)
    # The command returned once the operation durably began; wait for its end.
    try:
        raw = os.getxattr(ctl, control.wait_xattr(ino))
        outcome = json.loads(raw)["errno"]
    except OSError as exc:
        raise _error(exc.errno or errno.EIO, path) from None
    except (ValueError, KeyError, TypeError):
        raise _error(errno.EIO, path, "the daemon answered something that is not an outcome") from None
    if outcome:
        raise _error(int(outcome), path)
    # The daemon made the kernel drop its attributes of the file, but the
    # kernel refreshes the size it keeps only when asked: without this, an
    # O_APPEND write through a descriptor opened before would land at the
    # old end of the file.
    _stat(os.stat, path, path)


def collapse(path: StrPath, offset: int, length: int) -> None:
    """Remove `length` bytes at `offset`; what followed moves down and the file shrinks.

    Like fallocate's FALLOC_FL_COLLAPSE_RANGE: both must be multiples of the
    block size and the range must end before the end of the file (EINVAL).
    """
    _range_op("collapse", path, offset, length)


def insert(path: StrPath, offset: int, length: int) -> None:
    """Insert a hole of `length` bytes at `offset`; what followed moves up and the file grows.

    Like FALLOC_FL_INSERT_RANGE: block-aligned, and `offset` before the end
    of the file (EINVAL).
    """
    _range_op("insert", path, offset, length)


def punch(path: StrPath, offset: int, length: int, keep_size: bool = True) -> None:
    """Deallocate the range, which then reads as zeros (FALLOC_FL_PUNCH_HOLE).

    With `keep_size` (the default, as fallocate requires for punching) the
    size never changes.
    """
    _range_op("punch", path, offset, length, keep_size)


def zero(path: StrPath, offset: int, length: int, keep_size: bool = False) -> None:
    """Make the range read as zeros (FALLOC_FL_ZERO_RANGE); the file grows to cover it unless `keep_size`."""
    _range_op("zero", path, offset, length, keep_size)


def rmtree(path: StrPath) -> None:
    """Remove the directory `path` with everything below it.

    Returns once the directory is durably gone from its parent; the contents
    are deleted in the background (see `ops`), and after a crash the next
    mount finishes the deletion.  Files with other links outside the tree,
    and files still open, live on as they would after `rm -r`.
    """
    parent, name = split_for_rmtree(path)
    target = os.path.join(parent, name)
    parent_st = _stat(os.stat, parent, path)
    target_st = _stat(os.lstat, target, path)
    if statmod.S_ISDIR(target_st.st_mode) and target_st.st_dev != parent_st.st_dev:
        # The root of a mount (pyfs or not) is never removed.
        raise _error(errno.EBUSY, path, "is a mount point")
    ctl = _control_file(parent, path)
    if not statmod.S_ISDIR(target_st.st_mode):
        raise _error(errno.ENOTDIR, path)  # as rmdir(2) says; the daemon would say so too
    inner = mounts_below(target)
    if inner:
        # The daemon cannot see mounts; the kernel would detach them when their
        # directory vanishes, where rmdir(2) refuses with EBUSY.
        raise _error(errno.EBUSY, path, f"{inner[0]} is mounted inside")
    _send(ctl, rmtree_request(parent_st.st_ino, name, label=label_of(path)), path)


def flush(path: StrPath) -> None:
    """Return when everything committed on the filesystem holding `path` is durable.

    A query, not a command: it works on a read-only mount (where the kernel
    refuses every setxattr) and runs beside commands.
    """
    _query(path, control.FLUSH_XATTR)


def ops(path: StrPath) -> list[dict]:
    """The long operations running on the filesystem holding `path`.

    Each is a dict: kind ("collapse", "insert", "punch", "zero", "truncate",
    "delete" or "rmtree"), ino, label (the path given when it was started,
    or None), done, total (None when unknown) and unit ("bytes" or
    "entries").
    """
    result = _query(path, control.OPS_XATTR)
    if not isinstance(result, list):
        raise _error(errno.EIO, path, "the daemon's list of operations is not a list")
    return result


def stat(path: StrPath) -> dict:
    """The daemon's figures for the filesystem holding `path`.

    Keys: space {total_bytes, free_bytes, avail_bytes}, inodes, keys (count
    per btree), journal {bytes, fill}, seq, durable_seq, checkpoints,
    commits, long_ops.
    """
    result = _query(path, control.STAT_XATTR)
    if not isinstance(result, dict):
        raise _error(errno.EIO, path, "the daemon's figures are not a JSON object")
    return result
