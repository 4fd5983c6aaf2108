"""The control channel's wire format, shared by the daemon and `pyfs.client`.

FUSE passes neither fallocate's collapse/insert modes nor ioctls to a
userspace daemon, so long operations and queries travel as extended
attributes of a hidden file at the root of every pyfs mount:

- `CONTROL_NAME` is found by lookup in the root directory but never listed
  by readdir.  Its inode number is `CONTROL_INO`, which the inode counter
  never reaches.
- A command is `setxattr(control, COMMAND_XATTR, encode(request))`.  The
  setxattr returns once the command has been judged and its operation has
  durably begun (see `COMMANDS`); a refusal is the setxattr's errno.  The
  kernel runs one setxattr of an inode at a time, so a command must not
  hold the control file for the length of its operation.
- `getxattr(control, wait_xattr(ino))` waits until no long operation holds
  inode `ino` and answers `{"errno": N}`: how the last command on that
  inode ended (0: completed).  The kernel's cached pages and attributes of
  the inode are invalidated before it answers.  getxattr takes no inode
  lock in the kernel, so any number of waits run side by side.
- A query is `getxattr(control, STAT_XATTR, OPS_XATTR or FLUSH_XATTR)`; the
  value is UTF-8 JSON.  FLUSH_XATTR makes everything committed durable
  first.

Requests name files by inode number (the `st_ino` a `stat` of the path
gives), since the daemon cannot see the caller's paths.  Every request is a
JSON object with `op` and the fields listed in `COMMANDS`; bytes (names) are
carried as strings decoded with `os.fsdecode`.
"""

from __future__ import annotations

import json
import os

CONTROL_NAME = b".pyfs-control"
CONTROL_INO = (1 << 63) - 2
COMMAND_XATTR = b"user.pyfs.command"
STAT_XATTR = b"user.pyfs.stat"
OPS_XATTR = b"user.pyfs.ops"
FLUSH_XATTR = b"user.pyfs.flush"
WAIT_PREFIX = b"user.pyfs.wait."
MAX_RESULT = 65536  # XATTR_SIZE_MAX: the kernel passes no bigger value
MAX_INT = (1 << 63) - 1  # inode numbers, offsets and lengths are signed 64-bit on disk and in FUSE

# op -> required fields.  Each command returns when:
#   collapse/insert/punch/zero: the operation has durably begun (or, if it
#           was small, completed); `wait_xattr(ino)` waits for its end;
#   rmtree: the directory is gone from its parent and that is durable (its
#           contents are deleted in the background, listed by OPS_XATTR);
#   flush: everything committed before it is durable.
COMMANDS: dict[str, tuple[str, ...]] = {
    "collapse": ("ino", "offset", "length"),
    "insert": ("ino", "offset", "length"),
    "punch": ("ino", "offset", "length", "keep_size"),
    "zero": ("ino", "offset", "length", "keep_size"),
    "rmtree": ("parent", "name"),
    "flush": (),
}
# Optional in any request: "label", a string (the path the user named) shown by OPS_XATTR.


class BadRequest(ValueError):
    """A request that does not follow this format (the daemon answers EINVAL)."""


def encode(request: dict) -> bytes:
    """A request as the bytes to setxattr."""
    return json.dumps(request, separators=(",", ":")).encode()


def wait_xattr(ino: int) -> bytes:
    """The name whose getxattr waits for the long operation on `ino`."""
    return WAIT_PREFIX + str(ino).encode()


def waited_ino(name: bytes) -> int | None:
    """The inode a `wait_xattr` name waits for, or None if `name` is not one."""
    if not name.startswith(WAIT_PREFIX):
        return None
    digits = name[len(WAIT_PREFIX):]
    if not digits.isdigit() or len(digits) > 19 or int(digits) > MAX_INT:
        return None
    return int(digits)


def decode(raw: bytes) -> dict:
    """Parse and validate a request: known op, required fields of the right types and ranges.

    A label that is not valid UTF-8 text (lone surrogates) comes back with
    those characters escaped, so it can be stored and logged.
    """
    try:
        request = json.loads(raw.decode("utf-8", "surrogatepass"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRequest(f"not JSON: {exc.__class__.__name__}") from None
    if not isinstance(request, dict):
        raise BadRequest("a request is a JSON object")
    op = request.get("op")
    if op not in COMMANDS:
        raise BadRequest(f"unknown op {op!r}")
    for field in COMMANDS[op]:
        value = request.get(field)
        if field == "keep_size":
            ok = isinstance(value, bool)
        elif field == "name":
            ok = isinstance(value, str) and value != ""
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT
        if not ok:
            raise BadRequest(f"{op}: missing or malformed field {field!r}")
    label = request.get("label")
    if label is not None:
        if not isinstance(label, str):
            raise BadRequest("label must be a string")
        request["label"] = label.encode("utf-8", "backslashreplace").decode("utf-8")
    return request


def name_bytes(request: dict) -> bytes:
    """The `name` of a request as the bytes of a directory entry."""
    return os.fsencode(request["name"])


def encode_result(value: object) -> bytes:
    return json.dumps(value, sort_keys=True).encode()
