"""Removing a directory tree as one logged operation (`rm -rf` that survives crashes).

Promises:
- The first transaction takes the directory out of its parent (the parent's
  link count and times change with it), sets its link count to 0 and gives
  it an orphan key, and records the `rmtree` logged op.  From then on the
  tree is unreachable by path, and a crash ends with the tree gone.
- Each later step removes up to `limit` entries, depth first: a directory
  leaves its parent only once it is empty.  A removed name drops one link
  of its inode; an inode left without links is deleted in the same step
  unless it is still in use (open, or known to the kernel), in which case
  it becomes an orphan, exactly as after unlink.  A file with more data
  than a step can drop is unlinked first (orphan key) and its data deleted
  over the following steps, before the walk goes on.
- The walk needs no cursor: every step starts again at the top and follows
  the first non-empty subdirectory down, so it never skips a subtree that
  something renamed into the doomed tree in the meantime.
"""

from __future__ import annotations

import errno
import itertools
import stat
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from ..format.records import ORPHAN_PREFIX, Dirent, Inode, Tree
from ..engine.transaction import Transaction
from . import longops
from .attr import Ctx
from .errors import FsError
from .names import check_name

if TYPE_CHECKING:
    from .filesystem import FileSystem

Key = tuple


def _inode(t: Transaction, ino: int) -> Inode | None:
    raw = t.get(Tree.INODES, (ino,))
    return Inode.decode(raw) if raw is not None else None


def _has_entries(t: Transaction, ino: int) -> bool:
    return next(iter(t.scan(Tree.DIRENTS, prefix=(ino,))), None) is not None


def step_rmtree(t: Transaction, op: longops.Op, env: longops.StepEnv, limit: int) -> bool:
    """One step of `rmtree`; True when the whole tree, its top included, is gone."""
    top = int(op.args["ino"])
    cur = dict(op.cursor) if isinstance(op.cursor, dict) else {}
    cur.setdefault("removed", 0)
    op.cursor = cur
    if cur.get("file") is not None:
        # A file unlinked by an earlier step whose data did not fit that step.
        fop = longops.Op(longops.OP_DELETE, {"ino": int(cur["file"])}, cur.get("file_at"))
        if longops.delete_step(t, fop, env):
            cur["file"], cur["file_at"] = None, None
        else:
            cur["file_at"] = fop.cursor
        return False
    budget = limit
    d = top
    path: list[tuple[int, Key]] = []  # (directory, dirent key of the next level) from top down
    while True:
        batch = list(itertools.islice(t.scan(Tree.DIRENTS, prefix=(d,)), budget))
        descended = False
        for key, raw in batch:
            child = Dirent.decode(raw).ino
            cinode = _inode(t, child)
            if cinode is not None and stat.S_ISDIR(cinode.mode) and _has_entries(t, child):
                path.append((d, key))
                d = child
                descended = True
                break
            big = _remove_entry(t, d, key, child, cinode, top, env)
            cur["removed"] += 1
            budget -= 1
            if big is not None:
                cur["file"], cur["file_at"] = child, big.cursor
                return False
            if budget <= 0:
                return False
        if descended:
            continue
        if len(batch) >= budget and _has_entries(t, d):
            return False
        if d == top:
            return _remove_top(t, top, cur, env)
        parent, key = path.pop()
        big = _remove_entry(t, parent, key, d, _inode(t, d), top, env)
        cur["removed"] += 1
        budget -= 1
        if big is not None:  # an emptied directory whose xattrs did not fit this step
            cur["file"], cur["file_at"] = d, big.cursor
            return False
        d = parent
        if budget <= 0:
            return False


def _remove_entry(t: Transaction, d: int, key: Key, child: int, cinode: Inode | None, top: int,
                  env: longops.StepEnv) -> longops.Op | None:
    """Remove entry `key` of directory `d` naming `child` (an empty directory or not a directory).

    Returns the delete op of a file whose data did not fit this step, if any.
    """
    t.delete(Tree.DIRENTS, key)
    env.removed(d, key[2], child)
    if cinode is None:
        return None  # a dangling entry: nothing else to undo
    is_dir = stat.S_ISDIR(cinode.mode)
    if is_dir and d != top:
        dinode = _inode(t, d)
        if dinode is not None:
            t.put(Tree.INODES, (d,), replace(dinode, nlink=max(2, dinode.nlink - 1)).encode())
    nlink = 0 if is_dir else max(0, cinode.nlink - 1)
    t.put(Tree.INODES, (child,), replace(cinode, nlink=nlink).encode())
    if nlink:
        return None
    t.put(Tree.MISC, (ORPHAN_PREFIX, child), b"")
    if env.in_use(child):
        return None  # lives on as an orphan until released or forgotten
    fop = longops.Op(longops.OP_DELETE, {"ino": child})
    return None if longops.delete_step(t, fop, env) else fop


