"""Long operations: file-range edits, truncates, deletions and tree removals in resumable steps.

Promises (DESIGN.md invariant 7):
- An operation that may touch more keys than fit one journal entry runs as
  a series of transactions.  The first records a logged-op key
  (`Tree.LOGGED_OPS`, journal-only) named `(kind, ino)`; every step makes
  its share of key updates and rewrites the op's cursor in the same
  transaction; the last step deletes the key.  Each step touches at most
  about `STEP_EXTENTS` extents or directory entries.
- A step is a pure function of the keys and the logged op, so it gives the
  same result whether it runs in the daemon or at mount after a crash.
  What the step needs of the running filesystem (which inodes are still in
  use, whom to tell about vanished names) comes in a `StepEnv`.
- `resume_all` (run at mount, before any request) finishes every operation
  a crash interrupted.  To users an operation is atomic: after a crash it
  has completed, or (if its start never became durable) never begun.
- Visible inode changes of a file-range operation (size, times, setuid
  bits) land in its last step; until then the inode is held busy by the
  filesystem, so no request sees the steps in between.

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

import itertools
import logging
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..engine.engine import Engine
from ..format.records import ORPHAN_PREFIX, Inode, LoggedOp, Tree
from ..engine.transaction import Transaction
from . import extent_moves as moves

log = logging.getLogger(__name__)

STEP_EXTENTS = 256
OP_TRUNCATE = "truncate"
OP_DELETE = "delete"
OP_PUNCH = "punch"
OP_ZERO = "zero"
OP_COLLAPSE = "collapse"
OP_INSERT = "insert"
OP_RMTREE = "rmtree"
RANGE_KINDS = (OP_PUNCH, OP_ZERO, OP_COLLAPSE, OP_INSERT)


@dataclass
class StepEnv:
    """What a step may ask of the running filesystem (nothing, at mount)."""

    in_use: Callable[[int], bool] = lambda ino: False
    # A name the kernel may have cached went away: (directory, name, inode).
    removed: Callable[[int, bytes, int], None] = lambda parent, name, ino: None


MOUNT_ENV = StepEnv()


@dataclass(frozen=True)
class OpStatus:
    """A pending long operation as `pyfs ops` shows it."""

    kind: str
    ino: int
    label: str | None
    done: int
    total: int | None
    unit: str  # "bytes" or "entries"


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


def delete_small(t: Transaction, ino: int) -> bool:
    """Delete inode `ino` with all it owns inside `t` if one step suffices.

    Otherwise `t` holds the first step and the logged op that carries on
    (`run` finishes it); returns False then.
    """
    op = Op(OP_DELETE, {"ino": ino})
    if delete_step(t, op, MOUNT_ENV):
        return True
    t.put(Tree.LOGGED_OPS, op_key(OP_DELETE, ino), op.encode())
    return False


def step(engine: Engine, kind: str, ino: int, env: StepEnv = MOUNT_ENV) -> bool:
    """Run one step of the logged operation `(kind, ino)`; True once it is over (or was not there)."""
    with engine.transaction() as t:
        raw = t.get(Tree.LOGGED_OPS, op_key(kind, ino))
        if raw is None:
            return True
        op = Op.decode(raw)
        if STEPS[op.kind](t, op, env):
            t.delete(Tree.LOGGED_OPS, op_key(kind, ino))
            return True
        t.put(Tree.LOGGED_OPS, op_key(kind, ino), op.encode())
        return False


def run(engine: Engine, kind: str, ino: int, env: StepEnv = MOUNT_ENV) -> None:
    """Carry the logged operation `(kind, ino)` to its end, one transaction per step."""
    while not step(engine, kind, ino, env):
        pass


# -- the steps ---------------------------------------------------------------------------


def _adjust_data_bytes(t: Transaction, ino: int, delta: int) -> None:
    raw = t.get(Tree.INODES, (ino,))
    if raw is not None and delta:
        inode = Inode.decode(raw)
        t.put(Tree.INODES, (ino,), replace(inode, data_bytes=max(0, inode.data_bytes + delta)).encode())


def _drop(t: Transaction, ino: int, start_at: int, end: int | None) -> int | None:
    """Drop up to a step's worth of [start_at, end); the next start, or None when done."""
    removed, cut = moves.drop_range(t, ino, start_at, end, STEP_EXTENTS)
    _adjust_data_bytes(t, ino, -removed)
    return cut


def _step_truncate(t: Transaction, op: Op, env: StepEnv) -> bool:
    ino = int(op.args["ino"])
    at = int(op.cursor) if isinstance(op.cursor, int) else int(op.args["size"])
    op.cursor = _drop(t, ino, at, None)
    return op.cursor is None


def delete_step(t: Transaction, op: Op, env: StepEnv) -> bool:
    """One step of deleting inode `ino`: its extents, then its xattrs, then the inode and orphan key."""
    ino = int(op.args["ino"])
    at = int(op.cursor) if isinstance(op.cursor, int) else 0
    op.cursor = _drop(t, ino, at, None)
    if op.cursor is not None:
        return False
    for (_, name, chunk), _raw in itertools.islice(t.scan(Tree.XATTRS, prefix=(ino,)), 4 * STEP_EXTENTS):
        t.delete(Tree.XATTRS, (ino, name, chunk))
    if next(iter(t.scan(Tree.XATTRS, prefix=(ino,))), None) is not None:
        return False
    t.delete(Tree.INODES, (ino,))
    t.delete(Tree.MISC, (ORPHAN_PREFIX, ino))
    return True


