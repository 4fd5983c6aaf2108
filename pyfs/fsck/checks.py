"""The filesystem checks: each pass looks at the `State` and returns `Finding`s.

Passes run in the order of `PASSES`; when fsck repairs, each pass looks at
the state its predecessors' repairs left (the `Repairer` keeps the `State`
in step), so a later pass never reports what an earlier one already fixed.
What they promise to find (tests/test_fsck.py builds an image for each):

- keys: keys and values that do not decode or have the wrong shape, and
  extents whose region lies outside the bucket area, crosses a bucket,
  is misaligned or lies in a bucket of btree nodes;
- space (`check_space`, planned before the image is opened for repair):
  every bucket's alloc key against the bytes its nodes and extents use;
- counter: `NEXT_INO_KEY` above every inode in use;
- inodes: a root directory, a valid file type, no negative fields;
- extents: extents and xattrs of inodes that do not exist, extents of
  inodes that hold no data, overlapping extents, bytes used twice, extents
  past EOF, `data_bytes` against the extents, xattr chunks with gaps;
- dirents: in an existing directory, a valid name, filed under its name's
  hash, naming an existing inode (never the root) of the type it says;
- directories: exactly one name each, the `parent` field naming it;
- connectivity: every inode reachable from the root except unlinked ones
  (orphan key or unfinished delete); cycles of directories are broken;
  everything else goes to /lost+found as `#INO`;
- orphans: orphan keys of missing or linked inodes, orphans with links;
- links: link counts against the names (directories: 2 + subdirectories).

Inodes with an orphan key or an unfinished delete, everything inside a tree
whose removal is unfinished, and the extent maps of files with an
unfinished truncate or range operation (collapse, insert, punch, zero) are
what a crash leaves: mount finishes them, so they are not problems.

The invariants these passes look for in an image: 3 (no byte used twice,
bucket counts exact), 5 (`verify_data`: every data region against its
checksum) and 7 (unfinished long operations are mount's to finish).
Proven by tests/test_fsck.py and its corpus (tests/fsck_corpus.py).
"""

from __future__ import annotations

import stat
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..engine.device import Device
from ..engine.engine import MAX_DATA_REGION
from ..format.checksum import checksum
from ..format.records import ORPHAN_PREFIX, ROOT_INO, AllocInfo, BucketKind, Extent, Inode, Tree
from ..format.superblock import Superblock
from ..fs.logged_ops import OP_DELETE
from ..fs.names import NAME_MAX, name_hash
from .findings import Finding
from .state import TREE_NAMES, State

FILE_TYPES = {
    stat.S_IFREG: "regular file",
    stat.S_IFDIR: "directory",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}
DATA_TYPES = (stat.S_IFREG, stat.S_IFLNK)


def type_name(mode: int) -> str:
    return FILE_TYPES.get(stat.S_IFMT(mode), f"file of type {stat.S_IFMT(mode):#o}")


def is_dir(inode: Inode | None) -> bool:
    return inode is not None and stat.S_ISDIR(inode.mode)