def _remove_top(t: Transaction, top: int, cur: dict, env: longops.StepEnv) -> bool:
    if _inode(t, top) is None or env.in_use(top):
        return True  # in use: its orphan key (from the first step) deletes it later
    fop = longops.Op(longops.OP_DELETE, {"ino": top})
    if longops.delete_step(t, fop, env):
        return True
    cur["file"], cur["file_at"] = top, fop.cursor
    return False


def start_rmtree(fs: "FileSystem", parent: int, name: bytes, ctx: Ctx, label: str | None,
                 tree_checked: bool = False) -> tuple[int, bool]:
    """Validate and begin removing the tree `parent/name`; returns (its ino, whether steps remain).

    The caller needs the permission rmdir(2) asks for (write and search on
    `parent`; in a sticky `parent`, owning it or the directory); a caller
    other than root also needs write and search on every directory inside,
    as `rm -rf` would, and in a sticky directory inside, to own it or each
    entry (else EPERM), or nothing is removed.  That walk is skipped when
    `tree_checked` says the caller has just made it (`access_walk`, in
    pieces).  An empty directory goes in one transaction, without a logged op.
    """
    check_name(name)
    if name in (b".", b".."):
        raise FsError(errno.EINVAL)
    now = time.time_ns()
    with fs._txn() as t:
        pinode, entry, inode = fs._named(t, parent, name)
        if not stat.S_ISDIR(inode.mode):
            raise FsError(errno.ENOTDIR)
        fs.check_access(pinode, 3, ctx)
        if pinode.mode & stat.S_ISVTX and ctx.uid not in (0, pinode.uid, inode.uid):
            raise FsError(errno.EPERM)
        top = entry.ino
        if ctx.uid != 0 and not tree_checked:
            for _ in _walk(fs, t, [top], ctx, None):
                pass
        fs._unlink_entry(t, parent, name)
        fs._put(t, parent, replace(pinode, nlink=max(2, pinode.nlink - 1), mtime_ns=now, ctime_ns=now))
        fs._drop_link(t, top, inode, now)  # nlink 0 and an orphan key
        empty = not _has_entries(t, top)
        if not empty:
            args: dict = {"parent": parent}
            if label is not None:
                args["label"] = label
            longops.start(t, longops.OP_RMTREE, top, args, {"removed": 0})
    return top, not empty


def access_walk(fs: "FileSystem", parent: int, name: bytes, ctx: Ctx, chunk: int) -> Iterator[None]:
    """EACCES unless `ctx` may write and search every directory of the tree `parent/name`.

    Yields after every `chunk` entries, each piece in a fresh read-only
    view, so a driver can serve other requests during a walk of a big tree.
    A missing `name` is left for `start_rmtree` to report.
    """
    with fs._view() as t:
        entry = fs._entry(t, parent, name)
    if entry is None:
        return
    todo = [entry.ino]
    while todo:
        with fs._view() as t:
            for _ in _walk(fs, t, todo, ctx, chunk):
                break
        yield


def _walk(fs: "FileSystem", t: Transaction, todo: list[int], ctx: Ctx, chunk: int | None) -> Iterator[None]:
    """Check directories from `todo` (consumed, refilled with their subdirectories); yields every `chunk` entries."""
    seen = 0
    while todo:
        d = todo.pop()
        dinode = _inode(t, d)
        if dinode is None or not stat.S_ISDIR(dinode.mode):
            continue
        fs.check_access(dinode, 3, ctx)
        sticky = bool(dinode.mode & stat.S_ISVTX) and ctx.uid != dinode.uid
        for _key, raw in t.scan(Tree.DIRENTS, prefix=(d,)):
            child = Dirent.decode(raw)
            if child.kind == stat.S_IFDIR:
                todo.append(child.ino)
            if sticky:
                # As unlink(2) in a sticky directory: only its owner or the entry's may remove it.
                cinode = _inode(t, child.ino)
                if cinode is not None and cinode.uid != ctx.uid:
                    raise FsError(errno.EPERM)
            seen += 1
        if chunk is not None and seen >= chunk:
            yield
            seen = 0