def _finish_range(t: Transaction, op: Op) -> None:
    """The visible change of a file-range operation: size, times, setuid bits."""
    ino = int(op.args["ino"])
    raw = t.get(Tree.INODES, (ino,))
    if raw is None:
        return
    inode = Inode.decode(raw)
    mode = inode.mode
    if op.args.get("kill_suid"):
        mode &= ~stat.S_ISUID
        if mode & stat.S_IXGRP:
            mode &= ~stat.S_ISGID
    now = int(op.args["time"])
    t.put(Tree.INODES, (ino,), replace(
        inode, size=int(op.args["new_size"]), mode=mode, mtime_ns=now, ctime_ns=now).encode())


def _step_punch(t: Transaction, op: Op, env: StepEnv) -> bool:
    ino = int(op.args["ino"])
    at = int(op.cursor) if isinstance(op.cursor, int) else int(op.args["start"])
    op.cursor = _drop(t, ino, at, int(op.args["end"]))
    if op.cursor is not None:
        return False
    _finish_range(t, op)
    return True


def _step_collapse(t: Transaction, op: Op, env: StepEnv) -> bool:
    ino = int(op.args["ino"])
    offset, length = int(op.args["offset"]), int(op.args["length"])
    phase, pos = op.cursor if isinstance(op.cursor, list) else ("drop", offset)
    if phase == "drop":
        nxt = _drop(t, ino, int(pos), offset + length)
        op.cursor = ["drop", nxt] if nxt is not None else ["shift", offset + length]
        return False
    nxt = moves.shift_down(t, ino, int(pos), length, STEP_EXTENTS)
    if nxt is not None:
        op.cursor = ["shift", nxt]
        return False
    _finish_range(t, op)
    return True


def _step_insert(t: Transaction, op: Op, env: StepEnv) -> bool:
    ino = int(op.args["ino"])
    offset, length = int(op.args["offset"]), int(op.args["length"])
    below = int(op.cursor) if isinstance(op.cursor, int) else None
    nxt = moves.shift_up(t, ino, offset, below, length, STEP_EXTENTS)
    if nxt is not None:
        op.cursor = nxt
        return False
    _finish_range(t, op)
    return True


def _step_rmtree(t: Transaction, op: Op, env: StepEnv) -> bool:
    from .rmtree import step_rmtree

    return step_rmtree(t, op, env, STEP_EXTENTS)


STEPS: dict[str, Callable[[Transaction, Op, StepEnv], bool]] = {
    OP_TRUNCATE: _step_truncate,
    OP_DELETE: delete_step,
    OP_PUNCH: _step_punch,
    OP_ZERO: _step_punch,
    OP_COLLAPSE: _step_collapse,
    OP_INSERT: _step_insert,
    OP_RMTREE: _step_rmtree,
}


# -- what is pending ------------------------------------------------------------------------


def pending(engine: Engine) -> list[tuple[str, int]]:
    """The logged operations waiting in the journal-only tree, as (kind, ino)."""
    return [(op.kind, int(op.args["ino"])) for op in _decoded(engine)]


def _decoded(engine: Engine) -> list[LoggedOp]:
    out = []
    for key, raw in sorted(engine.logged_ops.items()):
        try:
            op = LoggedOp.decode(raw)
            if op.kind not in STEPS:
                raise ValueError(f"unknown kind {op.kind!r}")
            int(op.args["ino"])
            out.append(op)
        except Exception:  # noqa: BLE001 - a malformed op is the checker's to report
            log.error("ignoring malformed logged op %r", key)
    return out


def status(engine: Engine) -> list[OpStatus]:
    """Every pending operation with its progress."""
    return [_status(engine, op) for op in _decoded(engine)]


def _status(engine: Engine, op: LoggedOp) -> OpStatus:
    ino = int(op.args["ino"])
    label = op.args.get("label")
    label = label if isinstance(label, str) else None
    cur = op.cursor
    if op.kind == OP_RMTREE:
        removed = cur.get("removed", 0) if isinstance(cur, dict) else 0
        return OpStatus(op.kind, ino, label, int(removed), None, "entries")
    if op.kind in (OP_PUNCH, OP_ZERO):
        lo, hi = int(op.args["start"]), int(op.args["end"])
        at = cur if isinstance(cur, int) else lo
        return OpStatus(op.kind, ino, label, at - lo, hi - lo, "bytes")
    if op.kind == OP_COLLAPSE:
        # Both phases walk up from offset to the old end of the file.
        offset = int(op.args["offset"])
        total = int(op.args["new_size"]) + int(op.args["length"]) - offset
        pos = cur[1] if isinstance(cur, list) and isinstance(cur[1], int) else offset
        return OpStatus(op.kind, ino, label, min(pos - offset, total), total, "bytes")
    if op.kind == OP_INSERT:
        # Walks down from the old end of the file to offset.
        offset = int(op.args["offset"])
        old_size = int(op.args["new_size"]) - int(op.args["length"])
        total = old_size - offset
        done = old_size - min(int(cur), old_size) if isinstance(cur, int) else 0
        return OpStatus(op.kind, ino, label, max(0, done), total, "bytes")
    # truncate and delete: what is left of the data is not known without a scan
    at = cur if isinstance(cur, int) else int(op.args.get("size", 0))
    return OpStatus(op.kind, ino, label, at, None, "bytes")


def resume_all(engine: Engine) -> int:
    """Finish every interrupted long operation; returns how many there were."""
    ops = pending(engine)
    for kind, ino in ops:
        log.info("finishing interrupted %s of inode %d", kind, ino)
        run(engine, kind, ino)
    return len(ops)

