"""The control channel's wire format, shared by the daemon and `pyfs.client`.

FUSE passes neither fallocate's collapse/insert modes nor ioctls to a
userspace daemon, so long operations and queries travel as extended
attributes of a hidden file at the root of every pyfs mount:

- `CONTROL_NAME` is found by lookup in the root directory but never listed
  by readdir.  Its inode number is `CONTROL_INO`, which the inode counter
  never reaches.
- A command is `setxattr(control, COMMAND_XATTR, encode(request))`.  The
  setxattr call returns when the command has done what it promises (see
  `COMMANDS`); a failure is the setxattr's errno.
- A query is `getxattr(control, STAT_XATTR or OPS_XATTR)`; the value is
  UTF-8 JSON.

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

# op -> required fields.  Each command returns when:
#   collapse/insert/punch/zero: the operation has completed;
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


def decode(raw: bytes) -> dict:
    """Parse and validate a request: known op, required fields of the right types."""
    try:
        request = json.loads(raw.decode("utf-8", "surrogatepass"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"not JSON: {exc}") from None
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
            ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok:
            raise BadRequest(f"{op}: missing or malformed field {field!r}")
    label = request.get("label")
    if label is not None and not isinstance(label, str):
        raise BadRequest("label must be a string")
    return request


def name_bytes(request: dict) -> bytes:
    """The `name` of a request as the bytes of a directory entry."""
    return os.fsencode(request["name"])


def encode_result(value: object) -> bytes:
    return json.dumps(value, sort_keys=True).encode()
