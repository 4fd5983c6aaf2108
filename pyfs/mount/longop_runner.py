"""Running long operations in the daemon: step by step, yielding between steps, with waits on busy inodes.

The filesystem core starts a long operation (truncate, deletion of a big
file, tree removal, collapse/insert/punch/zero) and leaves running it to
this module (`FileSystem.defer_long_ops`), which uses the core's
`take_started`, `op_step`, `op_over`, `busy`, `vanished` and `fsync`.

Promises (DESIGN.md invariant 7 and the concurrency rules of the suggested
shape; proven by tests/test_fuse_longops.py and tests/test_control_mount.py):
- The start of each operation is durable before its first step
  (`FileSystem.fsync`), so a crash at any later moment leaves an operation
  the next mount finishes.
- Between steps the runner yields to trio, so the rest of the filesystem
  keeps being served; requests on the inode an operation holds wait for
  its end (`wait_idle`) and then see the finished result.
- Deletions and tree removals (and, with `settle(background=True)`,
  every kind) go on in the background nursery (`start_background`) and the
  request returns once they have durably begun; without a nursery, and for
  the other kinds, they run to their end inside the request.
- Names an operation removes and the pages of a file whose ranges move are
  invalidated in the kernel (`kernel_cache`) as the operation goes.
- An operation that fails is logged and left to the next mount; its errno
  is kept as the outcome of the inode's last command (`outcome`).  On
  unmount (cancellation) an operation stops between steps; the next mount
  finishes it.
"""

from __future__ import annotations

import errno
import logging

import trio

from ..fs import FileSystem
from ..fs.logged_ops import OP_DELETE, OP_RMTREE, RANGE_KINDS
from . import kernel_cache

log = logging.getLogger(__name__)

MAX_OUTCOMES = 4096  # inodes whose last command's outcome is remembered (the oldest go first)


class LongOpRunner:
    """Drives the long operations the core starts; one per mounted filesystem."""

    def __init__(self, fs: FileSystem, step_delay: float = 0.0) -> None:
        self.fs = fs
        fs.defer_long_ops = True
        self.step_delay = step_delay  # tests: a pause between steps, so a kill lands mid-way
        self._nursery: trio.Nursery | None = None
        self._idle: dict[int, trio.Event] = {}
        # How the last control command on an inode ended (errno, 0: completed).
        self._outcome: dict[int, int] = {}

    def start_background(self, nursery: trio.Nursery) -> None:
        """Run deletions and tree removals in `nursery` instead of inside their request."""
        self._nursery = nursery

    async def wait_idle(self, ino: int) -> None:
        """Return once no long operation holds `ino`."""
        while ino in self.fs.busy:
            event = self._idle.setdefault(ino, trio.Event())
            await event.wait()

    async def settle(self, background: bool = False) -> None:
        """Run the long operations the last core call started.

        Deletions and tree removals (and, with `background`, every kind) go
        to the nursery; the rest run inside the caller's request.
        """
        for kind, ino in self.fs.take_started():
            if (background or kind in (OP_DELETE, OP_RMTREE)) and self._nursery is not None:
                await self.fs.fsync()  # durably begun before the request returns
                self._nursery.start_soon(self._drive_background, kind, ino)
            else:
                await self._drive(kind, ino)

    # -- outcomes of control commands ------------------------------------------------------

    def begin_outcome(self, ino: int) -> None:
        """A command on `ino` begins: its outcome is 0 (completed) unless its operation fails."""
        self._outcome.pop(ino, None)
        while len(self._outcome) >= MAX_OUTCOMES:
            del self._outcome[next(iter(self._outcome))]
        self._outcome[ino] = 0

    def outcome(self, ino: int) -> int:
        """How the last command on `ino` ended: 0 completed, else the errno of its failure."""
        return self._outcome.get(ino, 0)

    # -- driving -----------------------------------------------------------------------------

    async def _drive(self, kind: str, ino: int) -> None:
        """Run one long operation to its end, yielding between steps."""
        try:
            await self.fs.fsync()  # its start is durable before its first step
            if kind in RANGE_KINDS:
                await kernel_cache.drop_cached_pages(ino)
            while not self.fs.op_step(kind, ino):
                self._forget_vanished()
                await trio.sleep(self.step_delay)
        except trio.Cancelled:
            log.info("unmounting: %s of inode %d stops here; the next mount finishes it", kind, ino)
            raise
        except Exception as exc:
            log.exception("%s of inode %d failed; the next mount finishes it", kind, ino)
            self._outcome[ino] = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
            raise
        finally:
            self.fs.op_over(kind, ino)  # may start the deletion of a file unlinked meanwhile
            self._forget_vanished()
            event = self._idle.pop(ino, None)
            if event is not None:
                event.set()
            if self._nursery is not None:
                if kind in RANGE_KINDS:  # for waiters that do not ask (a raw setfattr)
                    self._nursery.start_soon(kernel_cache.forget_inode, ino)
                for started in self.fs.take_started():
                    self._nursery.start_soon(self._drive_background, *started)

    async def _drive_background(self, kind: str, ino: int) -> None:
        try:
            await self._drive(kind, ino)
        except Exception:  # noqa: BLE001 - logged by _drive; the daemon goes on
            pass

    def _forget_vanished(self) -> None:
        vanished, self.fs.vanished = self.fs.vanished, []
        kernel_cache.forget_names(vanished)