def show(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")


def name_problem(name: bytes) -> str | None:
    if not name:
        return "empty name"
    if len(name) > NAME_MAX:
        return f"name of {len(name)} bytes (limit {NAME_MAX})"
    if b"/" in name or b"\x00" in name:
        return f"name {name!r} holds '/' or NUL"
    if name in (b".", b".."):
        return f"name {name!r} is reserved"
    return None


@dataclass
class Context:
    sb: Superblock
    state: State
    node_addrs: list[int]
    node_buckets: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.node_buckets = {self.sb.bucket_of(a) for a in self.node_addrs}

    def bad_address(self, ext: Extent) -> str | None:
        return extent_address_problem(self.sb, ext, self.node_buckets)

    def graph(self) -> "Graph":
        """The names of the current state (rebuilt only after the state changed)."""
        cached = getattr(self, "_graph", None)
        if cached is None or cached[0] != self.state.version:
            cached = (self.state.version, Graph(self.state))
            self._graph = cached
        return cached[1]


def extent_address_problem(sb: Superblock, ext: Extent, node_buckets: set[int]) -> str | None:
    """Why a region extent cannot point where it does, or None (inline extents are fine)."""
    if ext.inline is not None:
        return None
    addr, length = ext.region_addr, ext.region_len
    first, end = sb.bucket_offset, sb.bucket_offset + sb.nbuckets * sb.bucket_size
    if addr < first or addr + length > end:
        return f"region {addr:#x}+{length} lies outside the bucket area"
    if sb.bucket_of(addr) != sb.bucket_of(addr + length - 1):
        return f"region {addr:#x}+{length} crosses a bucket boundary"
    if addr % sb.block_size:
        return f"region address {addr:#x} is not block aligned"
    if length > min(MAX_DATA_REGION, sb.bucket_size):
        return f"region of {length} bytes is larger than any region pyfs writes"
    if sb.bucket_of(addr) in node_buckets:
        return f"region {addr:#x}+{length} lies in bucket {sb.bucket_of(addr)}, which holds btree nodes"
    return None


class Graph:
    """The names that count: valid dirents in existing directories naming existing inodes."""

    def __init__(self, state: State) -> None:
        inodes = state.inodes
        self.names: dict[int, list[tuple[int, int, bytes]]] = defaultdict(list)  # child -> dirent keys
        self.children: dict[int, list[int]] = defaultdict(list)
        for key, de in state.dirents.items():
            d, _, name = key
            if de.ino == ROOT_INO or de.ino not in inodes or not is_dir(inodes.get(d)) or name_problem(name):
                continue
            self.names[de.ino].append(key)
            self.children[d].append(de.ino)
        for keys in self.names.values():
            keys.sort()

    def path(self, ino: int) -> str | None:
        parts: list[str] = []
        seen = set()
        while ino != ROOT_INO:
            keys = self.names.get(ino)
            if not keys or ino in seen or len(parts) > 64:
                return None
            seen.add(ino)
            d, _, name = keys[0]
            parts.append(show(name))
            ino = d
        return "/" + "/".join(reversed(parts))

    def describe(self, ino: int) -> str:
        path = self.path(ino)
        return f"inode {ino} ({path})" if path else f"inode {ino}"

    def dirent_where(self, d: int, name: bytes) -> str:
        path = self.path(d)
        if path is not None:
            return f"dirent {path.rstrip('/')}/{show(name)}"
        return f"dirent {show(name)!r} in directory {d}"

    def spread(self, tops: Iterable[int], seen: set[int]) -> set[int]:
        """`seen`, with everything below `tops` added (an inode already in `seen` is not descended into)."""
        todo = list(tops)
        while todo:
            for child in self.children.get(todo.pop(), ()):
                if child not in seen:
                    seen.add(child)
                    todo.append(child)
        return seen

    def reachable(self) -> set[int]:
        return self.spread([ROOT_INO], {ROOT_INO})


def _unlinked(ctx: "Context") -> set[int]:
    """Inodes mount will delete: orphans, unfinished deletes, everything in a tree being removed."""
    state = ctx.state
    deletes, _, rmtrees = state.pending_ops()
    out = state.orphans | deletes | rmtrees
    if rmtrees:
        ctx.graph().spread(rmtrees, out)
    return out


# -- keys ----------------------------------------------------------------------------------


def check_keys(ctx: Context) -> list[Finding]:
    out = []
    for (tree, key), (kind, reason) in sorted(ctx.state.bad.items()):
        out.append(Finding(
            kind, f"{TREE_NAMES[tree]} key {key[:48]!r}", reason, fix="delete the entry",
            action=lambda rep, t=tree, k=key: rep.delete_raw(t, k)))
    for key, ext in sorted(ctx.state.extents.items()):
        reason = ctx.bad_address(ext)
        if reason is not None:
            out.append(Finding(
                "extent-address", f"extent {key}", reason, fix="delete the extent",
                action=lambda rep, k=key: rep.drop_bad_extent(k)))
    return out


# -- space ---------------------------------------------------------------------------------


def recount(sb: Superblock, node_addrs: Iterable[int], extents: Iterable[Extent],
            bad: Callable[[Extent], str | None]) -> dict[int, tuple[int, BucketKind]]:
    """Live bytes and kind of every used bucket, from the nodes and the extents that may count."""
    live: dict[int, int] = defaultdict(int)
    kind: dict[int, BucketKind] = {}
    for addr in node_addrs:
        b = sb.bucket_of(addr)
        live[b] += sb.node_size
        kind[b] = BucketKind.BTREE
    for ext in extents:
        if ext.inline is not None or bad(ext) is not None:
            continue
        b = sb.bucket_of(ext.addr)
        live[b] += ext.length
        kind.setdefault(b, BucketKind.DATA)
    return {b: (n, kind[b]) for b, n in live.items()}


def alloc_differences(sb: Superblock, counts: dict[int, tuple[int, BucketKind]],
                      alloc: dict[int, AllocInfo]) -> dict[int, tuple[AllocInfo, AllocInfo]]:
    """bucket -> (alloc value, corrected value) for every bucket whose alloc key is wrong."""
    out = {}
    for b in sorted(set(counts) | set(alloc)):
        if not 0 <= b < sb.nbuckets:
            continue
        info = alloc.get(b, AllocInfo(0, BucketKind.FREE, 0))
        live, kind = counts.get(b, (0, BucketKind.FREE))
        if info.live_bytes != live or info.kind != kind:
            gen = info.gen + 1 if info.live_bytes == 0 and live else info.gen
            out[b] = (info, AllocInfo(live, kind, gen))
    return out


def check_space(ctx: Context) -> list[Finding]:
    counts = recount(ctx.sb, ctx.node_addrs, ctx.state.extents.values(), ctx.bad_address)
    out = []
    for b, (old, new) in alloc_differences(ctx.sb, counts, ctx.state.alloc).items():
        kind = "bucket-count" if old.live_bytes != new.live_bytes else "bucket-kind"
        out.append(Finding(
            kind, f"bucket {b}",
            f"alloc says {old.live_bytes} live bytes ({old.kind.name.lower()}), "
            f"its nodes and extents use {new.live_bytes} ({new.kind.name.lower()})",
            fix=f"set it to {new.live_bytes} bytes ({new.kind.name.lower()})", safe=True,
            action=lambda rep, b=b, new=new: rep.plan_alloc(b, new)))
    return out


# -- the inode counter and the inodes themselves ----------------------------------------------


def check_counter(ctx: Context) -> list[Finding]:
    state = ctx.state
    top = max(state.inodes, default=ROOT_INO)
    if state.next_ino is not None and state.next_ino > top:
        return []
    what = "is missing" if state.next_ino is None else f"is {state.next_ino}, but inode {top} is in use"
    return [Finding("inode-counter", "misc key next_ino", f"the inode counter {what}",
                    fix=f"set it to {top + 1}", safe=True, action=lambda rep: rep.fix_counter())]


def check_inodes(ctx: Context) -> list[Finding]:
    state = ctx.state
    out = []
    root = state.inodes.get(ROOT_INO)
    if not is_dir(root):
        what = "is missing" if root is None else f"is a {type_name(root.mode)}, not a directory"
        out.append(Finding("root", "inode 1 (/)", f"the root directory {what}",
                           fix="make an empty root directory (lost files go to /lost+found)",
                           action=lambda rep: rep.create_root()))
    containers = {d for d, _, _ in state.dirents}
    named_as = {de.ino: de.kind for de in state.dirents.values()}
    for ino, inode in sorted(state.inodes.items()):
        if stat.S_IFMT(inode.mode) not in FILE_TYPES:
            guess = stat.S_IFDIR if ino in containers else named_as.get(ino, stat.S_IFREG)
            if guess not in FILE_TYPES:
                guess = stat.S_IFREG
            mode = guess | stat.S_IMODE(inode.mode)
            out.append(Finding("inode-mode", f"inode {ino}", f"mode {inode.mode:#o} has no valid file type",
                               fix=f"make it a {type_name(mode)}",
                               action=lambda rep, ino=ino, mode=mode: rep.set_inode(ino, mode=mode)))
        for name in ("nlink", "size", "data_bytes"):
            if getattr(inode, name) < 0:
                out.append(Finding("inode-field", f"inode {ino}", f"{name} is {getattr(inode, name)}",
                                   fix="set it to 0", safe=True,
                                   action=lambda rep, ino=ino, name=name: rep.set_inode(ino, **{name: 0})))
    return out


# -- extents and xattrs -----------------------------------------------------------------------


def check_extents(ctx: Context) -> list[Finding]:
    state = ctx.state
    out: list[Finding] = []
    _, resizing, _ = state.pending_ops()
    by_ino = state.extents_by_inode()

    def describe(ino: int) -> str:
        return ctx.graph().describe(ino)

    for ino, items in sorted(by_ino.items()):
        inode = state.inodes.get(ino)
        total = sum(e.length for _, e in items)
        if inode is None or stat.S_IFMT(inode.mode) not in DATA_TYPES:
            kind = "extent-orphan" if inode is None else "extent-type"
            owner = "an inode that does not exist" if inode is None else f"a {type_name(inode.mode)}"
            out.append(Finding(kind, f"inode {ino}" if inode is None else describe(ino),
                               f"{len(items)} extents ({total} bytes) belong to {owner}", fix="delete them",
                               action=lambda rep, ino=ino: rep.delete_extents(ino)))
            continue
        for (o1, e1), (o2, _) in zip(items, items[1:]):
            if o1 + e1.length > o2:
                out.append(Finding("extent-overlap", f"extent ({ino}, {o1}) of {describe(ino)}",
                                   f"its {e1.length} bytes reach into the next extent, at {o2}",
                                   fix=f"trim it to {o2 - o1} bytes",
                                   action=lambda rep, k=(ino, o1), n=o2 - o1: rep.trim_extent(k, n)))
        end = max(o + e.length for o, e in items)
        if end > inode.size and ino not in resizing:
            out.append(Finding("size", describe(ino), f"size is {inode.size} bytes, but its extents reach {end}",
                               fix=f"set the size to {end}", safe=True,
                               action=lambda rep, ino=ino: rep.fix_size(ino)))
    for ino, inode in sorted(state.inodes.items()):
        have = sum(e.length for _, e in by_ino.get(ino, ()))
        if inode.data_bytes != have and inode.data_bytes >= 0:
            out.append(Finding("data-bytes", describe(ino), f"data_bytes is {inode.data_bytes}, its extents hold {have}",
                               fix=f"set it to {have}", safe=True,
                               action=lambda rep, ino=ino: rep.fix_data_bytes(ino)))
    out += _double_references(ctx)
    out += _xattr_findings(state)
    return out


def _double_references(ctx: Context) -> list[Finding]:
    spans = sorted(
        (ext.addr, ext.addr + ext.length, key)
        for key, ext in ctx.state.extents.items()
        if ext.inline is None and ctx.bad_address(ext) is None
    )
    out = []
    kept_end, kept_key = -1, None
    for start, end, key in spans:
        if start < kept_end:
            out.append(Finding(
                "double-reference", f"extent {key}",
                f"bytes {start:#x}..{min(end, kept_end):#x} are also used by extent {kept_key}",
                fix="copy its data to new space", action=lambda rep, k=key: rep.unshare(k)))
        else:
            kept_end, kept_key = end, key
    return out


def _xattr_findings(state: State) -> list[Finding]:
    # A deletion drops xattr chunks in key order over several steps: gaps in
    # an inode being deleted are what a crash leaves, and mount finishes it.
    deleting, _, _ = state.pending_ops()
    chunks: dict[tuple[int, bytes], list[int]] = defaultdict(list)
    for ino, name, chunk in state.xattrs:
        chunks[(ino, name)].append(chunk)
    out = []
    missing = Counter(ino for ino, _ in chunks if ino not in state.inodes)
    for ino, n in sorted(missing.items()):
        out.append(Finding("xattr-orphan", f"inode {ino}", f"{n} xattrs belong to an inode that does not exist",
                           fix="delete them", action=lambda rep, ino=ino: rep.delete_xattrs(ino)))
    for (ino, name), have in sorted(chunks.items()):
        if ino not in state.inodes or ino in deleting:
            continue
        have.sort()
        keep = 0
        while keep < len(have) and have[keep] == keep:
            keep += 1
        if keep < len(have):
            out.append(Finding(
                "xattr-chunks", f"xattr {show(name)!r} of inode {ino}",
                f"chunks {have} do not run from 0 without a gap",
                fix="delete the chunks after the gap" if keep else "delete the xattr (its first chunk is missing)",
                action=lambda rep, ino=ino, name=name, keep=keep: rep.delete_xattr_chunks(ino, name, keep)))
    return out


# -- names ------------------------------------------------------------------------------------


def check_dirents(ctx: Context) -> list[Finding]:
    state = ctx.state
    g = ctx.graph()
    out = []
    inodes = state.inodes
    for key, de in state.dirents.items():
        d, h, name = key
        parent = inodes.get(d)
        target = inodes.get(de.ino)
        if (target is not None and parent is not None and h == name_hash(name) and de.kind == (target.mode & 0o170000)
                and is_dir(parent) and de.ino != ROOT_INO and name_problem(name) is None):
            continue  # the common case, decided without building a path
        where = g.dirent_where(d, name)

        def delete(message: str, kind: str) -> Finding:
            return Finding(kind, where, message, fix="delete the dirent",
                           action=lambda rep, k=key: rep.delete_key(Tree.DIRENTS, k))

        if parent is None:
            out.append(delete(f"lies in directory {d}, which does not exist", "dirent-dir"))
        elif not is_dir(parent):
            out.append(delete(f"lies in inode {d}, a {type_name(parent.mode)}, not a directory", "dirent-dir"))
        elif (problem := name_problem(name)) is not None:
            out.append(delete(problem, "dirent-name"))
        elif de.ino == ROOT_INO:
            out.append(delete("names the root directory", "dirent-root"))
        elif target is None:
            out.append(delete(f"names inode {de.ino}, which does not exist", "dirent-target"))
        else:
            if h != name_hash(name):
                out.append(Finding("dirent-hash", where,
                                   f"is filed under hash {h:#x}, but its name hashes to {name_hash(name):#x}",
                                   fix="file it under its hash", safe=True,
                                   action=lambda rep, k=key: rep.rehash_dirent(k)))
            want = stat.S_IFMT(target.mode)
            if de.kind != want and want in FILE_TYPES:
                out.append(Finding("dirent-type", where,
                                   f"says {type_name(de.kind)}, but inode {de.ino} is a {type_name(want)}",
                                   fix=f"make it say {type_name(want)}", safe=True,
                                   action=lambda rep, k=key, want=want: rep.set_dirent_kind(k, want)))
    out.sort(key=lambda f: f.where)
    return out


def check_directories(ctx: Context) -> list[Finding]:
    state = ctx.state
    g = ctx.graph()
    out = []
    for ino, inode in sorted(state.inodes.items()):
        if not is_dir(inode):
            continue
        if ino == ROOT_INO:
            if inode.parent != ROOT_INO:
                out.append(Finding("dir-parent", "inode 1 (/)", f"parent field is {inode.parent}, the root's must be 1",
                                   fix="set it to 1", safe=True,
                                   action=lambda rep: rep.set_inode(ROOT_INO, parent=ROOT_INO)))
            continue
        names = g.names.get(ino, [])
        if len(names) > 1:
            keep = next((k for k in names if k[0] == inode.parent), names[0])
            for key in names:
                if key != keep:
                    out.append(Finding(
                        "dir-names", g.dirent_where(key[0], key[2]),
                        f"is a second name of directory {ino} (also {g.dirent_where(keep[0], keep[2])})",
                        fix="delete this name", action=lambda rep, k=key: rep.delete_key(Tree.DIRENTS, k)))
        elif len(names) == 1 and inode.parent != names[0][0]:
            d = names[0][0]
            out.append(Finding("dir-parent", g.describe(ino),
                               f"parent field says {inode.parent}, but the directory lives in {d}",
                               fix=f"set it to {d}", safe=True,
                               action=lambda rep, ino=ino, d=d: rep.set_inode(ino, parent=d)))
    return out


def check_connectivity(ctx: Context) -> list[Finding]:
    state = ctx.state
    if not is_dir(state.inodes.get(ROOT_INO)):
        return []  # without a root nothing is reachable; the inodes pass reports it
    g = ctx.graph()
    reached = g.reachable()
    unlinked = _unlinked(ctx)
    tops: dict[int, tuple[list[tuple[int, int, bytes]], str]] = {}
    for ino in sorted(state.inodes):
        if ino in reached or ino in unlinked:
            continue
        top = _top_of(g, ino, reached, unlinked)
        if top is not None and top[0] not in tops:
            tops[top[0]] = top[1:]
    out = []
    for ino, (detach, why) in sorted(tops.items()):
        inode = state.inodes[ino]
        remaining = len(g.names.get(ino, ())) - len(detach)
        if not detach and inode.nlink == 0:
            why += " (nlink 0 but no orphan key)"
        kind = "dir-cycle" if why.startswith("is in a cycle") else "unreachable"
        out.append(Finding(kind, f"inode {ino}", f"{type_name(inode.mode)} is not reachable from /: it {why}",
                           fix=f"reconnect it as /lost+found/#{ino}",
                           action=lambda rep, ino=ino, detach=detach, n=remaining: rep.reconnect(ino, detach, n)))
    return out


def _top_of(g: Graph, ino: int, reached: set[int], unlinked: set[int]):
    """The inode to reconnect so that `ino` becomes reachable, and the dirents to remove first."""
    chain = [ino]
    seen = {ino}
    cur = ino
    while True:
        names = g.names.get(cur)
        if not names:
            return cur, [], "has no name"
        d = names[0][0]
        if d in reached:
            return None  # cannot happen: cur would be reachable
        if d in unlinked:
            return cur, list(names), f"is named only in directory {d}, which is being deleted"
        if d in seen:  # a cycle: break it at its smallest inode, whichever member we started from
            cycle = chain[chain.index(d):]
            top = min(cycle)
            return top, list(g.names[top]), f"is in a cycle of directories {' -> '.join(map(str, cycle + [d]))}"
        seen.add(d)
        chain.append(d)
        cur = d


# -- orphans and link counts ------------------------------------------------------------------


def check_orphans(ctx: Context) -> list[Finding]:
    state = ctx.state
    g = ctx.graph()
    out = []
    for ino in sorted(state.orphans):
        inode = state.inodes.get(ino)
        key = (ORPHAN_PREFIX, ino)
        drop = lambda rep, k=key: rep.delete_key(Tree.MISC, k)  # noqa: E731
        if inode is None:
            out.append(Finding("orphan-missing", f"orphan key of inode {ino}", "the inode does not exist",
                               fix="delete the orphan key", safe=True, action=drop))
        elif g.names.get(ino):
            out.append(Finding("orphan-linked", g.describe(ino),
                               f"has an orphan key (mount would delete it) but nlink {inode.nlink} "
                               f"and {len(g.names[ino])} names", fix="delete the orphan key", safe=True, action=drop))
        elif inode.nlink:
            out.append(Finding("orphan-nlink", f"inode {ino}", f"is an orphan (no names) but has nlink {inode.nlink}",
                               fix="set nlink to 0", safe=True,
                               action=lambda rep, ino=ino: rep.set_inode(ino, nlink=0)))
    for key, op in sorted(state.logged_ops.items()):
        ino = op.args["ino"]
        if op.kind == OP_DELETE and g.names.get(ino):
            out.append(Finding("logged-op", f"logged op {key!r}",
                               f"would delete {g.describe(ino)}, which still has {len(g.names[ino])} names",
                               fix="cancel the deletion",
                               action=lambda rep, k=key: rep.delete_key(Tree.LOGGED_OPS, k)))
    return out


def check_links(ctx: Context) -> list[Finding]:
    state = ctx.state
    g = ctx.graph()
    unlinked = _unlinked(ctx)
    subdirs: Counter[int] = Counter()
    for child, keys in g.names.items():
        if is_dir(state.inodes.get(child)):
            subdirs.update(d for d, _, _ in keys)
    out = []
    for ino, inode in sorted(state.inodes.items()):
        if ino in unlinked or (ino != ROOT_INO and not g.names.get(ino)):
            continue  # unlinked inodes are mount's; unnamed ones the connectivity pass's
        if is_dir(inode):
            want = 2 + subdirs[ino]
            what = f"it holds {subdirs[ino]} subdirectories"
        else:
            want = len(g.names[ino])
            what = f"it has {want} names"
        if inode.nlink != want and inode.nlink >= 0:
            kind = "nlink-zero" if inode.nlink == 0 else "nlink"
            extra = " and no orphan key" if inode.nlink == 0 else ""
            out.append(Finding(kind, g.describe(ino), f"nlink is {inode.nlink}{extra}, but {what}",
                               fix=f"set it to {want}", safe=True,
                               action=lambda rep, ino=ino, want=want: rep.set_inode(ino, nlink=want)))
    return out


PASSES: list[tuple[str, Callable[[Context], list[Finding]]]] = [
    ("keys", check_keys),
    ("counter", check_counter),
    ("inodes", check_inodes),
    ("extents", check_extents),
    ("dirents", check_dirents),
    ("directories", check_directories),
    ("connectivity", check_connectivity),
    ("orphans", check_orphans),
    ("links", check_links),
]


# -- data ---------------------------------------------------------------------------------------


def verify_data(ctx: Context, device: Device, seed: int,
                progress: Callable[[int], None] | None = None) -> list[Finding]:
    """Read every data region once and verify its checksum (`--verify-data`)."""
    regions: dict[tuple[int, int, int], list[tuple[int, int]]] = defaultdict(list)
    for key, ext in ctx.state.extents.items():
        if ext.inline is None and ctx.bad_address(ext) is None:
            regions[(ext.region_addr, ext.region_len, ext.region_csum)].append(key)
    out = []
    for (addr, length, csum), keys in sorted(regions.items()):
        try:
            ok = checksum(device.pread(addr, length), seed) == csum
            why = "fails its checksum"
        except OSError as exc:
            ok, why = False, f"cannot be read ({exc.strerror or exc})"
        if progress is not None:
            progress(length)
        if not ok:
            g = ctx.graph()
            owners = sorted({g.describe(ino) for ino, _ in keys})
            out.append(Finding("data", f"data region {addr:#x}",
                               f"{length} bytes {why}; read by {len(keys)} extents of {', '.join(owners)} "
                               "(restore those files from a backup)"))
    return out


def region_bytes(ctx: Context) -> int:
    """Bytes `verify_data` reads, for its progress bar."""
    seen = {(e.region_addr, e.region_len, e.region_csum) for e in ctx.state.extents.values()
            if e.inline is None and ctx.bad_address(e) is None}
    return sum(length for _, length, _ in seen)
