"""Model-based test of the filesystem core (pyfs/fs/*).

Promises proven here (DESIGN.md "Testing", invariants 1, 6, 7 and the
promises in the pyfs/fs module docstrings): random sequences of every POSIX
operation the core offers (create, mknod of every kind, mkdir, symlink,
link, unlink, rmdir, rename with every flag, writes of every size at any
offset, truncation both ways, xattrs, chmod/chown, files used after their
last name is gone, lookups held and forgotten) have exactly the effect and
the errno that ext4 gives, as an in-memory model computes them.  After every
step the whole visible tree (names, inode numbers, types, modes, owners,
link counts, sizes, contents, xattrs) equals the model.  A clean close and
reopen keeps it; a crash (reopening the durable image without a close)
gives the state after some operation at or after the last fsync, with
orphans deleted; inode numbers are never handed out twice; the engine
checker finds nothing at the end of a run and after every reopen.
"""

from __future__ import annotations

import copy
import errno
import os
import random
import stat
import zlib
from dataclasses import dataclass, field

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from pyfs.engine.check import check_engine
from pyfs.engine.fault_device import FaultDevice
from pyfs.engine.engine import Engine, EngineOptions
from pyfs.fs import Ctx, FileSystem, format_filesystem
from pyfs.fs.xattrs import XATTR_CREATE, XATTR_REPLACE
from tools.crashsim import small_geometry

IMAGE_SIZE = 8 << 20  # 64 KiB buckets and 4 KiB nodes: a big write spans several buckets
MAX_FILE = 1 << 20
# File sizes (holes included) stay below this sum: an image near full is the
# engine's corner (tests/test_fs_core.py covers ENOSPC), and copy-on-write
# pins whole buckets, so the image holds less than its size.
MAX_TOTAL = 3 << 20
NOREPLACE, EXCHANGE = 1, 2
ROOT = 1
# Frequent checkpoints: the durable state moves on between fsyncs, as after a commit interval.
OPTIONS = EngineOptions(checkpoint_fill=0.05)

NAMES = [b"a", b"b", b"c", b"d", b"e" * 255]
TOO_LONG = b"f" * 256
XATTR_NAMES = [b"user.a", b"user.b", b"trusted.t", b"security.s"]
USERS = [Ctx(0, 0), Ctx(1000, 1000), Ctx(1001, 50)]
SPECIAL = {stat.S_IFIFO: 0, stat.S_IFCHR: os.makedev(1, 3), stat.S_IFBLK: os.makedev(8, 1), stat.S_IFSOCK: 0}


@dataclass
class MNode:
    ino: int
    kind: int
    perm: int
    uid: int
    gid: int
    nlink: int = 1  # directories: 1 while linked, 0 once removed (st_nlink is derived)
    data: bytes = b""  # file contents or symlink target
    rdev: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    children: dict[bytes, int] | None = None
    parent: int = 0

    @property
    def is_dir(self) -> bool:
        return self.kind == stat.S_IFDIR


@dataclass
class Model:
    nodes: dict[int, MNode]
    max_ino: int = ROOT

    def dir_nlink(self, node: MNode) -> int:
        if node.nlink == 0:
            return 0
        return 2 + sum(1 for c in node.children.values() if self.nodes[c].is_dir)

    def is_ancestor(self, ancestor: int, ino: int) -> bool:
        """True if directory `ancestor` is `ino` or above it."""
        while True:
            if ino == ancestor:
                return True
            if ino == ROOT:
                return False
            ino = self.nodes[ino].parent

    def dirs(self) -> list[int]:
        out = [ROOT]
        for ino in out:
            out.extend(c for c in self.nodes[ino].children.values() if self.nodes[c].is_dir)
        return out

    def entries(self) -> list[tuple[int, bytes]]:
        return [(d, name) for d in self.dirs() for name in sorted(self.nodes[d].children)]

    def tree(self) -> dict:
        """What a walk from the root sees, in the same shape as `fs_tree`."""
        out = {}

        def walk(d: int, path: tuple) -> None:
            for name, ino in self.nodes[d].children.items():
                n = self.nodes[ino]
                out[path + (name,)] = describe(self, n)
                if n.is_dir:
                    walk(ino, path + (name,))

        walk(ROOT, ())
        out[()] = describe(self, self.nodes[ROOT])
        return out


def describe(model: Model, n: MNode) -> tuple:
    nlink = model.dir_nlink(n) if n.is_dir else n.nlink
    size = 0 if n.is_dir else len(n.data)
    content = n.data if n.kind in (stat.S_IFREG, stat.S_IFLNK) else b""
    return (n.ino, n.kind, n.perm, n.uid, n.gid, nlink, size, content, n.rdev, tuple(sorted(n.xattrs.items())))


