"""The steps of long operations on one file: truncate, delete, punch and zero, collapse, insert.

Promises (DESIGN.md invariant 7):
- A step is a pure function of the keys and the logged op (`Op`): it makes
  its share of key updates in the caller's transaction, moves the op's
  cursor, and returns True once the operation is over.  It gives the same
  result in the daemon and at mount after a crash.
- Each step touches at most about `logged_ops.STEP_EXTENTS` extents, so it
  fits one journal entry whatever the size of the file.
- Visible inode changes of a file-range operation (size, times, setuid
  bits) land in its last step (`finish_range`); until then the filesystem
  holds the inode busy, so no request sees the steps in between.
- A deletion drops extents, then xattrs, then the inode and its orphan key;
  `delete_small` does all of it in the caller's transaction when it fits.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from ..engine.transaction import Transaction
from ..format.records import ORPHAN_PREFIX, Tree
from . import extent_moves as moves
from . import inodes, logged_ops
from .logged_ops import MOUNT_ENV, OP_DELETE, Op, StepEnv, op_key


def adjust_data_bytes(t: Transaction, ino: int, delta: int) -> None:
    """Change the data bytes (st_blocks) of `ino` by `delta`, if it still exists."""
    inode = inodes.find(t, ino)
    if inode is not None and delta:
        inodes.put(t, ino, replace(inode, data_bytes=max(0, inode.data_bytes + delta)))


def drop(t: Transaction, ino: int, start_at: int, end: int | None) -> int | None:
    """Drop up to a step's worth of [start_at, end); the next start, or None when done."""
    removed, cut = moves.drop_range(t, ino, start_at, end, logged_ops.STEP_EXTENTS)
    adjust_data_bytes(t, ino, -removed)
    return cut


def step_truncate(t: Transaction, op: Op, env: StepEnv) -> bool:
    ino = int(op.args["ino"])
    at = int(op.cursor) if isinstance(op.cursor, int) else int(op.args["size"])
    op.cursor = drop(t, ino, at, None)
    return op.cursor is None


def delete_step(t: Transaction, op: Op, env: StepEnv) -> bool:
    """One step of deleting inode `ino`: its extents, then its xattrs, then the inode and orphan key."""
    ino = int(op.args["ino"])
    at = int(op.cursor) if isinstance(op.cursor, int) else 0
    op.cursor = drop(t, ino, at, None)
    if op.cursor is not None:
        return False
    limit = 4 * logged_ops.STEP_EXTENTS
    for (_, name, chunk), _raw in itertools.islice(t.scan(Tree.XATTRS, prefix=(ino,)), limit):
        t.delete(Tree.XATTRS, (ino, name, chunk))
    if next(iter(t.scan(Tree.XATTRS, prefix=(ino,))), None) is not None:
        return False
    t.delete(Tree.INODES, (ino,))
    t.delete(Tree.MISC, (ORPHAN_PREFIX, ino))
    return True


def delete_small(t: Transaction, ino: int) -> bool:
    """Delete inode `ino` with all it owns inside `t` if one step suffices.

    Otherwise `t` holds the first step and the logged op that carries on
    (the filesystem runs it); returns False then.
    """
    op = Op(OP_DELETE, {"ino": ino})
    if delete_step(t, op, MOUNT_ENV):
        return True
    t.put(Tree.LOGGED_OPS, op_key(OP_DELETE, ino), op.encode())
    return False


def finish_range(t: Transaction, op: Op) -> None:
    """The visible change of a file-range operation: size, times, setuid bits."""
    ino = int(op.args["ino"])
    inode = inodes.find(t, ino)
    if inode is None:
        return
    mode = inodes.kill_suid(inode.mode) if op.args.get("kill_suid") else inode.mode
    now = int(op.args["time"])
    inodes.put(t, ino, replace(inode, size=int(op.args["new_size"]), mode=mode, mtime_ns=now, ctime_ns=now))


def step_punch(t: Transaction, op: Op, env: StepEnv) -> bool:
    ino = int(op.args["ino"])
    at = int(op.cursor) if isinstance(op.cursor, int) else int(op.args["start"])
    op.cursor = drop(t, ino, at, int(op.args["end"]))
    if op.cursor is not None:
        return False
    finish_range(t, op)
    return True


def step_collapse(t: Transaction, op: Op, env: StepEnv) -> bool:
    ino = int(op.args["ino"])
    offset, length = int(op.args["offset"]), int(op.args["length"])
    phase, pos = op.cursor if isinstance(op.cursor, list) else ("drop", offset)
    if phase == "drop":
        nxt = drop(t, ino, int(pos), offset + length)
        op.cursor = ["drop", nxt] if nxt is not None else ["shift", offset + length]
        return False
    nxt = moves.shift_down(t, ino, int(pos), length, logged_ops.STEP_EXTENTS)
    if nxt is not None:
        op.cursor = ["shift", nxt]
        return False
    finish_range(t, op)
    return True


def step_insert(t: Transaction, op: Op, env: StepEnv) -> bool:
    ino = int(op.args["ino"])
    offset, length = int(op.args["offset"]), int(op.args["length"])
    below = int(op.cursor) if isinstance(op.cursor, int) else None
    nxt = moves.shift_up(t, ino, offset, below, length, logged_ops.STEP_EXTENTS)
    if nxt is not None:
        op.cursor = nxt
        return False
    finish_range(t, op)
    return True
