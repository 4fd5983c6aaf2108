"""The seeded random workload of tools/crashloop.py, run through plain system calls.

Every operation is chosen from the model (so it is valid: no EEXIST, ENOENT
or ENOTEMPTY is expected), logged, performed with exactly one system call
that changes the filesystem, and applied to the model only once that call
returned.  `RoundLog` keeps, for the round, the operations that returned,
the one in flight when the daemon died, and the durability points (a
completed fsync, fdatasync, long operation or flush: every operation before
it must survive).

When the daemon is killed, the call in flight fails with ENOTCONN (or
ECONNABORTED); the workload stops there and the operation is "in flight": it
may or may not have happened.  ENOSPC is a normal failure (the model does
not change); any other unexpected errno, and any read that does not match the
model, is a live divergence and ends the run as a violation.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from crashloop_model import DURABLE_KINDS, UTIME_BASE, Model, Node, Op, TreeState, pattern, xattr_value

log = logging.getLogger("crashloop")

KiB = 1024
MiB = 1024 * KiB
MAX_WRITE = MiB - 4 * KiB  # one FUSE WRITE request even when unaligned (max_write is 1 MiB)
MAX_FILE = 6 * MiB
NAMES = ["a", "b", "c", "d", "e", "f", "g", "h", "data.bin", "notes.txt", "x" * 40]
XATTR_NAMES = ["user.a", "user.b", "user.colour", "user.big"]
MAX_DEPTH = 3
POOL_MAX = 4
LOST_CONNECTION = {errno.ENOTCONN, errno.ECONNABORTED, errno.ENODEV, errno.EIO, errno.EBADF, errno.ENOENT,
                   errno.ESTALE}
TOLERATED = {errno.ENOSPC}

SYNC = {"fsync": os.fsync, "fdatasync": os.fdatasync}
T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def renameat2(old: str, new: str, flags: int) -> None:
    fn = getattr(_libc, "renameat2", None)
    if fn is not None:
        rc = fn(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), ctypes.c_uint(flags))
    else:  # x86_64 syscall number
        rc = _libc.syscall(316, AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), ctypes.c_uint(flags))
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), old)


def _close_quietly(fd: int) -> None:
    """Close an fd; a close that fails (the daemon died) changes nothing the model follows."""
    with contextlib.suppress(OSError):
        os.close(fd)


def _open_close(path: str, flags: int, mode: int = 0o777) -> None:
    """open(2) as the one call that changes the filesystem (O_CREAT, O_TRUNC), then close."""
    _close_quietly(os.open(path, flags, mode))


class LiveDivergence(Exception):
    """The mounted filesystem disagreed with the model while the daemon was alive."""

    def __init__(self, message: str, err: int = 0) -> None:
        super().__init__(message)
        self.errno = err


class Stop(Exception):
    """The daemon is gone (killed) or the harness asked the workload to stop."""


@dataclass
class Durable:
    """A durability point: the first `prefix` operations of the round must survive."""

    prefix: int
    log_pos: int  # recording log size when the call returned (power-cut mode), else 0
    at: float  # time.monotonic() when it returned


@dataclass
class RoundLog:
    """What one round did, for the checks after the crash."""

    number: int
    start: Model  # the verified model when the round's operations began
    applied: list[Op] = field(default_factory=list)  # operations that returned, in order
    start_pos: list[int] = field(default_factory=list)  # recording log size before each applied op
    done_at: list[float] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)  # digests[k]: state after the first k ops
    file_bytes: list[int] = field(default_factory=list)
    durables: list[Durable] = field(default_factory=list)
    inflight: Op | None = None
    inflight_pos: int = 0
    failed: int = 0  # operations that failed with a tolerated errno (no change)
    divergence: str | None = None

    def begin(self) -> None:
        """Record the state the round starts from (prefix 0), once."""
        if not self.digests:
            state = self.start.state()
            self.digests.append(state.digest())
            self.file_bytes.append(state.file_bytes())

    def record(self, op: Op, state: TreeState, pos: int, at: float) -> None:
        """`op` returned at `at` (started at recording log size `pos`); `state` is the model after it."""
        self.applied.append(op)
        self.start_pos.append(pos)
        self.done_at.append(at)
        self.digests.append(state.digest())
        self.file_bytes.append(state.file_bytes())

    def model_after(self, k: int) -> Model:
        """A fresh model of the first `k` applied operations."""
        m = self.start.copy()
        for op in self.applied[:k]:
            m.apply(op)
        return m

    def durable_prefix(self, log_pos: int | None = None) -> int:
        """The longest prefix made durable (by calls that returned before `log_pos`, if given)."""
        best = 0
        for d in self.durables:
            if log_pos is None or d.log_pos <= log_pos:
                best = max(best, d.prefix)
        return best


class OpLog:
    """The operations log: one JSON line per event, outside the mount, flushed per line."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open(path, "a", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()

    def event(self, ev: str, **fields) -> None:
        fields = {"ev": ev, "t": round(time.time(), 6), **fields}
        with self._lock:
            self._file.write(json.dumps(fields, sort_keys=True) + "\n")

    def close(self) -> None:
        self._file.close()


