"""Telling the kernel to forget what it caches of names and inodes that changed behind its back.

The kernel invalidates what its own requests change.  What changes without
a request of its own (a long operation's steps, a control command, the
names a tree removal takes away in the background) must be invalidated
here, or readers would see stale pages, sizes or names.

Promises:
- Nothing here fails a request: a name or inode the kernel does not hold
  (ENOENT) is nothing to do, any other refusal is a log line.
- The calls that may wait for a kernel lock run in a thread, since the
  request holding that lock may be waiting to be answered by this very
  daemon; `drop_cached_pages` gives up after a second instead of holding
  up the start of an operation.
Used by the long-operation runner and the control channel; the handlers
never call it (DESIGN.md: control channel, long operations atomic to users).
"""

from __future__ import annotations

import errno
import logging

import pyfuse3
import trio

log = logging.getLogger(__name__)

PAGE_DROP_PATIENCE = 1.0  # seconds before a page drop is abandoned, letting the operation start


def forget_names(vanished: list[tuple[int, bytes, int]]) -> None:
    """Queue the invalidation of each (parent, name, ino) that has gone from its directory."""
    for parent, name, _ino in vanished:
        # Not `deleted=`: for a directory the kernel still caches names in,
        # that fails with ENOTEMPTY and leaves the entry in place.
        pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)


async def forget_entry(parent: int, name: bytes, ino: int) -> None:
    """Make the kernel forget `parent/name` (now deleted, was `ino`) before the caller hears back.

    In a thread: the kernel takes the directory's lock, which a request
    being answered here may hold.
    """
    def work() -> None:
        try:
            try:
                pyfuse3.invalidate_entry(parent, name, deleted=ino)
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY:
                    raise
                # The kernel still caches names inside (a process works in
                # there): drop the entry without declaring it deleted.
                pyfuse3.invalidate_entry(parent, name)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("invalidating %r in %d: %s", name, parent, exc)

    await trio.to_thread.run_sync(work)


def _forget_inode_now(ino: int) -> None:
    try:
        pyfuse3.invalidate_inode(ino, attr_only=False)
    except OSError as exc:
        if exc.errno != errno.ENOENT:  # ENOENT: the kernel holds nothing of it
            log.warning("invalidating inode %d: %s", ino, exc)


async def forget_inode(ino: int) -> None:
    """Drop the kernel's cached pages and attributes of `ino`.

    In a thread: the kernel locks each cached page, and a read waiting
    here for the inode holds one until it is answered.
    """
    await trio.to_thread.run_sync(_forget_inode_now, ino)


async def drop_cached_pages(ino: int) -> None:
    """Before the first step of a range operation: no read may mix cached old pages with new ones.

    A page a waiting read holds locked cannot go now; that read waits for
    the operation and sees its end.  The thread is abandoned after
    `PAGE_DROP_PATIENCE` rather than keep the operation from starting.
    """
    with trio.move_on_after(PAGE_DROP_PATIENCE):
        await trio.to_thread.run_sync(_forget_inode_now, ino, abandon_on_cancel=True)
