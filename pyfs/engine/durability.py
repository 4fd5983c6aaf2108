"""Making committed entries and written data durable, and failing read-only when that goes wrong.

`Durability` runs the journal's flushes for the engine: the blocking one
(`flush`), the group commit of async callers (`flush_async`, whose device I/O
runs in a worker thread) and the periodic commit timer.  It is the engine's
only user of trio.

Promises (DESIGN.md invariants 4 and 6):
- When `flush` or `flush_async` returns, every entry committed before the
  call is durable, and so is every data region written before it: the device
  is flushed before the entries are written whenever data is unsynced
  (tests/test_engine.py).
- Flush jobs reach the device in the order they were prepared: `io_lock` is
  held from `prepare_flush` until the job's I/O is done, by the worker thread
  for async flushes.  A checkpoint holds the same lock while it writes nodes.
- Group commit: an async caller that finds a flush in flight waits for it,
  and starts another only if its entries were not in it.
- The commit timer flushes every interval while something is pending, so
  without fsync a crash loses at most the last interval (invariant 6).
- The first failed write or flush is kept in `failed`: from then on every
  flush raises EIO, and the engine refuses commits (EROFS).  A failed flush
  is never retried, so durability is never claimed that the disk did not
  give (tests/test_engine.py, tests/test_crash.py).
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .device import Device
from .journal_writer import FlushJob, JournalWriter

if TYPE_CHECKING:
    import trio

log = logging.getLogger(__name__)


class Durability:
    """The flushes of one open image's journal; see the module docstring."""

    def __init__(self, journal: JournalWriter, device: Device) -> None:
        self.journal = journal
        self.device = device
        self.failed: OSError | None = None
        self.data_unsynced = False  # a data region was written since the last device flush
        self.io_lock = threading.Lock()  # held while a flush job or a checkpoint writes
        self._flush_done: trio.Event | None = None  # the async flush in flight, if any

    # -- failure ---------------------------------------------------------------

    def fail(self, exc: OSError) -> None:
        """Remember the first I/O failure: the engine is read-only from now on."""
        if self.failed is None:
            log.error("I/O error, the filesystem is now read-only: %s", exc)
            self.failed = exc

    def check_flushable(self) -> None:
        """EIO once an I/O error happened: nothing can be made durable any more."""
        if self.failed is not None:
            raise OSError(errno.EIO, f"cannot flush after an I/O error: {self.failed}")

    # -- what is waiting -------------------------------------------------------

    def data_written(self) -> None:
        """A data region was written: the next flush must flush the device first."""
        self.data_unsynced = True

    @property
    def pending(self) -> bool:
        """Something committed or written is not durable yet."""
        return self.journal.has_pending or self.data_unsynced

    # -- flushing --------------------------------------------------------------

    def flush(self) -> int:
        """Make every committed entry and written region durable; returns the durable seq."""
        self.check_flushable()
        with self.io_lock:
            self.flush_locked()
        return self.journal.durable_seq

    def flush_locked(self) -> None:
        """`flush` for a caller that holds `io_lock` (a checkpoint)."""
        if not self.pending:
            return
        job = self.journal.prepare_flush()
        data = self.data_unsynced
        self.data_unsynced = False
        self.run_job(job, data)

    def prove_locked(self) -> None:
        """Make `reusable_seq` reach `durable_seq` (v2): an empty entry carrying it, flushed.

        Space emptied by durable transactions may then be handed out again.
        The caller holds `io_lock` and has just flushed.
        """
        journal = self.journal
        if journal.reusable_seq < journal.durable_seq:
            journal.append({"keys": []})
            self.flush_locked()

    def flush_device(self) -> None:
        """Flush the device alone (a checkpoint's nodes); every data region written is durable after it."""
        self.device.flush()
        self.data_unsynced = False

    def run_job(self, job: FlushJob, data: bool) -> None:
        """Write one prepared job (the caller holds `io_lock`); EIO and read-only if it fails."""
        try:
            self.journal.run_flush(job, data)
        except OSError as exc:
            self.fail(exc)
            raise OSError(errno.EIO, f"flush failed: {exc}") from exc
        self.journal.complete_flush(job)

    async def flush_async(self) -> int:
        """Like `flush`, but the I/O runs in a worker thread; callers share flushes."""
        import trio

        journal = self.journal
        self.check_flushable()
        target = journal.last_committed_seq
        while journal.durable_seq < target:
            if self._flush_done is not None:
                await self._flush_done.wait()
                self.check_flushable()
                continue
            done = trio.Event()
            self._flush_done = done
            self.io_lock.acquire()  # released by the worker, so jobs run in the order prepared
            try:
                job = journal.prepare_flush()
                data = self.data_unsynced
                self.data_unsynced = False
            except BaseException:
                self.io_lock.release()
                raise

            def work() -> None:
                try:
                    self.run_job(job, data)
                finally:
                    self.io_lock.release()

            try:
                await trio.to_thread.run_sync(work)
            finally:
                self._flush_done = None
                done.set()
        return journal.durable_seq

    async def run_commit_timer(self, interval: float, stopped: Callable[[], bool]) -> None:
        """Flush every `interval` seconds while there is something to flush, until `stopped()`."""
        import trio

        while not stopped():
            await trio.sleep(interval)
            if stopped() or self.failed is not None:
                continue
            if self.pending:
                try:
                    await self.flush_async()
                except OSError as exc:
                    log.error("background flush failed: %s", exc)
