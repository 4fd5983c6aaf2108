"""The logged-op record of a long operation, its kinds, and what a step may ask of the running filesystem.

A long operation (DESIGN.md invariant 7) is recorded as a journal-only key
`(kind, ino)` in `Tree.LOGGED_OPS` whose value holds the kind, its
arguments and a cursor.  This module is the vocabulary the steps
(pyfs/fs/extent_steps.py, pyfs/fs/rmtree.py), the runner
(pyfs/fs/longops.py) and fsck share; it runs nothing itself.

The kinds and their arguments (`LoggedOp.args`, cursor):
- truncate {ino, size}: extents past `size` go; cursor: where to go on.
- delete {ino}: extents, xattrs, then the inode and its orphan key.
- punch / zero {ino, start, end, new_size, time, kill_suid}: [start, end)
  becomes a hole; cursor: where to go on.
- collapse {ino, offset, length, new_size, time, kill_suid}: drop
  [offset, offset+length), then move later extents down by length;
  cursor: ["drop", pos] or ["shift", pos].
- insert {ino, offset, length, new_size, time, kill_suid}: move extents at
  or after offset up by length, highest first; cursor: the offset below
  which extents have not moved yet (None: the end of the file).
- rmtree {ino, parent}: the directory `ino` left `parent` when the op
  began; its contents go depth first; cursor: {"removed": entries so far,
  "file": a file whose data is being deleted, or None}.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..engine.transaction import Transaction
from ..format.records import LoggedOp, Tree

# The extents (or directory entries) one step touches at most, so that a
# step always fits one journal entry.  Read at call time: tests lower it.
STEP_EXTENTS = 256

OP_TRUNCATE = "truncate"
OP_DELETE = "delete"
OP_PUNCH = "punch"
OP_ZERO = "zero"
OP_COLLAPSE = "collapse"
OP_INSERT = "insert"
OP_RMTREE = "rmtree"
RANGE_KINDS = (OP_PUNCH, OP_ZERO, OP_COLLAPSE, OP_INSERT)
KINDS = (OP_TRUNCATE, OP_DELETE, *RANGE_KINDS, OP_RMTREE)


@dataclass
class StepEnv:
    """What a step may ask of the running filesystem (nothing, at mount)."""

    in_use: Callable[[int], bool] = lambda ino: False
    # A name the kernel may have cached went away: (directory, name, inode).
    removed: Callable[[int, bytes, int], None] = lambda parent, name, ino: None


MOUNT_ENV = StepEnv()


@dataclass
class Op:
    """A logged operation being stepped: `LoggedOp` with a cursor the step moves."""

    kind: str
    args: dict
    cursor: object = None

    @classmethod
    def decode(cls, raw: bytes) -> "Op":
        op = LoggedOp.decode(raw)
        return cls(op.kind, op.args, op.cursor)

    def encode(self) -> bytes:
        return LoggedOp(self.kind, self.args, self.cursor).encode()


def op_key(kind: str, ino: int) -> tuple:
    return (kind, ino)


def start(t: Transaction, kind: str, ino: int, args: dict, cursor: object = None) -> None:
    """Record, in the caller's transaction, the long operation `kind` on `ino`."""
    t.put(Tree.LOGGED_OPS, op_key(kind, ino), Op(kind, {"ino": ino, **args}, cursor).encode())


def start_truncate(t: Transaction, ino: int, size: int) -> None:
    """Record, in the caller's transaction, that extents of `ino` past `size` must go."""
    start(t, OP_TRUNCATE, ino, {"size": size})


StepFn = Callable[[Transaction, Op, StepEnv], bool]
