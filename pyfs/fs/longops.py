"""Running long operations: one step per transaction, to the end, and at mount what a crash left.

Promises (DESIGN.md invariant 7):
- `step` runs one step of the logged op `(kind, ino)` as one transaction:
  the step's key updates and the op's rewritten cursor commit together;
  the last step deletes the op key.  A crash between steps leaves the op
  key with a cursor the next step carries on from.
- `resume_all` (run at mount, before any request) finishes every operation
  a crash interrupted.  To users an operation is atomic: after a crash it
  has completed, or (if its start never became durable) never begun.
- `pending` and `status` report what is waiting; a malformed op key is
  logged and left for fsck, never raised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..engine.engine import Engine
from ..format.records import LoggedOp, Tree
from . import extent_steps, rmtree
from .logged_ops import (
    MOUNT_ENV,
    OP_COLLAPSE,
    OP_DELETE,
    OP_INSERT,
    OP_PUNCH,
    OP_RMTREE,
    OP_TRUNCATE,
    OP_ZERO,
    Op,
    StepEnv,
    StepFn,
    op_key,
)

log = logging.getLogger(__name__)

STEPS: dict[str, StepFn] = {
    OP_TRUNCATE: extent_steps.step_truncate,
    OP_DELETE: extent_steps.delete_step,
    OP_PUNCH: extent_steps.step_punch,
    OP_ZERO: extent_steps.step_punch,
    OP_COLLAPSE: extent_steps.step_collapse,
    OP_INSERT: extent_steps.step_insert,
    OP_RMTREE: rmtree.step_rmtree,
}


@dataclass(frozen=True)
class OpStatus:
    """A pending long operation as `pyfs ops` shows it."""

    kind: str
    ino: int
    label: str | None
    done: int
    total: int | None
    unit: str  # "bytes" or "entries"


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
    return [_status(op) for op in _decoded(engine)]


def _status(op: LoggedOp) -> OpStatus:
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
