"""The model of a pyfs tree for tools/crashloop.py: what a user should see.

A `Model` holds names, types, file contents, symlink targets, xattrs,
permission bits, link structure and explicitly set mtimes.  `Model.apply`
changes it by one logged operation (`Op`); the workload applies an operation
only after its system call returned, so the model after the first k
operations is what the tree must look like if exactly those k survived.

A `TreeState` is the comparable view of a tree (the model's, or one read back
through the mount or the core API): path -> `Entry`.  `TreeState.digest()`
is a hash of everything compared, so checking a recovered tree against
hundreds of candidate prefixes costs one hash comparison each.

Compared: kind, permission bits, size, content, symlink target, xattrs,
which paths are links of one file, and the mtime when the model knows it
(set by utime to a value before `MTIME_KNOWN_BEFORE` and not changed since;
any other mtime is "recent").  Not compared: atime, ctime, nlink (fsck checks
it), inode numbers, st_blocks.

File data is made of 32-byte stamps naming (file id, generation, unit) so any
block that turns up in the wrong place can be traced (check 4): see
`pattern` and `foreign_stamps`.
"""

from __future__ import annotations

import copy
import hashlib
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

import xxhash

CHUNK = 64 * 1024  # content is hashed in chunks, so a small write rehashes one chunk
UNIT = 32  # one stamp
MTIME_KNOWN_BEFORE = 1_262_304_000 * 10**9  # 2010-01-01: utime values are below, "now" is above
UTIME_BASE = 1_000_000_000 * 10**9  # 2001-09-09

_STAMP_FID = re.compile(rb"@([0-9a-f]{7})\.[0-9a-f]{8}\.")
_STAMP = re.compile(rb"@([0-9a-f]{7})\.([0-9a-f]{8})\.([0-9a-f]{13})\n")


class ModelError(Exception):
    """An operation that does not apply to the model (a harness bug, or a replay gone wrong)."""


# -- file data ----------------------------------------------------------------------------


_LOW = [b"%03x\n" % i for i in range(4096)]  # the last 3 hex digits of a unit number, and the newline


def pattern(fid: int, gen: int, offset: int, length: int) -> bytes:
    """The bytes generation `gen` of file `fid` holds at [offset, offset + length).

    Each 32-byte unit of file offset u*32 reads `@FFFFFFF.GGGGGGGG.UUUUUUUUUUUUU\\n`
    (fid, generation, unit in hex), so a byte's origin is visible in the data.
    """
    if length <= 0:
        return b""
    first = offset // UNIT
    last = (offset + length - 1) // UNIT
    head = b"@%07x.%08x." % (fid & 0xFFFFFFF, gen & 0xFFFFFFFF)
    parts = []
    for block in range(first >> 12, (last >> 12) + 1):
        prefix = head + b"%010x" % block  # units block*4096 .. block*4096+4095 share it
        parts.append(prefix + prefix.join(_LOW))
    data = b"".join(parts)
    skip = offset - (first >> 12 << 12) * UNIT
    return data[skip : skip + length]


def _pattern_slow(fid: int, gen: int, offset: int, length: int) -> bytes:
    """`pattern` one unit at a time (for the self-test)."""
    first = offset // UNIT
    last = (offset + length - 1) // UNIT
    head = b"@%07x.%08x." % (fid & 0xFFFFFFF, gen & 0xFFFFFFFF)
    block = b"".join(head + b"%013x\n" % u for u in range(first, last + 1))
    skip = offset - first * UNIT
    return block[skip : skip + length]