def fs_tree(fs: FileSystem) -> dict:
    """Walk the filesystem from the root with readdir, lookup, getattr, read and getxattr."""
    out = {}

    def node(attr) -> tuple:
        kind = stat.S_IFMT(attr.mode)
        content = b""
        if kind == stat.S_IFREG:
            fh = fs.open(attr.ino, os.O_RDONLY)
            content = fs.read(fh, 0, attr.size + 4096)
            fs.release(fh)
            assert attr.blocks * 512 <= -(-attr.size // 4096) * 4096, f"st_blocks {attr.blocks} for size {attr.size}"
        elif kind == stat.S_IFLNK:
            content = fs.readlink(attr.ino)
        xattrs = tuple((name, fs.getxattr(attr.ino, name)) for name in fs.listxattr(attr.ino))
        return (attr.ino, kind, stat.S_IMODE(attr.mode), attr.uid, attr.gid, attr.nlink, attr.size if kind != stat.S_IFDIR else 0,
                content, attr.rdev, tuple(sorted(xattrs)))

    def walk(d: int, parent: int, path: tuple) -> None:
        entries = list(fs.readdir(d))
        assert [e[0] for e in entries[:2]] == [b".", b".."]
        assert entries[0][1].ino == d and entries[1][1].ino == parent
        names = [e[0] for e in entries[2:]]
        assert len(set(names)) == len(names), f"readdir repeats a name in {path}"
        cookies = [e[2] for e in entries]
        assert cookies == sorted(set(cookies)), "readdir cookies must increase"
        for name, attr, _ in entries[2:]:
            looked = fs.lookup(d, name)
            fs.forget(looked.ino, 1)
            assert (looked.ino, looked.mode) == (attr.ino, attr.mode)
            out[path + (name,)] = node(attr)
            if stat.S_ISDIR(attr.mode):
                walk(attr.ino, d, path + (name,))

    walk(ROOT, ROOT, ())
    out[()] = node(fs.getattr(ROOT))
    return out


def diff(expected: dict, actual: dict) -> str:
    for path in sorted(set(expected) | set(actual)):
        e, a = expected.get(path), actual.get(path)
        if e != a:
            def short(t):  # contents and xattr values as (length, crc)
                if t is None:
                    return None
                xattrs = tuple((name, len(value), zlib.crc32(value)) for name, value in t[9])
                return t[:7] + ((len(t[7]), zlib.crc32(t[7])),) + t[8:9] + (xattrs,)
            return f"{b'/'.join(path)!r}: model {short(e)} fs {short(a)}"
    return ""


_FRESH: dict[int, bytes] = {}


def new_image(seed: int) -> bytearray:
    if seed not in _FRESH:
        dev = FaultDevice(bytearray(IMAGE_SIZE))
        eng = Engine.format(dev, small_geometry(seed, IMAGE_SIZE))
        format_filesystem(eng)
        eng.close()
        _FRESH[seed] = bytes(dev.durable_image())
    return bytearray(_FRESH[seed])


def errno_of(fn, *args, **kwargs):
    """(None, result) or (errno, None)."""
    try:
        return None, fn(*args, **kwargs)
    except OSError as exc:
        return exc.errno, None


class FsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dev = FaultDevice(new_image(7))
        self.fs = FileSystem.mount(self.dev, OPTIONS)
        root = self.fs.getattr(ROOT)
        self.model = Model({ROOT: MNode(ROOT, stat.S_IFDIR, stat.S_IMODE(root.mode), 0, 0, children={}, parent=ROOT)})
        self.handles: dict[int, int] = {}  # fh -> ino
        self.held: dict[int, int] = {}  # ino -> lookups the "kernel" holds
        self.history: list[tuple[int, Model]] = []  # (last committed seq, model) since the last fsync

    # -- helpers ---------------------------------------------------------------

    def seq(self) -> int:
        return self.fs.engine.journal.last_committed_seq

    def expect(self, err: int | None, fn, *args, **kwargs):
        got, result = errno_of(fn, *args, **kwargs)
        event(f"{fn.__name__} -> {errno.errorcode[got] if got else 'ok'}")
        shown = ", ".join(repr(a)[:40] for a in args)
        assert got == err, f"{fn.__name__}({shown}): expected {err and errno.errorcode[err]}, got {got and errno.errorcode[got]}"
        return result

    def child(self, d: int, name: bytes) -> MNode | None:
        ino = self.model.nodes[d].children.get(name)
        return None if ino is None else self.model.nodes[ino]

    def pick_dir(self, data) -> int:
        return data.draw(st.sampled_from(self.model.dirs()))

    def pick_name(self, data, d: int) -> bytes:
        """Mostly names that exist in `d`, sometimes new or too long ones."""
        existing = sorted(self.model.nodes[d].children)
        choice = data.draw(st.integers(0, 9))
        if choice == 0:
            return TOO_LONG
        if existing and choice >= 5:
            return data.draw(st.sampled_from(existing))
        return data.draw(st.sampled_from(NAMES))

    def pick_entry(self, data, kinds: tuple = ()) -> tuple[int, bytes] | None:
        entries = [(d, n) for d, n in self.model.entries()
                   if not kinds or self.model.nodes[self.model.nodes[d].children[n]].kind in kinds]
        return data.draw(st.sampled_from(entries)) if entries else None

    def live_inos(self) -> list[int]:
        """Every inode a caller can reach: by name, by open handle or by held lookup."""
        reachable = {ROOT} | {self.model.nodes[d].children[n] for d, n in self.model.entries()}
        return sorted(reachable | set(self.handles.values()) | set(self.held))

    def register_new(self, attr, keep_lookup: bool) -> None:
        assert attr.ino > self.model.max_ino, f"inode number {attr.ino} handed out again"
        self.model.max_ino = attr.ino
        if keep_lookup:
            self.held[attr.ino] = self.held.get(attr.ino, 0) + 1
        else:
            self.fs.forget(attr.ino, 1)

    def settle(self, *inos: int) -> None:
        """Inodes that lost their last name, handle or lookup are gone (and their space)."""
        in_use = set(self.handles.values()) | set(self.held)
        for ino in inos:
            node = self.model.nodes.get(ino)
            if node is None or node.nlink > 0 or ino in in_use:
                continue
            del self.model.nodes[ino]
            event("an orphan was deleted")
            self.expect(errno.ENOENT, self.fs.getattr, ino)

    def new_node(self, d: int, name: bytes, attr, kind: int, perm: int, ctx: Ctx, **kw) -> MNode:
        parent = self.model.nodes[d]
        gid = ctx.gid
        if parent.perm & stat.S_ISGID:
            gid = parent.gid
            if kind == stat.S_IFDIR:
                perm |= stat.S_ISGID
        node = MNode(attr.ino, kind, perm, ctx.uid, gid, **kw)
        self.model.nodes[attr.ino] = node
        parent.children[name] = attr.ino
        return node

    def reopened(self, fs: FileSystem, model: Model) -> None:
        """After a reopen: no handles or lookups survive, and orphans are gone."""
        self.fs = fs
        self.handles.clear()
        self.held.clear()
        orphans = [ino for ino, n in model.nodes.items() if n.nlink == 0]
        for ino in orphans:
            del model.nodes[ino]
            self.expect(errno.ENOENT, fs.getattr, ino)
        self.model = model
        # Mount's own work (deleting orphans) is invisible: the state is the durable one.
        self.history = [(fs.engine.journal.durable_seq, copy.deepcopy(model))]
        assert check_engine(fs.engine) == []

    # -- a starting tree, so that every run has something to work on ---------------

    @initialize(seed=st.integers(0, 2**32))
    def populate(self, seed):
        """/a (setgid, group 50) holding files c, d, symlink e and directory b; /b a small
        file; /c holding directory a and file d; some xattrs, small and chunked."""
        rng = random.Random(seed)
        fs, root = self.fs, Ctx(0, 0)

        def mkdir(d: int, name: bytes, perm: int, ctx: Ctx = root) -> int:
            attr = fs.mkdir(d, name, perm, ctx)
            self.new_node(d, name, attr, stat.S_IFDIR, perm, ctx, children={}, parent=d)
            self.register_new(attr, False)
            return attr.ino

        a = mkdir(ROOT, b"a", 0o2775, Ctx(0, 50))
        c = mkdir(ROOT, b"c", 0o755)
        mkdir(a, b"b", 0o755)
        mkdir(c, b"a", 0o700)
        for d, name, pieces in [(ROOT, b"b", [(0, 300)]), (a, b"c", [(0, 5000), (200_000, 150_000)]),
                                (a, b"d", [(70_000, 1)]), (c, b"d", [(0, 2000)])]:
            fh, attr = fs.create(d, name, 0o6755, os.O_RDWR, root)
            node = self.new_node(d, name, attr, stat.S_IFREG, 0o6755, root)
            self.register_new(attr, False)
            buf = bytearray()
            for offset, length in pieces:
                payload = rng.randbytes(length)
                fs.write(fh, offset, payload)
                buf.extend(bytes(max(0, offset - len(buf))))
                buf[offset:offset + length] = payload
            node.data = bytes(buf)
            self.handles[fh] = attr.ino
        link = fs.symlink(a, b"e", b"../b", root)
        self.new_node(a, b"e", link, stat.S_IFLNK, 0o777, root, data=b"../b")
        self.register_new(link, False)
        for ino, name, value in [(ROOT, b"user.a", b"root xattr"), (c, b"trusted.t", rng.randbytes(1000)),
                                 (self.model.nodes[a].children[b"c"], b"user.b", rng.randbytes(5000))]:
            fs.setxattr(ino, name, value)
            self.model.nodes[ino].xattrs[name] = value
        self.fsync()

    # -- creating ----------------------------------------------------------------

    @rule(data=st.data(), kind=st.sampled_from(["create", stat.S_IFREG, *SPECIAL]), perm=st.integers(0, 0o7777),
          ctx=st.sampled_from(USERS), keep_open=st.booleans(), hold=st.booleans())
    def create(self, data, kind, perm, ctx, keep_open, hold):
        d = self.pick_dir(data)
        name = self.pick_name(data, d)
        err = errno.ENAMETOOLONG if len(name) > 255 else errno.EEXIST if name in self.model.nodes[d].children else None
        if kind == "create":
            result = self.expect(err, self.fs.create, d, name, perm, os.O_RDWR, ctx)
            if result is None:
                return
            fh, attr = result
            self.new_node(d, name, attr, stat.S_IFREG, perm, ctx)
            if keep_open:
                self.handles[fh] = attr.ino
            else:
                self.fs.release(fh)
        else:
            rdev = SPECIAL.get(kind, 0)
            attr = self.expect(err, self.fs.mknod, d, name, kind | perm, rdev, ctx)
            if attr is None:
                return
            self.new_node(d, name, attr, kind, perm, ctx, rdev=rdev)
        self.register_new(attr, hold)

    @rule(data=st.data(), perm=st.integers(0, 0o7777), ctx=st.sampled_from(USERS))
    def mkdir(self, data, perm, ctx):
        d = self.pick_dir(data)
        name = self.pick_name(data, d)
        err = errno.ENAMETOOLONG if len(name) > 255 else errno.EEXIST if name in self.model.nodes[d].children else None
        attr = self.expect(err, self.fs.mkdir, d, name, perm, ctx)
        if attr is not None:
            self.new_node(d, name, attr, stat.S_IFDIR, perm, ctx, children={}, parent=d)
            self.register_new(attr, False)

    @rule(data=st.data(), length=st.sampled_from([1, 30, 700, 2500, 4095, 4096]), ctx=st.sampled_from(USERS))
    def symlink(self, data, length, ctx):
        d = self.pick_dir(data)
        name = self.pick_name(data, d)
        target = (b"../target/" * 410)[:length]
        if length > 4095:
            err = errno.ENAMETOOLONG
        else:
            err = errno.ENAMETOOLONG if len(name) > 255 else errno.EEXIST if name in self.model.nodes[d].children else None
        attr = self.expect(err, self.fs.symlink, d, name, target, ctx)
        if attr is not None:
            self.new_node(d, name, attr, stat.S_IFLNK, 0o777, ctx, data=target)
            self.register_new(attr, False)

    @rule(data=st.data(), hold=st.booleans())
    def link(self, data, hold):
        src = self.pick_entry(data)
        if src is None:
            return
        node = self.child(*src)
        d = self.pick_dir(data)
        name = self.pick_name(data, d)
        if len(name) > 255:
            err = errno.ENAMETOOLONG
        elif name in self.model.nodes[d].children:
            err = errno.EEXIST
        elif node.is_dir:
            err = errno.EPERM
        else:
            err = None
        attr = self.expect(err, self.fs.link, node.ino, d, name)
        if attr is None:
            return
        node.nlink += 1
        self.model.nodes[d].children[name] = node.ino
        assert attr.nlink == node.nlink
        if hold:
            self.held[node.ino] = self.held.get(node.ino, 0) + 1
        else:
            self.fs.forget(node.ino, 1)

    # -- removing ----------------------------------------------------------------

    @rule(data=st.data())
    def unlink(self, data):
        d = self.pick_dir(data)
        name = self.pick_name(data, d)
        node = self.child(d, name)
        if len(name) > 255:
            err = errno.ENAMETOOLONG
        elif node is None:
            err = errno.ENOENT
        elif node.is_dir:
            err = errno.EISDIR
        else:
            err = None
        self.expect(err, self.fs.unlink, d, name)
        if err is None:
            del self.model.nodes[d].children[name]
            node.nlink -= 1
            self.settle(node.ino)

    @rule(data=st.data())
    def rmdir(self, data):
        d = self.pick_dir(data)
        name = self.pick_name(data, d)
        node = self.child(d, name)
        if len(name) > 255:
            err = errno.ENAMETOOLONG
        elif node is None:
            err = errno.ENOENT
        elif not node.is_dir:
            err = errno.ENOTDIR
        elif node.children:
            err = errno.ENOTEMPTY
        else:
            err = None
        self.expect(err, self.fs.rmdir, d, name)
        if err is None:
            del self.model.nodes[d].children[name]
            node.nlink = 0
            self.settle(node.ino)

    @rule(data=st.data(), flags=st.sampled_from([0, NOREPLACE]), kinds=st.sampled_from([(stat.S_IFDIR,), ()]))
    def rename_to_new_name(self, data, flags, kinds):
        """Moves that usually succeed: a directory or anything to a name not in use."""
        src = self.pick_entry(data, kinds) or self.pick_entry(data)
        if src is None:
            return
        dd = self.pick_dir(data)
        free = [n for n in NAMES if n not in self.model.nodes[dd].children]
        self.rename(flags, *src, dd, data.draw(st.sampled_from(free)) if free else TOO_LONG)

    @rule(data=st.data(), flags=st.sampled_from([0, 0, NOREPLACE, EXCHANGE, NOREPLACE | EXCHANGE]))
    def rename_anything(self, data, flags):
        """Any source (or none) onto any name: every errno rename has."""
        src_entry = self.pick_entry(data)
        sd, sn = src_entry if src_entry is not None and data.draw(st.integers(0, 5)) else (ROOT, data.draw(st.sampled_from(NAMES)))
        dd = self.pick_dir(data)
        self.rename(flags, sd, sn, dd, self.pick_name(data, dd))

    @rule(data=st.data(), kinds=st.sampled_from([(stat.S_IFDIR,), ()]))
    def rename_exchange(self, data, kinds):
        """RENAME_EXCHANGE of two existing entries, directories in different parents included."""
        a, b = self.pick_entry(data, kinds), self.pick_entry(data, kinds)
        if a is not None and b is not None:
            self.rename(EXCHANGE, *a, *b)

    def rename(self, flags, sd, sn, dd, dn):
        m = self.model
        src, dst = self.child(sd, sn), self.child(dd, dn)
        err = None
        if flags == NOREPLACE | EXCHANGE:
            err = errno.EINVAL
        elif len(sn) > 255 or len(dn) > 255:
            err = errno.ENAMETOOLONG
        elif src is None:
            err = errno.ENOENT
        elif flags & NOREPLACE and dst is not None:
            err = errno.EEXIST
        elif flags & EXCHANGE and dst is None:
            err = errno.ENOENT
        elif sd != dd and src.is_dir and m.is_ancestor(src.ino, dd):
            err = errno.EINVAL
        elif sd != dd and dst is not None and dst.is_dir and m.is_ancestor(dst.ino, sd):
            err = errno.EINVAL if flags & EXCHANGE else errno.ENOTEMPTY
        elif dst is not None and dst.ino == src.ino:
            err = None
        elif not flags & EXCHANGE and dst is not None:
            if src.is_dir and not dst.is_dir:
                err = errno.ENOTDIR
            elif not src.is_dir and dst.is_dir:
                err = errno.EISDIR
            elif dst.is_dir and dst.children:
                err = errno.ENOTEMPTY
        self.expect(err, self.fs.rename, sd, sn, dd, dn, flags)
        if err is not None or (dst is not None and dst.ino == src.ino):
            return
        if flags & EXCHANGE:
            m.nodes[sd].children[sn] = dst.ino
            m.nodes[dd].children[dn] = src.ino
            if src.is_dir:
                src.parent = dd
            if dst.is_dir:
                dst.parent = sd
            return
        del m.nodes[sd].children[sn]
        m.nodes[dd].children[dn] = src.ino
        if src.is_dir:
            src.parent = dd
        if dst is not None:
            dst.nlink = 0 if dst.is_dir else dst.nlink - 1
            self.settle(dst.ino)

    # -- data ----------------------------------------------------------------------

    def pick_file(self, data) -> tuple[int, int | None] | None:
        """(ino, open handle or None): a named regular file or any open handle (orphans too)."""
        choices = [(ino, fh) for fh, ino in sorted(self.handles.items())]
        for d, n in self.model.entries():
            node = self.child(d, n)
            if node.kind == stat.S_IFREG:
                choices.append((node.ino, None))
        return data.draw(st.sampled_from(choices)) if choices else None

    WHERE = st.sampled_from(["start", "inside", "append", "hole", "far"])

    @rule(data=st.data(), where=WHERE, size=st.sampled_from(["tiny", "inline", "medium"]),
          seed=st.integers(0, 2**32), ctx=st.sampled_from(USERS))
    def write_small(self, data, where, size, seed, ctx):
        self.write(data, where, size, seed, ctx)

    @rule(data=st.data(), where=WHERE, size=st.sampled_from(["region", "big"]),
          seed=st.integers(0, 2**32), ctx=st.sampled_from(USERS))
    def write_large(self, data, where, size, seed, ctx):
        self.write(data, where, size, seed, ctx)

    def total_size(self) -> int:
        return sum(len(n.data) for n in self.model.nodes.values() if n.kind == stat.S_IFREG)

    def write(self, data, where, size, seed, ctx):
        """Small (inline-sized), medium, one-region and multi-region writes, at any offset."""
        target = self.pick_file(data)
        if target is None:
            return
        ino, fh = target
        node = self.model.nodes[ino]
        rng = random.Random(seed)
        length = {"tiny": rng.randint(1, 64), "inline": rng.randint(64, 680), "medium": rng.randint(681, 9000),
                  "region": rng.randint(60_000, 70_000), "big": rng.randint(130_000, 300_000)}[size]
        cur = len(node.data)
        offset = {"start": 0, "inside": rng.randint(0, cur), "append": cur,
                  "hole": cur + rng.randint(1, 5000), "far": cur + rng.randint(5000, 400_000)}[where]
        if offset + length > MAX_FILE:
            offset = max(0, MAX_FILE - length - rng.randint(0, 1000))
        if self.total_size() - cur + max(cur, offset + length) > MAX_TOTAL:
            offset, length = 0, min(length, 4096)
        payload = rng.randbytes(length)
        own = fh is None
        if own:
            fh = self.fs.open(ino, os.O_RDWR)
        got, _ = errno_of(self.fs.write, fh, offset, payload, ctx)
        if own:
            self.fs.release(fh)
        event(f"write -> {errno.errorcode[got] if got else 'ok'}")
        assert got is None, f"write failed with {errno.errorcode[got]}"
        buf = bytearray(node.data)
        if offset > len(buf):
            buf.extend(bytes(offset - len(buf)))
        buf[offset:offset + length] = payload
        node.data = bytes(buf)
        if ctx.uid != 0:
            node.perm &= ~stat.S_ISUID
            if node.perm & stat.S_IXGRP:
                node.perm &= ~stat.S_ISGID

    @rule(data=st.data(), how=st.sampled_from(["zero", "down", "same", "up", "far"]), seed=st.integers(0, 2**32))
    def truncate(self, data, how, seed):
        if data.draw(st.integers(0, 7)) == 0:
            entry = self.pick_entry(data, (stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO))
            if entry is not None:
                node = self.child(*entry)
                self.expect(errno.EISDIR if node.is_dir else errno.EINVAL, self.fs.setattr, node.ino, size=0)
                return
        target = self.pick_file(data)
        if target is None:
            return
        ino, _fh = target
        node = self.model.nodes[ino]
        rng = random.Random(seed)
        cur = len(node.data)
        size = {"zero": 0, "down": rng.randint(0, cur), "same": cur, "up": cur + rng.randint(1, 3000),
                "far": min(MAX_FILE, cur + rng.randint(3000, 500_000))}[how]
        if self.total_size() - cur + size > MAX_TOTAL:
            size = cur // 2
        attr = self.expect(None, self.fs.setattr, ino, size=size)
        node.data = node.data[:size] + bytes(max(0, size - cur))
        assert attr.size == size

    @rule(data=st.data(), seed=st.integers(0, 2**32))
    def read_through_handle(self, data, seed):
        """Reads at any offset, through handles of named and unnamed files alike."""
        if not self.handles:
            return
        fh = data.draw(st.sampled_from(sorted(self.handles)))
        node = self.model.nodes[self.handles[fh]]
        rng = random.Random(seed)
        offset = rng.randint(0, len(node.data) + 10)
        length = rng.choice([1, 100, 4096, 200_000])
        assert self.fs.read(fh, offset, length) == node.data[offset:offset + length]
        attr = self.fs.getattr(node.ino)
        assert (attr.size, attr.nlink, stat.S_IMODE(attr.mode)) == (len(node.data), node.nlink, node.perm)

    # -- handles and lookups -----------------------------------------------------------

    @rule(data=st.data())
    def open_file(self, data):
        entry = self.pick_entry(data, (stat.S_IFREG,))
        if entry is not None:
            node = self.child(*entry)
            self.handles[self.fs.open(node.ino, os.O_RDWR)] = node.ino

    @rule(data=st.data(), seed=st.integers(0, 2**32))
    def open_unlink_write_read(self, data, seed):
        """The classic: a file stays usable through its handle after its last name is gone."""
        entry = self.pick_entry(data, (stat.S_IFREG,))
        if entry is None:
            return
        node = self.child(*entry)
        fh = self.fs.open(node.ino, os.O_RDWR)
        self.handles[fh] = node.ino
        self.expect(None, self.fs.unlink, *entry)
        del self.model.nodes[entry[0]].children[entry[1]]
        node.nlink -= 1
        # The unlink and the write are two transactions: a crash may land between them.
        self.history.append((self.seq(), copy.deepcopy(self.model)))
        rng = random.Random(seed)
        payload = rng.randbytes(rng.choice([10, 3000, 150_000]))
        offset = rng.randint(0, len(node.data) + 10)
        if self.total_size() + offset + len(payload) > MAX_TOTAL:
            offset, payload = 0, payload[:100]
        self.fs.write(fh, offset, payload)
        node.data = (node.data + bytes(max(0, offset - len(node.data))))[:offset] + payload + node.data[offset + len(payload):]
        assert self.fs.read(fh, 0, len(node.data) + 1) == node.data
        assert self.fs.getattr(node.ino).nlink == node.nlink

    @rule(data=st.data())
    def release(self, data):
        if self.handles:
            fh = data.draw(st.sampled_from(sorted(self.handles)))
            ino = self.handles.pop(fh)
            self.fs.release(fh)
            self.settle(ino)

    @rule(data=st.data())
    def hold_lookup(self, data):
        entry = self.pick_entry(data)
        if entry is None:
            return
        attr = self.fs.lookup(*entry)
        assert attr.ino == self.child(*entry).ino
        self.held[attr.ino] = self.held.get(attr.ino, 0) + 1

    @rule(data=st.data())
    def forget(self, data):
        if self.held:
            ino = data.draw(st.sampled_from(sorted(self.held)))
            self.fs.forget(ino, self.held.pop(ino))
            self.settle(ino)

    # -- attributes and xattrs -----------------------------------------------------------

    @rule(data=st.data(), perm=st.integers(0, 0o7777))
    def chmod(self, data, perm):
        ino = data.draw(st.sampled_from(self.live_inos()))
        attr = self.expect(None, self.fs.setattr, ino, mode=perm)
        self.model.nodes[ino].perm = perm
        assert stat.S_IMODE(attr.mode) == perm

    @rule(data=st.data(), owner=st.sampled_from(USERS), which=st.sampled_from(["uid", "gid", "both"]))
    def chown(self, data, owner, which):
        ino = data.draw(st.sampled_from(self.live_inos()))
        node = self.model.nodes[ino]
        kwargs = {"uid": owner.uid} if which == "uid" else {"gid": owner.gid} if which == "gid" else \
            {"uid": owner.uid, "gid": owner.gid}
        self.expect(None, self.fs.setattr, ino, **kwargs)
        node.uid = kwargs.get("uid", node.uid)
        node.gid = kwargs.get("gid", node.gid)
        if not node.is_dir:
            node.perm &= ~stat.S_ISUID
            if node.perm & stat.S_IXGRP:
                node.perm &= ~stat.S_ISGID

    @rule(data=st.data(), name=st.sampled_from(XATTR_NAMES + [b"user." + b"x" * 251, b"system.posix_acl_access"]),
          length=st.sampled_from([0, 5, 300, 1000, 5000, 65536, 65537]),
          flags=st.sampled_from([0, 0, XATTR_CREATE, XATTR_REPLACE]), seed=st.integers(0, 255))
    def setxattr(self, data, name, length, flags, seed):
        candidates = [i for i in self.live_inos() if self.model.nodes[i].kind in (stat.S_IFREG, stat.S_IFDIR)]
        with_xattrs = [i for i in candidates if self.model.nodes[i].xattrs]
        if with_xattrs and data.draw(st.booleans()):  # often replace a value, bigger or smaller
            ino = data.draw(st.sampled_from(with_xattrs))
            name = data.draw(st.sampled_from(sorted(self.model.nodes[ino].xattrs)))
        else:
            ino = data.draw(st.sampled_from(candidates))
        node = self.model.nodes[ino]
        value = bytes([seed]) * length
        if len(name) > 255:
            err = errno.ERANGE
        elif length > 65536:
            err = errno.E2BIG
        elif name.startswith(b"system."):
            err = errno.EOPNOTSUPP
        elif flags == XATTR_CREATE and name in node.xattrs:
            err = errno.EEXIST
        elif flags == XATTR_REPLACE and name not in node.xattrs:
            err = errno.ENODATA
        else:
            err = None
        self.expect(err, self.fs.setxattr, ino, name, value, flags)
        if err is None:
            node.xattrs[name] = value

    @rule(data=st.data(), name=st.sampled_from(XATTR_NAMES))
    def removexattr(self, data, name):
        ino = data.draw(st.sampled_from(self.live_inos()))
        node = self.model.nodes[ino]
        self.expect(None if name in node.xattrs else errno.ENODATA, self.fs.removexattr, ino, name)
        node.xattrs.pop(name, None)
        self.expect(errno.ENODATA, self.fs.getxattr, ino, name)

    # -- durability -----------------------------------------------------------------------

    @rule(event=st.sampled_from(["crash", "fsync", "close", "fsync"]))
    def durability(self, event):
        """fsync (mostly), a clean close and reopen, or a power cut."""
        {"fsync": self.fsync, "close": self.close_and_reopen, "crash": self.crash_and_reopen}[event]()

    def fsync(self):
        self.fs.fsync_now()
        assert self.fs.engine.journal.durable_seq == self.seq()
        self.history = [(self.seq(), copy.deepcopy(self.model))]

    def close_and_reopen(self):
        self.fs.close()
        self.dev = FaultDevice(self.dev.durable_image())
        self.reopened(FileSystem.mount(self.dev, OPTIONS), self.model)
        assert (expected := self.model.tree()) == (actual := fs_tree(self.fs)), diff(expected, actual)

    def crash_and_reopen(self):
        """Power fails: the state is that after some operation at or after the last fsync."""
        durable = self.fs.engine.journal.durable_seq
        # Operations whose every transaction is durable must survive; later ones may,
        # as long as some transaction after the previous operation is durable.
        lower = max(i for i, (seq, _) in enumerate(self.history) if seq <= durable)
        allowed = [i for i in range(lower, len(self.history)) if i == lower or self.history[i - 1][0] < durable]
        self.dev = FaultDevice(self.dev.durable_image())
        fs = FileSystem.mount(self.dev, OPTIONS)
        actual = fs_tree(fs)
        matches = [i for i in allowed if self.history[i][1].tree() == actual]
        assert matches, f"state after the crash matches no allowed prefix: {diff(self.history[lower][1].tree(), actual)}"
        event(f"crash: {'at the last fsync' if matches[-1] == 0 else 'operations after the last fsync survived'}")
        model = copy.deepcopy(self.history[matches[-1]][1])
        # model.max_ino is the snapshot's: a number handed out by an operation
        # that never became durable may come again, a durable one never.
        self.reopened(fs, model)

    # -- the invariant ----------------------------------------------------------------------

    @invariant()
    def tree_matches_model(self):
        if not self.history:
            self.history = [(self.seq(), copy.deepcopy(self.model))]
        else:
            self.history.append((self.seq(), copy.deepcopy(self.model)))
        expected, actual = self.model.tree(), fs_tree(self.fs)
        assert expected == actual, diff(expected, actual)
        for fh, ino in self.handles.items():
            node = self.model.nodes[ino]
            attr = self.fs.getattr(ino)
            assert (attr.size, attr.nlink) == (len(node.data), node.nlink)
            assert self.fs.read(fh, 0, len(node.data) + 1) == node.data

    def teardown(self):
        assert check_engine(self.fs.engine) == []
        self.fs.close()
        fs = FileSystem.mount(FaultDevice(self.dev.durable_image()), OPTIONS)
        for ino, node in list(self.model.nodes.items()):
            if node.nlink == 0:
                del self.model.nodes[ino]
        assert (expected := self.model.tree()) == (actual := fs_tree(fs)), diff(expected, actual)
        assert check_engine(fs.engine) == []
        fs.close()


FsMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
test_filesystem_core_behaves_like_the_model_through_reopens_and_crashes = FsMachine.TestCase
