"""A filesystem transaction: the context every filesystem operation runs in.

`Txn` wraps one engine transaction (pyfs/engine/transaction.py) with what
an operation needs beyond keys: who is asking, the one timestamp the whole
transaction stamps, and what must happen once it has committed.  Any number
of operations can run in one `Txn`; each reads through the same overlay, so
it sees what the operations before it wrote, and they all commit as one
journal entry or not at all (DESIGN.md invariant 1).

Promises:
- Operations never commit, flush or touch state outside the transaction;
  whoever opened the `Txn` commits it and then acts on `unlinked` (inodes
  whose last name went: delete them once nothing uses them) and `started`
  (long operations whose start is in the transaction: run their steps).
- `busy` names the inodes a long operation begun in this transaction holds:
  a later operation of the same transaction must not touch them (EBUSY),
  since their extents change only with the steps that run after commit.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from ..engine.engine import Engine
from ..engine.transaction import Transaction
from .attr import ROOT_CTX, Ctx
from .errors import FsError


@dataclass(slots=True)
class Txn:
    t: Transaction
    engine: Engine
    now: int
    caller: Ctx = ROOT_CTX
    unlinked: list[int] = field(default_factory=list)
    started: list[tuple[str, int]] = field(default_factory=list)

    def begin_long_op(self, kind: str, ino: int) -> None:
        """Note that the start of long operation `(kind, ino)` is in this transaction."""
        self.started.append((kind, ino))

    @property
    def busy(self) -> set[int]:
        return {ino for _, ino in self.started}

    def check_not_busy(self, ino: int) -> None:
        if ino in self.busy:
            raise FsError(errno.EBUSY, f"inode {ino} has a long operation begun earlier in this transaction")

    def unlinked_last_name(self, ino: int) -> None:
        """`ino` lost its last name here: the caller deletes it once it is not in use."""
        if ino not in self.unlinked:
            self.unlinked.append(ino)