@dataclass
class PoolFd:
    fd: int
    fid: int
    append: bool


class Workload:
    """Chooses, performs and models operations until stopped (see the module docstring)."""

    def __init__(self, model: Model, rng: random.Random, root: str, oplog: OpLog, *, long_ops: bool,
                 max_bytes: int, next_index: int, next_fid: int,
                 log_pos: Callable[[], int] = lambda: 0) -> None:
        self.model = model
        self.rng = rng
        self.root = root
        self.oplog = oplog
        self.long_ops = long_ops
        self.max_bytes = max_bytes
        self.next_index = next_index
        self.next_fid = next_fid
        self.log_pos = log_pos
        self.pool: list[PoolFd] = []
        self.killed = threading.Event()
        self.stop = threading.Event()
        self.notes: list[str] = []
        self.counts: dict[str, int] = {}
        self._round: RoundLog | None = None
        self._walk: list[tuple[str, Node]] = []

    # -- the loop -----------------------------------------------------------------------

    def run_round(self, rlog: RoundLog, max_ops: int | None = None) -> None:
        """Run operations into `rlog` until the daemon dies, `stop` is set, or `max_ops` ran."""
        self._round = rlog
        rlog.begin()
        done = 0
        try:
            while not self.stop.is_set() and (max_ops is None or done < max_ops):
                self.step()
                done += 1
        except Stop:
            pass
        except LiveDivergence as exc:
            rlog.divergence = str(exc)
        finally:
            self.close_pool()

    def close_pool(self) -> None:
        for p in self.pool:
            _close_quietly(p.fd)
        self.pool.clear()

    def _path(self, rel: str) -> str:
        return self.root if rel in (".", "") else os.path.join(self.root, rel)

    def _new_op(self, kind: str, args: dict) -> Op:
        op = Op(self.next_index, kind, args, durable=kind in DURABLE_KINDS)
        self.next_index += 1
        return op

    def step(self) -> None:
        """One operation: its kind, then what it works on (a file, an fd of the pool), then the rest."""
        self._walk = self.model.walk()
        kind = self._pick_kind()
        self.counts[kind] = self.counts.get(kind, 0) + 1
        do = getattr(self, f"_do_{kind}")
        if kind in self.ON_FILE:
            picked = self._choose(self._of_kind("file"))
            if picked is not None:
                do(*picked)
        elif kind in self.ON_POOL:
            p = self._choose(self.pool)
            if p is not None:
                do(p)
        else:
            do()

    # -- performing one operation ----------------------------------------------------------

    def _perform(self, op: Op, call: Callable[[], object], after: Callable[[object], None] | None = None) -> bool:
        """Log `op`, run its one mutating call, apply it to the model; False if it failed harmlessly."""
        rlog = self._round
        assert rlog is not None
        pos = self.log_pos()
        self.oplog.event("start", i=op.index, round=rlog.number, kind=op.kind, args=op.args, pos=pos)
        rlog.inflight, rlog.inflight_pos = op, pos
        try:
            result = call()
        except OSError as exc:
            if self.killed.is_set():  # whatever the errno (pyfs.client reports a dead mount as ENOTTY)
                self.oplog.event("inflight", i=op.index, errno=exc.errno)
                raise Stop() from None
            rlog.inflight = None
            if exc.errno in TOLERATED:
                rlog.failed += 1
                self.oplog.event("fail", i=op.index, errno=exc.errno)
                return False
            self.oplog.event("fail", i=op.index, errno=exc.errno)
            raise LiveDivergence(f"{op.describe()} failed with {errno.errorcode.get(exc.errno, exc.errno)} "
                                 f"({exc.strerror}) while the model expected success", exc.errno) from None
        rlog.inflight = None
        if after is not None:
            after(result)
        now = time.monotonic()
        self.model.apply(op)
        rlog.record(op, self.model.state(), pos, now)
        end_pos = self.log_pos()
        self.oplog.event("done", i=op.index, args=op.args, pos=end_pos)
        if op.durable:
            rlog.durables.append(Durable(len(rlog.applied), end_pos, now))
            self.oplog.event("durable", i=op.index, prefix=len(rlog.applied), pos=end_pos)
        return True

    def _prep(self, fn: Callable[[], object]) -> object:
        """A call that changes nothing (open for writing, stat): a lost connection stops the round."""
        try:
            return fn()
        except OSError as exc:
            if self.killed.is_set():
                raise Stop() from None
            raise LiveDivergence(f"preparing call failed: {exc!r}") from None

    @contextlib.contextmanager
    def _opened(self, path: str, flags: int) -> Iterator[int]:
        """An fd of `path` for an operation's one call (the open itself is a preparing call)."""
        fd = self._prep(lambda: os.open(self._path(path), flags))
        try:
            yield fd
        finally:
            _close_quietly(fd)

    # -- choosing ---------------------------------------------------------------------------

    WEIGHTS = {
        "create": 6, "mkdir": 4, "mkfifo": 1, "symlink": 3, "link": 3, "unlink": 5, "rmdir": 3,
        "rename": 6, "exchange": 3, "write_small": 14, "write_large": 4, "append": 6, "write_sparse": 2,
        "write_burst": 0.3, "truncate": 5, "setxattr": 4, "removexattr": 2, "chmod": 2, "utime": 2,
        "fsync": 3, "fdatasync": 2, "fsync_dir": 2,
        "pool_open": 3, "pool_close": 2, "pool_write": 5, "pool_fsync": 1, "pool_truncate": 1,
        "verify": 3,
        "collapse": 2, "insert": 2, "punch": 2, "zero": 2, "rmtree": 1, "flush": 1,
    }
    ON_FILE = {"write_small", "write_large", "write_sparse", "write_burst", "append", "truncate", "fsync",
               "fdatasync", "pool_open", "verify"}  # their `_do_` gets (path, node) of a file chosen first
    ON_POOL = {"pool_write", "pool_fsync", "pool_truncate"}  # theirs gets an open fd of the pool
    GROWTH = {"write_large", "write_sparse", "append", "insert", "create", "mkdir", "write_burst"}
    LONG = {"collapse", "insert", "punch", "zero", "rmtree", "flush"}

    def _pick_kind(self) -> str:
        full = self.model.file_bytes() > self.max_bytes
        kinds, weights = [], []
        for kind, w in self.WEIGHTS.items():
            if kind in self.LONG and not self.long_ops:
                continue
            if full and kind in self.GROWTH:
                continue
            kinds.append(kind)
            weights.append(w * (3 if full and kind in ("unlink", "truncate", "rmtree") else 1))
        return self.rng.choices(kinds, weights)[0]

    def _choose(self, items: list[T]) -> T | None:
        return self.rng.choice(items) if items else None

    def _of_kind(self, *kinds: str) -> list[tuple[str, Node]]:
        return [(p, n) for p, n in self._walk if n.kind in kinds and p != "."]

    def _dirs(self, max_depth: int = MAX_DEPTH) -> list[tuple[str, Node]]:
        return [(p, n) for p, n in self._walk if n.kind == "dir" and (p == "." or p.count("/") < max_depth)]

    def _free_name(self) -> str | None:
        for _ in range(8):
            dpath, d = self.rng.choice(self._dirs(MAX_DEPTH - 1))
            name = self.rng.choice(NAMES)
            assert d.entries is not None
            if name not in d.entries:
                return name if dpath == "." else f"{dpath}/{name}"
        return None

    def _mode(self) -> int:
        return self.rng.choice([0o644, 0o600, 0o755, 0o640, 0o664, 0o700])

    def _fid(self) -> int:
        fid = self.next_fid
        self.next_fid += 1
        return fid

    # -- names ---------------------------------------------------------------------------------

    def _new_node(self, kind: str, args: Callable[[], dict], call: Callable[[str, dict], object]) -> None:
        """A new `kind` at a free name: op args path, fid and `args()` (drawn after the name);
        `call(full path, op args)` makes it."""
        path = self._free_name()
        if path is None:
            return
        op = self._new_op(kind, {"path": path, "fid": self._fid(), **args()})
        self._perform(op, lambda: call(self._path(path), op.args))

    def _do_create(self) -> None:
        self._new_node("create", lambda: {"mode": self._mode()},
                       lambda full, a: _open_close(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, a["mode"]))

    def _do_mkdir(self) -> None:
        self._new_node("mkdir", lambda: {"mode": self.rng.choice([0o755, 0o700, 0o775])},
                       lambda full, a: os.mkdir(full, a["mode"]))

    def _do_mkfifo(self) -> None:
        self._new_node("mkfifo", lambda: {"mode": 0o644}, lambda full, a: os.mkfifo(full, a["mode"]))

    def _do_symlink(self) -> None:
        self._new_node("symlink", lambda: {"target": self._symlink_target()},
                       lambda full, a: os.symlink(a["target"], full))

    def _symlink_target(self) -> str:
        roll = self.rng.random()
        if roll < 0.1:
            return "long/" * self.rng.randint(100, 600)
        if roll < 0.5 and self._walk:
            return self.rng.choice(self._walk)[0]
        return f"t-{self.next_index}"

    def _do_link(self) -> None:
        files = self._of_kind("file")
        path = self._free_name()
        if not files or path is None:
            return
        src = self.rng.choice(files)[0]
        op = self._new_op("link", {"src": src, "dst": path})
        self._perform(op, lambda: os.link(self._path(src), self._path(path)))

    def _do_unlink(self) -> None:
        victims = self._of_kind("file", "symlink", "fifo")
        if not victims:
            return
        # Prefer files that are open: unlinking an open file makes an orphan.
        open_fids = {p.fid for p in self.pool}
        preferred = [v for v in victims if v[1].fid in open_fids]
        path = self.rng.choice(preferred if preferred and self.rng.random() < 0.4 else victims)[0]
        op = self._new_op("unlink", {"path": path})
        if self._perform(op, lambda: os.unlink(self._path(path))):
            self._forget_unreachable()

    def _do_rmdir(self) -> None:
        picked = self._choose([(p, n) for p, n in self._of_kind("dir") if not n.entries])
        if picked is None:
            return
        path = picked[0]
        self._perform(self._new_op("rmdir", {"path": path}), lambda: os.rmdir(self._path(path)))

    def _is_inside(self, path: str, ancestor: str) -> bool:
        return path == ancestor or path.startswith(ancestor + "/")

    def _do_rename(self) -> None:
        entries = self._of_kind("file", "dir", "symlink", "fifo")
        if not entries:
            return
        src, snode = self.rng.choice(entries)
        flags = RENAME_NOREPLACE if self.rng.random() < 0.15 else 0
        if self.rng.random() < 0.45:
            # Over an existing name of a compatible kind.
            if snode.kind == "dir":
                targets = [(p, n) for p, n in self._of_kind("dir") if not n.entries]
            else:
                targets = self._of_kind("file", "symlink", "fifo")
            targets = [(p, n) for p, n in targets if p != src]
            flags = 0
            if not targets:
                return
            dst = self.rng.choice(targets)[0]
        else:
            dst = self._free_name()
            if dst is None:
                return
        if snode.kind == "dir" and (self._is_inside(dst, src) or dst.count("/") >= MAX_DEPTH
                                    or self._depth_below(snode) + dst.count("/") >= MAX_DEPTH + 1):
            return
        op = self._new_op("rename", {"src": src, "dst": dst, "flags": flags})
        if flags:
            self._perform(op, lambda: renameat2(self._path(src), self._path(dst), flags))
        else:
            self._perform(op, lambda: os.rename(self._path(src), self._path(dst)))
        self._forget_unreachable()

    def _depth_below(self, node: Node) -> int:
        if node.kind != "dir" or not node.entries:
            return 0
        return 1 + max(self._depth_below(self.model.nodes[f]) for f in node.entries.values())

    def _do_exchange(self) -> None:
        entries = self._of_kind("file", "dir", "symlink", "fifo")
        if len(entries) < 2:
            return
        (a, an), (b, bn) = self.rng.sample(entries, 2)
        if self._is_inside(a, b) or self._is_inside(b, a):
            return
        # Keep the tree shallow: a directory may only move to a place no deeper.
        if (an.kind == "dir" and b.count("/") > a.count("/")) or (bn.kind == "dir" and a.count("/") > b.count("/")):
            return
        op = self._new_op("rename", {"src": a, "dst": b, "flags": RENAME_EXCHANGE})
        self._perform(op, lambda: renameat2(self._path(a), self._path(b), RENAME_EXCHANGE))

    # -- data ------------------------------------------------------------------------------------

    def _write_op(self, fid: int, offset: int, length: int) -> Op:
        """A write of `length` bytes (clamped to one FUSE request and the file size limit); gen = index."""
        length = max(1, min(length, MAX_WRITE, MAX_FILE - offset))
        return self._new_op("write", {"fid": fid, "offset": offset, "length": length, "gen": self.next_index,
                                      "written": length})

    def _write(self, op: Op, fd: int, append: bool = False) -> None:
        """The one write(2) (O_APPEND) or pwrite(2) of a write op, with the data its args name."""
        a = op.args
        data = pattern(a["fid"], op.index, a["offset"], a["length"])
        if not append:
            self._perform(op, lambda: os.pwrite(fd, data, a["offset"]), lambda n: a.update(written=n))
            return
        a["append"] = True
        if self._perform(op, lambda: os.write(fd, data), lambda n: a.update(written=n)):
            self._check_append(fd, op)

    def _path_write(self, path: str, node: Node, offset: int, length: int) -> None:
        if offset >= MAX_FILE:
            return
        op = self._write_op(node.fid, offset, length)
        with self._opened(path, os.O_WRONLY) as fd:
            self._write(op, fd)

    def _do_write_small(self, path: str, node: Node) -> None:
        size = node.size
        offset = size if self.rng.random() < 0.25 else self.rng.randint(0, size)
        self._path_write(path, node, offset, self.rng.choice([1, 17, 512, 4096, self.rng.randint(1, 8192)]))

    def _do_write_large(self, path: str, node: Node) -> None:
        size = node.size
        offset = self.rng.randint(0, size)
        if self.rng.random() < 0.5:
            offset -= offset % 4096
        self._path_write(path, node, offset, self.rng.randint(64 * KiB, MAX_WRITE))

    def _do_write_sparse(self, path: str, node: Node) -> None:
        size = node.size
        self._path_write(path, node, size + self.rng.randint(1, 2 * MiB), self.rng.randint(1, 256 * KiB))

    def _do_write_burst(self, path: str, node: Node) -> None:
        """Many small writes a block apart: a file of more than STEP_EXTENTS (256) extents, so that
        truncating, deleting or overwriting it is a long operation or a write in pieces."""
        start = self.rng.randint(0, 64) * 4096
        count = self.rng.randint(260, 400)
        if start + count * 8192 > MAX_FILE:
            return
        with self._opened(path, os.O_WRONLY) as fd:
            for i in range(count):
                self._write(self._write_op(node.fid, start + i * 8192, self.rng.choice([1, 100, 512])), fd)

    def _do_append(self, path: str, node: Node) -> None:
        size = node.size
        if size >= MAX_FILE:
            return
        length = self.rng.choice([1, 100, 4096, self.rng.randint(1, 64 * KiB), self.rng.randint(1, 512 * KiB)])
        op = self._write_op(node.fid, size, length)
        with self._opened(path, os.O_WRONLY | os.O_APPEND) as fd:
            self._write(op, fd, append=True)

    def _check_append(self, fd: int, op: Op) -> None:
        """An O_APPEND write must have landed at the end the model knows (the kernel caches the size)."""
        st = self._prep(lambda: os.fstat(fd))
        want = self.model.nodes[op.args["fid"]].size
        if st.st_size != want:
            raise LiveDivergence(f"{op.describe()}: after an O_APPEND write the file has {st.st_size} bytes, "
                                 f"the model {want}: the write did not land at the end of file")

    def _new_size(self, size: int) -> int:
        roll = self.rng.random()
        if roll < 0.2 or size == 0:
            new = 0 if size else self.rng.randint(1, 64 * KiB)
        elif roll < 0.7:
            new = self.rng.randint(0, size - 1)
        else:
            new = min(MAX_FILE, size + self.rng.randint(1, MiB))
        return new

    def _do_truncate(self, path: str, node: Node) -> None:
        size = node.size
        new = self._new_size(size)
        if new == size:
            return
        op = self._new_op("truncate", {"fid": node.fid, "size": new, "path": path})
        if new == 0 and self.rng.random() < 0.3:
            self._perform(op, lambda: _open_close(self._path(path), os.O_WRONLY | os.O_TRUNC))
        else:
            self._perform(op, lambda: os.truncate(self._path(path), new))

    # -- attributes ---------------------------------------------------------------------------------

    def _do_setxattr(self) -> None:
        picked = self._choose(self._of_kind("file", "dir"))
        if picked is None:
            return
        path = picked[0]
        name = self.rng.choice(XATTR_NAMES)
        length = self.rng.randint(4000, 9000) if name == "user.big" else self.rng.randint(0, 200)
        op = self._new_op("setxattr", {"path": path, "name": name, "length": length, "gen": self.next_index})
        value = xattr_value(op.index, length)
        self._perform(op, lambda: os.setxattr(self._path(path), name, value))

    def _do_removexattr(self) -> None:
        picked = self._choose([(p, n) for p, n in self._of_kind("file", "dir") if n.xattrs])
        if picked is None:
            return
        path, node = picked
        name = self.rng.choice(sorted(node.xattrs))
        op = self._new_op("removexattr", {"path": path, "name": name})
        self._perform(op, lambda: os.removexattr(self._path(path), name))

    def _do_chmod(self) -> None:
        picked = self._choose(self._of_kind("file", "dir", "fifo"))
        if picked is None:
            return
        path, node = picked
        mode = self.rng.randint(0, 0o777)
        if node.kind == "dir":
            mode |= 0o700
        op = self._new_op("chmod", {"path": path, "mode": mode})
        self._perform(op, lambda: os.chmod(self._path(path), mode))

    def _do_utime(self) -> None:
        entries = [(".", self.model.nodes[1]), *self._of_kind("file", "dir")]
        path = self.rng.choice(entries)[0]
        mtime = UTIME_BASE + self.rng.randint(0, 10**17) // 1000 * 1000
        op = self._new_op("utime", {"path": path, "mtime": mtime})
        self._perform(op, lambda: os.utime(self._path(path), ns=(mtime, mtime)))

    # -- durability ------------------------------------------------------------------------------------

    def _fsync_path(self, kind: str, path: str) -> None:
        op = self._new_op(kind, {"path": path})
        with self._opened(path, os.O_RDONLY) as fd:
            self._perform(op, lambda: SYNC[kind](fd))

    def _do_fsync(self, path: str, node: Node) -> None:
        self._fsync_path("fsync", path)

    def _do_fdatasync(self, path: str, node: Node) -> None:
        self._fsync_path("fdatasync", path)

    def _do_fsync_dir(self) -> None:
        path = self.rng.choice(self._dirs())[0]
        op = self._new_op("fsync_dir", {"path": path})
        with self._opened(path, os.O_RDONLY | os.O_DIRECTORY) as fd:
            self._perform(op, lambda: os.fsync(fd))

    # -- open files (writes to renamed and unlinked files) ------------------------------------------

    def _do_pool_open(self, path: str, node: Node) -> None:
        if len(self.pool) >= POOL_MAX:
            return
        append = self.rng.random() < 0.3
        fd = self._prep(lambda: os.open(self._path(path), os.O_RDWR | (os.O_APPEND if append else 0)))
        self.pool.append(PoolFd(fd, node.fid, append))

    def _do_pool_close(self) -> None:
        if not self.pool:
            return
        p = self.pool.pop(self.rng.randrange(len(self.pool)))
        try:
            os.close(p.fd)
        except OSError as exc:
            if not (self.killed.is_set() and exc.errno in LOST_CONNECTION):
                raise LiveDivergence(f"close failed: {exc!r}") from None
        self._forget_unreachable()

    def _do_pool_write(self, p: PoolFd) -> None:
        size = self.model.nodes[p.fid].size
        offset = size if p.append else self.rng.randint(0, size)
        if offset >= MAX_FILE:
            return
        op = self._write_op(p.fid, offset, self.rng.choice([1, 300, 4096, self.rng.randint(1, 128 * KiB)]))
        op.args["fd"] = True
        self._write(op, p.fd, p.append)

    def _do_pool_fsync(self, p: PoolFd) -> None:
        kind = self.rng.choice(["fsync", "fdatasync"])
        op = self._new_op(kind, {"fid": p.fid, "fd": True})
        self._perform(op, lambda: SYNC[kind](p.fd))

    def _do_pool_truncate(self, p: PoolFd) -> None:
        size = self.model.nodes[p.fid].size
        new = self._new_size(size)
        if new == size:
            return
        op = self._new_op("truncate", {"fid": p.fid, "size": new, "fd": True})
        self._perform(op, lambda: os.ftruncate(p.fd, new))

    def _forget_unreachable(self) -> None:
        self.model.prune(keep=[p.fid for p in self.pool])

    # -- reading back while alive ----------------------------------------------------------------------

    def _do_verify(self, path: str, node: Node) -> None:

        def read() -> bytes:
            with open(self._path(path), "rb") as f:
                return f.read()

        data = self._prep(read)
        if data != bytes(node.data or b""):
            expected = bytes(node.data or b"")
            at = next((i for i in range(min(len(data), len(expected))) if data[i] != expected[i]),
                      min(len(data), len(expected)))
            raise LiveDivergence(f"read of {path!r} (file {node.fid}) differs from the model at byte {at} "
                                 f"(size {len(data)}, model {len(expected)})")

    # -- long operations (pyfs/client/commands.py) --------------------------------------------------------------

    def _client(self):
        import pyfs.client.commands as client

        return client

    def _long(self, op: Op, call: Callable[[], object]) -> None:
        try:
            self._perform(op, call)
        except LiveDivergence as exc:
            if exc.errno in (errno.ENOTTY, errno.ENOSYS, errno.EOPNOTSUPP):
                self.long_ops = False
                self.notes.append(f"long operations disabled: the mount does not answer them ({exc})")
                log.warning("%s", self.notes[-1])
                return
            raise

    def _range_file(self, min_size: int) -> tuple[str, Node] | None:
        return self._choose([(p, n) for p, n in self._of_kind("file") if n.size >= min_size])

    def _blocks(self, upto: int) -> int:
        return self.rng.randint(0, max(0, upto // 4096)) * 4096

    def _do_collapse(self) -> None:
        picked = self._range_file(8192 + 1)
        if picked is None:
            return
        path, node = picked
        size = node.size
        offset = self._blocks(size - 4097)
        length = self.rng.randint(1, max(1, (size - 1 - offset) // 4096)) * 4096
        if offset + length >= size:
            return
        op = self._new_op("collapse", {"path": path, "offset": offset, "length": length})
        self._long(op, lambda: self._client().collapse(self._path(path), offset, length))

    def _do_insert(self) -> None:
        picked = self._range_file(1)
        if picked is None:
            return
        path, node = picked
        size = node.size
        offset = self._blocks(size - 1)
        length = self.rng.randint(1, 64) * 4096
        if offset >= size or size + length > MAX_FILE:
            return
        op = self._new_op("insert", {"path": path, "offset": offset, "length": length})
        self._long(op, lambda: self._client().insert(self._path(path), offset, length))

    def _do_punch(self) -> None:
        self._zeroing("punch")

    def _do_zero(self) -> None:
        self._zeroing("zero")

    def _zeroing(self, kind: str) -> None:
        picked = self._range_file(1)
        if picked is None:
            return
        path, node = picked
        size = node.size
        if self.rng.random() < 0.5:
            offset = self._blocks(size)
            length = self.rng.randint(1, 64) * 4096
        else:
            offset = self.rng.randint(0, size)
            length = self.rng.randint(1, 300 * KiB)
        keep_size = True if kind == "punch" else self.rng.random() < 0.5
        if not keep_size and offset + length > MAX_FILE:
            return
        op = self._new_op(kind, {"path": path, "offset": offset, "length": length, "keep_size": keep_size})
        fn = self._client().punch if kind == "punch" else self._client().zero
        self._long(op, lambda: fn(self._path(path), offset, length, keep_size=keep_size))

    def _do_rmtree(self) -> None:
        picked = self._choose(self._of_kind("dir"))
        if picked is None:
            return
        path = picked[0]
        op = self._new_op("rmtree", {"path": path})
        self._long(op, lambda: self._client().rmtree(self._path(path)))
        self._forget_unreachable()

    def _do_flush(self) -> None:
        op = self._new_op("flush", {})
        self._long(op, lambda: self._client().flush(self.root))

