"""Serving a mounted filesystem: the kernel mount, one nursery for all its work, and a clean unmount.

`serve` is the daemon's life between opening the image and closing it:
mount the `FileSystem` at a mount point, answer requests, and end.

Promises (DESIGN.md invariants 6, 7 and 9; proven by tests/test_mount.py
and tests/test_control_mount.py):
- Unmounting by the kernel (`fusermount3 -u`, `pyfs umount`), SIGTERM and
  SIGINT all end the same way: requests stop, background work stops, the
  kernel session closes, the final checkpoint is written
  (`FileSystem.close`), the mount point's lock is released.  The
  filesystem is closed whatever happens, a failed mount included.
- All background work lives in the one nursery `_Session.run` opens: the
  signal watcher, the commit timer (a crash without fsync loses at most
  one commit interval, invariant 6) and the long operations running in the
  background.  When requests end the nursery is cancelled, so a long
  operation stops between two steps and the next mount finishes it
  (invariant 7).  The shutdown order is written here and nowhere else.
- A stop signal is honoured from the moment the kernel mount exists: the
  signals are blocked (kept pending) from before the mount until the
  watcher runs, and ignored outside it (during the final checkpoint, in
  every thread), so one during the final checkpoint does not interrupt it.
- A mount libfuse refuses, and a failed final checkpoint, are a
  `MountError` whose message is one line (libfuse's own complaint on fd 2
  is caught and becomes that line; anything else it wrote is passed on).
- `ready` is called once requests are served and signals are watched.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Collection

import pyfuse3
import trio

from ..fs import FileSystem
from . import mount_marks
from .operations import PyfsOperations

log = logging.getLogger(__name__)

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


class MountError(Exception):
    """The mount failed or ended badly; the message is one line for the user."""


def fuse_options(options: set[str], image: str) -> set[str]:
    """libfuse's defaults with the user's options (`no_default_permissions` drops a default)."""
    fuse_opts = set(pyfuse3.default_options)
    if "no_default_permissions" in options:
        fuse_opts.discard("default_permissions")
    fuse_opts |= options - {"no_default_permissions"}
    fuse_opts.add(mount_marks.fsname_option(image))
    fuse_opts.add("subtype=pyfs")
    return fuse_opts


def serve(fs: FileSystem, mountpoint: str, options: set[str], commit: float,
          ready: Callable[[], None] | None = None, step_delay: float = 0.0) -> None:
    """Mount `fs` at `mountpoint` and serve requests until unmounted or signalled; then close `fs`.

    `commit` is the commit interval in seconds (0: no timer); `step_delay`
    pauses between the steps of long operations (tests).
    """
    fuse_opts = fuse_options(options, fs.engine.device.path)
    directory_lock = mount_marks.hold_directory(mountpoint)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    old_handlers = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        operations = PyfsOperations(fs, step_delay)
        _mount(operations, mountpoint, fuse_opts)
    except BaseException:
        try:
            _close(fs)
        finally:
            mount_marks.release_directory(directory_lock)
            for signum, handler in old_handlers.items():
                signal.signal(signum, handler)
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        raise
    # From here on the stop signals stay ignored to the end of the process:
    # nothing may interrupt the final checkpoint.
    session = _Session(fs, operations, commit, ready)
    try:
        trio.run(session.run)
    except BaseException:
        session.unmount = True
        raise
    finally:
        try:
            pyfuse3.close(unmount=session.unmount)
        finally:
            try:
                _close(fs)
            finally:
                mount_marks.release_directory(directory_lock)
    log.info("unmounted cleanly")


class _Session:
    """One kernel session: the nursery of all background work, and whether closing must unmount."""

    def __init__(self, fs: FileSystem, operations: PyfsOperations, commit: float,
                 ready: Callable[[], None] | None) -> None:
        self.fs = fs
        self.operations = operations
        self.commit = commit
        self.ready = ready
        # True unless the kernel ended the session (fusermount3 -u): unmounting
        # again then could detach whatever has been mounted there since.
        self.unmount = True

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self.unmount = False
            await nursery.start(self._watch_signals)
            self.operations.start_background(nursery)
            if self.commit > 0 and not self.fs.read_only:
                nursery.start_soon(self.fs.engine.run_commit_timer, self.commit)
            if self.ready is not None:
                self.ready()
            await pyfuse3.main()
            # Requests are over: stop the signal watcher, the commit timer and
            # the background long operations (between steps).
            nursery.cancel_scope.cancel()

    async def _watch_signals(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            task_status.started()
            async for signum in signals:
                if self.unmount:
                    log.info("signal %d: already unmounting", signum)
                    continue
                log.info("signal %d: unmounting", signum)
                self.unmount = True
                pyfuse3.terminate()


def _mount(operations: PyfsOperations, mountpoint: str, fuse_opts: set[str]) -> None:
    """The kernel mount; a refusal is a MountError with libfuse's reason on one line."""
    # libfuse explains a refusal on fd 2 ("fuse: unknown option(s)...");
    # catch it so the user gets one line, not two.
    refused: RuntimeError | None = None
    with _Fd2Captured() as captured:
        try:
            pyfuse3.init(operations, mountpoint, fuse_opts)
        except RuntimeError as exc:
            refused = exc
    if refused is None:
        captured.forward()
        return
    fuse_lines = [ln for ln in captured.lines() if ln.startswith("fuse")]
    captured.forward(exclude=fuse_lines)
    reason = "; ".join(fuse_lines) or str(refused)
    raise MountError(f"cannot mount on {mountpoint}: {reason}")


def _close(fs: FileSystem) -> None:
    """Final checkpoint and release of the image; a failure is one line, not a traceback."""
    try:
        fs.close()
    except OSError as exc:
        raise MountError(f"final checkpoint failed: {exc}; run fsck.pyfs") from None


class _Fd2Captured:
    """Collect what is written to fd 2 (by libfuse's C code) while the block runs."""

    def __enter__(self) -> "_Fd2Captured":
        self._file = tempfile.TemporaryFile()
        sys.stderr.flush()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)

    def lines(self) -> list[str]:
        self._file.seek(0)
        return [ln.strip() for ln in self._file.read().decode(errors="replace").splitlines() if ln.strip()]

    def forward(self, exclude: Collection[str] = ()) -> None:
        """Pass what was captured on to the real fd 2 (log lines, warnings)."""
        rest = [ln for ln in self.lines() if ln not in exclude]
        self._file.close()
        if rest:
            try:
                os.write(2, ("\n".join(rest) + "\n").encode())
            except OSError:
                pass