def xattr_value(gen: int, length: int) -> bytes:
    seed = b"x%08x-" % (gen & 0xFFFFFFFF)
    return (seed * (length // len(seed) + 1))[:length]


def own_stamp_prefix(fid: int) -> bytes:
    return b"@%07x." % (fid & 0xFFFFFFF)


def foreign_stamps(content: bytes | bytearray, fid: int) -> set[int]:
    """File ids other than `fid` whose stamps appear in `content` (check 4)."""
    if content.count(b"@") == content.count(own_stamp_prefix(fid)):
        return set()
    return {int(m, 16) for m in _STAMP_FID.findall(content)} - {fid & 0xFFFFFFF}


def describe_unit(data: bytes) -> str:
    """What a 32-byte unit of visible data is: zeros, a stamp, or garbage."""
    if not data.strip(b"\0"):
        return "zeros"
    m = _STAMP.fullmatch(data)
    if m:
        return f"stamp of file {int(m.group(1), 16)} generation {int(m.group(2), 16)} " \
               f"at offset {int(m.group(3), 16) * UNIT}"
    return f"unrecognised bytes {data[:16]!r}..."


def chunk_digest(data: bytes | bytearray | memoryview) -> bytes:
    return xxhash.xxh3_128_digest(data)


def content_digest(size: int, chunk_digests: Iterable[bytes]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(size.to_bytes(8, "little"))
    for d in chunk_digests:
        h.update(d)
    return h.digest()


def xattrs_digest(xattrs: dict[str, bytes]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(xattrs):
        value = xattrs[name]
        h.update(len(name).to_bytes(4, "little") + name.encode("utf-8", "surrogateescape"))
        h.update(len(value).to_bytes(4, "little") + value)
    return h.digest()


# -- the comparable view ---------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """What is compared of one path."""

    kind: str  # "file", "dir", "symlink", "fifo"
    mode: int  # permission bits
    mtime: int  # the explicitly set mtime (ns), or 0 for "recent"
    size: int
    content: bytes  # digest of file data, b"" for others
    target: str  # symlink target
    xattrs: bytes  # digest
    ino: int  # identity, only to find links: model file id or st_ino

    def describe(self) -> str:
        parts = [self.kind, f"mode {self.mode:o}"]
        if self.kind == "file":
            parts.append(f"{self.size} bytes")
        if self.kind == "symlink":
            parts.append(f"-> {self.target[:60]!r}")
        if self.mtime:
            parts.append(f"mtime {self.mtime}")
        return ", ".join(parts)


def mtime_key(mtime_ns: int) -> int:
    """A visible mtime as the model knows it: the set value, or 0 for "recent"."""
    return mtime_ns if mtime_ns < MTIME_KNOWN_BEFORE else 0


def entry_of(mode: int, mtime_ns: int, ino: int, xattrs: dict[str, bytes], *, size: int = 0,
             content: bytes = b"", target: str = "") -> Entry:
    """The Entry of a path read back from a tree (through the mount or the core API):
    `size` and `content` (digest) count for files only, `target` for symlinks."""
    kind = file_kind(mode)
    if kind != "file":
        size, content = 0, b""
    return Entry(kind, mode & 0o7777, mtime_key(mtime_ns), size, content, target, xattrs_digest(xattrs), ino)


@dataclass
class TreeState:
    """path -> Entry for every name in a tree ("." is the root)."""

    entries: dict[str, Entry] = field(default_factory=dict)

    def links(self) -> dict[str, str]:
        """path -> the smallest path naming the same file, for files with several names."""
        by_ino: dict[int, list[str]] = {}
        for path, e in self.entries.items():
            if e.kind == "file":
                by_ino.setdefault(e.ino, []).append(path)
        out: dict[str, str] = {}
        for paths in by_ino.values():
            if len(paths) > 1:
                first = min(paths)
                for p in paths:
                    out[p] = first
        return out

    def digest(self) -> bytes:
        links = self.links()
        h = hashlib.blake2b(digest_size=16)
        for path in sorted(self.entries):
            e = self.entries[path]
            h.update(repr((path, e.kind, e.mode, e.mtime, e.size, e.target, links.get(path, ""))).encode(
                "utf-8", "surrogateescape"))
            h.update(e.content)
            h.update(e.xattrs)
        return h.digest()

    def file_bytes(self) -> int:
        seen: set[int] = set()
        total = 0
        for e in self.entries.values():
            if e.kind == "file" and e.ino not in seen:
                seen.add(e.ino)
                total += e.size
        return total


def diff_states(expected: TreeState, actual: TreeState, limit: int = 20) -> list[tuple[str, str]]:
    """(path, what differs) for each difference, in path order."""
    out: list[tuple[str, str]] = []
    links_e, links_a = expected.links(), actual.links()
    for path in sorted(set(expected.entries) | set(actual.entries)):
        e, a = expected.entries.get(path), actual.entries.get(path)
        if e is None:
            out.append((path, f"unexpected {a.describe()}"))
        elif a is None:
            out.append((path, f"missing ({e.describe()})"))
        else:
            what = []
            for name in ("kind", "mode", "mtime", "size", "target"):
                if getattr(e, name) != getattr(a, name):
                    what.append(f"{name} {getattr(a, name)!r} instead of {getattr(e, name)!r}")
            if e.content != a.content and e.size == a.size:
                what.append("content differs")
            if e.xattrs != a.xattrs:
                what.append("xattrs differ")
            if links_e.get(path, "") != links_a.get(path, ""):
                what.append(f"linked with {links_a.get(path) or 'nothing'} instead of "
                            f"{links_e.get(path) or 'nothing'}")
            if what:
                out.append((path, "; ".join(what)))
        if len(out) >= limit:
            break
    return out


# -- the model ----------------------------------------------------------------------------


@dataclass
class Node:
    """One file, directory, symlink or fifo of the model."""

    fid: int
    kind: str
    mode: int
    mtime: int = 0  # 0: recent
    data: bytearray | None = None
    target: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)
    entries: dict[str, int] | None = None
    chunks: list[bytes | None] = field(default_factory=list)  # digest cache of data

    @property
    def size(self) -> int:
        """Bytes of file data (0 for anything else)."""
        return len(self.data or b"")

    def invalidate(self, start: int, end: int | None = None) -> None:
        """Forget cached chunk digests covering [start, end) (to the end if None)."""
        assert self.data is not None
        count = -(-len(self.data) // CHUNK)
        if len(self.chunks) < count:
            self.chunks.extend([None] * (count - len(self.chunks)))
        del self.chunks[count:]
        last = count if end is None else min(count, -(-end // CHUNK))
        for i in range(start // CHUNK, last):
            self.chunks[i] = None

    def content_digest(self) -> bytes:
        assert self.data is not None
        view = memoryview(self.data)
        count = -(-len(self.data) // CHUNK)
        if len(self.chunks) != count:
            self.invalidate(0)
        for i, d in enumerate(self.chunks):
            if d is None:
                self.chunks[i] = chunk_digest(view[i * CHUNK : (i + 1) * CHUNK])
        return content_digest(len(self.data), self.chunks)  # type: ignore[arg-type]


@dataclass
class Op:
    """One operation of the workload, as logged.  `args` is JSON-able and complete:
    applying the op to the model needs nothing else (file data is `pattern`)."""

    index: int  # global, unique over the run
    kind: str
    args: dict
    durable: bool = False  # returning made it and everything before it durable

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
        return f"#{self.index} {self.kind}({args})"


DURABLE_KINDS = {"fsync", "fdatasync", "fsync_dir", "collapse", "insert", "punch", "zero", "rmtree", "flush"}
ROOT = 1


class Model:
    """The tree a user should see; `apply` is the one place operations take effect."""

    def __init__(self, umask: int = 0o022) -> None:
        self.umask = umask
        self.nodes: dict[int, Node] = {ROOT: Node(ROOT, "dir", 0o755, entries={})}

    def copy(self) -> "Model":
        return copy.deepcopy(self)

    # -- lookups ---------------------------------------------------------------------

    def lookup(self, path: str) -> Node | None:
        node = self.nodes[ROOT]
        if path in ("", "."):
            return node
        for name in path.split("/"):
            if node.entries is None or name not in node.entries:
                return None
            node = self.nodes[node.entries[name]]
        return node

    def parent_of(self, path: str) -> tuple[Node, str]:
        head, _, name = path.rpartition("/")
        parent = self.lookup(head)
        if parent is None or parent.entries is None:
            raise ModelError(f"no directory {head!r} for {path!r}")
        return parent, name

    def walk(self) -> list[tuple[str, Node]]:
        """(path, node) of every name, parents before children, "." first."""
        out: list[tuple[str, Node]] = [(".", self.nodes[ROOT])]
        stack: list[tuple[str, Node]] = [("", self.nodes[ROOT])]
        while stack:
            prefix, node = stack.pop()
            assert node.entries is not None
            for name in sorted(node.entries):
                child = self.nodes[node.entries[name]]
                path = f"{prefix}{name}"
                out.append((path, child))
                if child.kind == "dir":
                    stack.append((path + "/", child))
        return out

    def names_of(self, fid: int) -> list[str]:
        return [p for p, n in self.walk() if n.fid == fid and p != "."]

    def reachable(self) -> set[int]:
        return {n.fid for _, n in self.walk()}

    def prune(self, keep: Iterable[int] = ()) -> None:
        """Drop nodes no name reaches (after a crash the orphans are gone), except `keep`."""
        live = self.reachable() | set(keep)
        for fid in [f for f in self.nodes if f not in live]:
            del self.nodes[fid]

    def state(self) -> TreeState:
        entries: dict[str, Entry] = {}
        for path, n in self.walk():
            if n.kind == "file":
                assert n.data is not None
                entries[path] = Entry("file", n.mode, n.mtime, len(n.data), n.content_digest(), "",
                                      xattrs_digest(n.xattrs), n.fid)
            else:
                entries[path] = Entry(n.kind, n.mode, n.mtime, 0, b"", n.target, xattrs_digest(n.xattrs), n.fid)
        return TreeState(entries)

    def file_bytes(self) -> int:
        return sum(len(n.data) for n in self.nodes.values() if n.data is not None)

    # -- applying operations ------------------------------------------------------

    def _touch(self, node: Node) -> None:
        node.mtime = 0

    def _add(self, path: str, node: Node) -> None:
        parent, name = self.parent_of(path)
        assert parent.entries is not None
        if name in parent.entries:
            raise ModelError(f"{path!r} exists")
        self.nodes[node.fid] = node
        parent.entries[name] = node.fid
        self._touch(parent)

    def _file(self, fid: int) -> Node:
        node = self.nodes.get(fid)
        if node is None or node.data is None:
            raise ModelError(f"no file {fid}")
        return node

    def _at(self, path: str) -> Node:
        node = self.lookup(path)
        if node is None:
            raise ModelError(f"no {path!r}")
        return node

    def _set_size(self, node: Node, size: int) -> None:
        assert node.data is not None
        old = len(node.data)
        if size < old:
            del node.data[size:]
            node.invalidate(size)
        elif size > old:
            node.data.extend(bytes(size - old))
            node.invalidate(old)

    def _write(self, node: Node, offset: int, data: bytes) -> None:
        assert node.data is not None
        if offset > len(node.data):
            self._set_size(node, offset)
        node.data[offset : offset + len(data)] = data
        node.invalidate(offset, offset + len(data))

    def apply(self, op: Op) -> None:
        a = op.args
        k = op.kind
        if k == "create":
            self._add(a["path"], Node(a["fid"], "file", a["mode"] & ~self.umask & 0o7777, data=bytearray()))
        elif k == "mkdir":
            self._add(a["path"], Node(a["fid"], "dir", a["mode"] & ~self.umask & 0o7777, entries={}))
        elif k == "mkfifo":
            self._add(a["path"], Node(a["fid"], "fifo", a["mode"] & ~self.umask & 0o7777))
        elif k == "symlink":
            self._add(a["path"], Node(a["fid"], "symlink", 0o777, target=a["target"]))
        elif k == "link":
            node = self._at(a["src"])
            parent, name = self.parent_of(a["dst"])
            assert parent.entries is not None
            if name in parent.entries or node.kind == "dir":
                raise ModelError(f"cannot link {a['src']!r} to {a['dst']!r}")
            parent.entries[name] = node.fid
            self._touch(parent)
        elif k in ("unlink", "rmdir"):
            parent, name = self.parent_of(a["path"])
            assert parent.entries is not None
            fid = parent.entries.pop(name, None)
            if fid is None:
                raise ModelError(f"no {a['path']!r}")
            self._touch(parent)
        elif k == "rename":
            self._rename(a["src"], a["dst"], a["flags"])
        elif k == "write":
            node = self._file(a["fid"])
            if a["written"] > 0:
                self._write(node, a["offset"], pattern(a["fid"], a["gen"], a["offset"], a["written"]))
                self._touch(node)
        elif k == "truncate":
            node = self._file(a["fid"])
            self._set_size(node, a["size"])
            self._touch(node)
        elif k == "setxattr":
            self._at(a["path"]).xattrs[a["name"]] = xattr_value(a["gen"], a["length"])
        elif k == "removexattr":
            node = self._at(a["path"])
            if node.xattrs.pop(a["name"], None) is None:
                raise ModelError(f"no xattr {a['name']} on {a['path']!r}")
        elif k == "chmod":
            node = self._at(a["path"])
            node.mode = a["mode"] & 0o7777
        elif k == "utime":
            self._at(a["path"]).mtime = a["mtime"]
        elif k in ("fsync", "fdatasync", "fsync_dir", "flush"):
            pass
        elif k in ("collapse", "insert", "punch", "zero"):
            self._range_op(k, self._file(self._at(a["path"]).fid), a)
        elif k == "rmtree":
            parent, name = self.parent_of(a["path"])
            assert parent.entries is not None
            if parent.entries.pop(name, None) is None:
                raise ModelError(f"no {a['path']!r}")
            self._touch(parent)
        else:
            raise ModelError(f"unknown operation {k!r}")

    def _range_op(self, kind: str, node: Node, a: dict) -> None:
        assert node.data is not None
        off, length = a["offset"], a["length"]
        size = len(node.data)
        if kind == "collapse":
            if off + length >= size:
                raise ModelError("collapse past the end")
            del node.data[off : off + length]
            node.invalidate(off)
        elif kind == "insert":
            if off >= size:
                raise ModelError("insert at or past the end")
            node.data[off:off] = bytes(length)
            node.invalidate(off)
        else:  # punch, zero
            end = off + length
            if a.get("keep_size", True):
                end = min(end, size)
            else:
                self._set_size(node, max(size, end))
            if end > off:
                node.data[off:end] = bytes(end - off)
                node.invalidate(off, end)
        self._touch(node)

    def _rename(self, src: str, dst: str, flags: int) -> None:
        sp, sname = self.parent_of(src)
        dp, dname = self.parent_of(dst)
        assert sp.entries is not None and dp.entries is not None
        if sname not in sp.entries:
            raise ModelError(f"no {src!r}")
        sfid = sp.entries[sname]
        dfid = dp.entries.get(dname)
        if dfid == sfid:
            return  # two names of one file: the kernel returns 0 before asking the filesystem (vfs_rename)
        if flags & 2:  # RENAME_EXCHANGE
            if dfid is None:
                raise ModelError(f"exchange with missing {dst!r}")
            sp.entries[sname], dp.entries[dname] = dfid, sfid
            self._touch(sp)
            self._touch(dp)
            return
        if dfid is not None and flags & 1:
            raise ModelError(f"{dst!r} exists (RENAME_NOREPLACE)")
        del sp.entries[sname]
        dp.entries[dname] = sfid
        self._touch(sp)
        self._touch(dp)


KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo"}


def file_kind(mode: int) -> str:
    return KINDS.get(stat.S_IFMT(mode), f"other({stat.S_IFMT(mode):o})")
