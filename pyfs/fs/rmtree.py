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
from collections.abc import Iterator
from dataclasses import replace

from ..engine.engine import Engine
from ..engine.transaction import Transaction
from ..format.records import ORPHAN_PREFIX, Dirent, Inode, Tree
from . import dirents, extent_steps, inodes, logged_ops
from .attr import Ctx
from .errors import FsError
from .logged_ops import OP_DELETE, OP_RMTREE, Op, StepEnv
from .names import check_name
from .perms import W_OK, X_OK, check_access, check_sticky
from .txn import Txn

Key = tuple


def step_rmtree(t: Transaction, op: Op, env: StepEnv) -> bool:
    """One step of `rmtree`; True when the whole tree, its top included, is gone."""
    top = int(op.args["ino"])
    cur = dict(op.cursor) if isinstance(op.cursor, dict) else {}
    cur.setdefault("removed", 0)
    op.cursor = cur
    if cur.get("file") is not None:
        # A file unlinked by an earlier step whose data did not fit that step.
        fop = Op(OP_DELETE, {"ino": int(cur["file"])}, cur.get("file_at"))
        if extent_steps.delete_step(t, fop, env):
            cur["file"], cur["file_at"] = None, None
        else:
            cur["file_at"] = fop.cursor
        return False
    budget = logged_ops.STEP_EXTENTS
    d = top
    path: list[tuple[int, Key]] = []  # (directory, dirent key of the next level) from top down
    while True:
        batch = list(itertools.islice(t.scan(Tree.DIRENTS, prefix=(d,)), budget))
        descended = False
        for key, raw in batch:
            child = Dirent.decode(raw).ino
            cinode = inodes.find(t, child)
            if cinode is not None and stat.S_ISDIR(cinode.mode) and dirents.has_entries(t, child):
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
        if len(batch) >= budget and dirents.has_entries(t, d):
            return False
        if d == top:
            return _remove_top(t, top, cur, env)
        parent, key = path.pop()
        big = _remove_entry(t, parent, key, d, inodes.find(t, d), top, env)
        cur["removed"] += 1
        budget -= 1
        if big is not None:  # an emptied directory whose xattrs did not fit this step
            cur["file"], cur["file_at"] = d, big.cursor
            return False
        d = parent
        if budget <= 0:
            return False


def _remove_entry(t: Transaction, d: int, key: Key, child: int, cinode: Inode | None, top: int,
                  env: StepEnv) -> Op | None:
    """Remove entry `key` of directory `d` naming `child` (an empty directory or not a directory).

    Returns the delete op of a file whose data did not fit this step, if any.
    """
    t.delete(Tree.DIRENTS, key)
    env.removed(d, key[2], child)
    if cinode is None:
        return None  # a dangling entry: nothing else to undo
    is_dir = stat.S_ISDIR(cinode.mode)
    if is_dir and d != top:
        dinode = inodes.find(t, d)
        if dinode is not None:
            inodes.put(t, d, replace(dinode, nlink=max(2, dinode.nlink - 1)))
    nlink = 0 if is_dir else max(0, cinode.nlink - 1)
    inodes.put(t, child, replace(cinode, nlink=nlink))
    if nlink:
        return None
    t.put(Tree.MISC, (ORPHAN_PREFIX, child), b"")
    if env.in_use(child):
        return None  # lives on as an orphan until released or forgotten
    fop = Op(OP_DELETE, {"ino": child})
    return None if extent_steps.delete_step(t, fop, env) else fop


def _remove_top(t: Transaction, top: int, cur: dict, env: StepEnv) -> bool:
    if inodes.find(t, top) is None or env.in_use(top):
        return True  # in use: its orphan key (from the first step) deletes it later
    fop = Op(OP_DELETE, {"ino": top})
    if extent_steps.delete_step(t, fop, env):
        return True
    cur["file"], cur["file_at"] = top, fop.cursor
    return False


def start_rmtree(x: Txn, parent: int, name: bytes, label: str | None = None, tree_checked: bool = False) -> int:
    """Validate and begin removing the tree `parent/name` in `x`; returns its ino.

    The caller needs the permission rmdir(2) asks for (write and search on
    `parent`; in a sticky `parent`, owning it or the directory); a caller
    other than root also needs write and search on every directory inside,
    as `rm -rf` would, and in a sticky directory inside, to own it or each
    entry (else EPERM), or nothing is removed.  That walk is skipped when
    `tree_checked` says the caller has just made it (`access_walk`, in
    pieces).  An empty directory goes in `x` alone, without a logged op
    (it is then in `x.unlinked`); otherwise the op is in `x.started`.
    """
    check_name(name)
    if name in (b".", b".."):
        raise FsError(errno.EINVAL)
    t, caller = x.t, x.caller
    pinode, entry, inode = dirents.named(t, parent, name)
    if not stat.S_ISDIR(inode.mode):
        raise FsError(errno.ENOTDIR)
    check_access(pinode, W_OK | X_OK, caller)
    check_sticky(pinode, inode, caller)
    top = entry.ino
    if caller.uid != 0 and not tree_checked:
        for _ in _walk(t, [top], caller, None):
            pass
    dirents.remove(t, parent, name)
    inodes.put(t, parent, replace(pinode, nlink=max(2, pinode.nlink - 1), mtime_ns=x.now, ctime_ns=x.now))
    inodes.drop_link(t, top, inode, x.now)  # nlink 0 and an orphan key
    if dirents.has_entries(t, top):
        args: dict = {"parent": parent}
        if label is not None:
            args["label"] = label
        logged_ops.start(t, OP_RMTREE, top, args, {"removed": 0})
        x.begin_long_op(OP_RMTREE, top)
    else:
        x.unlinked_last_name(top)
    return top


def access_walk(engine: Engine, parent: int, name: bytes, caller: Ctx, chunk: int) -> Iterator[None]:
    """EACCES unless `caller` may write and search every directory of the tree `parent/name`.

    Yields after every `chunk` entries, each piece in a fresh read-only
    view, so a driver can serve other requests during a walk of a big tree.
    A missing `name` is left for `start_rmtree` to report.
    """
    with engine.transaction() as t:
        entry = dirents.find(t, parent, name)
    if entry is None:
        return
    todo = [entry.ino]
    while todo:
        with engine.transaction() as t:
            for _ in _walk(t, todo, caller, chunk):
                break
        yield


def _walk(t: Transaction, todo: list[int], caller: Ctx, chunk: int | None) -> Iterator[None]:
    """Check directories from `todo` (consumed, refilled with their subdirectories); yields every `chunk` entries."""
    seen = 0
    while todo:
        d = todo.pop()
        dinode = inodes.find(t, d)
        if dinode is None or not stat.S_ISDIR(dinode.mode):
            continue
        check_access(dinode, W_OK | X_OK, caller)
        sticky = bool(dinode.mode & stat.S_ISVTX) and caller.uid != dinode.uid
        for _key, raw in t.scan(Tree.DIRENTS, prefix=(d,)):
            child = Dirent.decode(raw)
            if child.kind == stat.S_IFDIR:
                todo.append(child.ino)
            if sticky:
                # As unlink(2) in a sticky directory: only its owner or the entry's may remove it.
                cinode = inodes.find(t, child.ino)
                if cinode is not None and cinode.uid != caller.uid:
                    raise FsError(errno.EPERM)
            seen += 1
        if chunk is not None and seen >= chunk:
            yield
            seen = 0
