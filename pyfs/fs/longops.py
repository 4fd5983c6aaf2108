"""Long operations: truncating a big file and deleting an inode, in resumable steps.

Promises (DESIGN.md invariant 7):
- An operation that may touch more extents than fit one journal entry runs
  as a series of transactions.  The first records a logged-op key
  (`Tree.LOGGED_OPS`, journal-only) in the same transaction as the visible
  change (the new size, or the inode becoming unreachable); every step
  removes up to `STEP_EXTENTS` extents and updates the op's cursor in the
  same transaction; the last step deletes the key.
- `resume_all` (run at mount, before any request) finishes every operation
  a crash interrupted.  To users the operation is atomic: after a crash it
  has completed.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import replace

from ..engine import Engine
from ..format.records import ORPHAN_PREFIX, Extent, Inode, LoggedOp, Tree
from ..trans import Transaction

log = logging.getLogger(__name__)

STEP_EXTENTS = 256
OP_TRUNCATE = "truncate"
OP_DELETE = "delete"


def op_key(kind: str, ino: int) -> tuple:
    return (kind, ino)


def start_truncate(t: Transaction, ino: int, size: int) -> None:
    """Record, in the caller's transaction, that extents of `ino` past `size` must go."""
    t.put(Tree.LOGGED_OPS, op_key(OP_TRUNCATE, ino), LoggedOp(OP_TRUNCATE, {"ino": ino, "size": size}).encode())


def start_delete(t: Transaction, ino: int) -> None:
    """Record, in the caller's transaction, that inode `ino` must be deleted with all it owns."""
    t.put(Tree.LOGGED_OPS, op_key(OP_DELETE, ino), LoggedOp(OP_DELETE, {"ino": ino}).encode())


def delete_small(t: Transaction, ino: int) -> bool:
    """Delete inode `ino` with all it owns inside `t` if one step suffices.

    Otherwise `t` holds the first step and the logged op that carries on
    (`run` finishes it); returns False then.
    """
    if _step(t, LoggedOp(OP_DELETE, {"ino": ino})):
        return True
    start_delete(t, ino)
    return False


def run(engine: Engine, kind: str, ino: int) -> None:
    """Carry the logged operation `(kind, ino)` to its end, one transaction per step."""
    while True:
        with engine.transaction() as t:
            raw = t.get(Tree.LOGGED_OPS, op_key(kind, ino))
            if raw is None:
                return
            op = LoggedOp.decode(raw)
            if _step(t, op):
                t.delete(Tree.LOGGED_OPS, op_key(kind, ino))
                done = True
            else:
                t.put(Tree.LOGGED_OPS, op_key(kind, ino), op.encode())
                done = False
        if done:
            return


def _step(t: Transaction, op: LoggedOp) -> bool:
    """One step; True when the operation is complete."""
    ino = int(op.args["ino"])
    keep = int(op.args.get("size", 0)) if op.kind == OP_TRUNCATE else 0
    removed = 0  # bytes
    extents = 0
    finished = True
    for (_, off), raw in t.scan(Tree.EXTENTS, (ino, keep), (ino + 1, 0), reverse=True):
        if extents >= STEP_EXTENTS:
            finished = False
            break
        ext = Extent.decode(raw)
        t.delete(Tree.EXTENTS, (ino, off))
        if ext.inline is None:
            t.adjust_bucket_usage(ext.addr, -ext.length)
        removed += ext.length
        extents += 1
    inode_raw = t.get(Tree.INODES, (ino,))
    if inode_raw is not None and removed:
        inode = Inode.decode(inode_raw)
        t.put(Tree.INODES, (ino,), _with_data_bytes(inode, inode.data_bytes - removed).encode())
    if not finished:
        return False
    if op.kind == OP_DELETE:
        for (_, name, chunk), _raw in itertools.islice(t.scan(Tree.XATTRS, prefix=(ino,)), 4 * STEP_EXTENTS):
            t.delete(Tree.XATTRS, (ino, name, chunk))
        if next(iter(t.scan(Tree.XATTRS, prefix=(ino,))), None) is not None:
            return False
        t.delete(Tree.INODES, (ino,))
        t.delete(Tree.MISC, (ORPHAN_PREFIX, ino))
    return True


def _with_data_bytes(inode: Inode, data_bytes: int) -> Inode:
    return replace(inode, data_bytes=max(0, data_bytes))


def pending(engine: Engine) -> list[tuple[str, int]]:
    """The logged operations waiting in the journal-only tree."""
    out = []
    for key, raw in sorted(engine.logged_ops.items()):
        try:
            op = LoggedOp.decode(raw)
            out.append((op.kind, int(op.args["ino"])))
        except Exception:  # noqa: BLE001 - a malformed op is the checker's to report
            log.error("ignoring malformed logged op %r", key)
    return out


def resume_all(engine: Engine) -> int:
    """Finish every interrupted long operation; returns how many there were."""
    ops = pending(engine)
    for kind, ino in ops:
        log.info("finishing interrupted %s of inode %d", kind, ino)
        run(engine, kind, ino)
    return len(ops)

