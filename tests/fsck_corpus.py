"""A corpus of damaged pyfs images, built by code, for tests/test_fsck.py and tools/fuzz_fsck.py.

`healthy_image()` is made with mkfs and `FileSystem` operations: directories,
files with inline and region data, a hard link, xattrs (one of several
chunks), a symlink, a directory chain and 300 small files in /bulk (so the
inode, dirent and extent btrees have several leaves).  Each `Case` damages
a copy the way a real bug or a bad disk would: a transaction writing wrong
keys, or flipped and zeroed bytes in nodes, superblocks or journal entries.
`Case.lost` names the paths the damage may take away or change; every other
path must come through `fsck -y` unchanged (`snapshot` reads them through
`FileSystem`).  `crash_*` build the states a crash leaves (torn tail,
replay pending, orphans, unfinished logged op), which are not damage.
"""

from __future__ import annotations

import functools
import random
import stat
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from pyfs.engine.node_store import NodeStore, Ptr
from pyfs.engine.fault_device import FaultDevice
from pyfs.engine.engine import Engine, EngineOptions
from pyfs.format.keys import decode_key, encode_key
from pyfs.format.node import HEADER_SIZE as NODE_HEADER_SIZE
from pyfs.format.records import (
    NEXT_INO_KEY,
    ORPHAN_PREFIX,
    ROOT_INO,
    AllocInfo,
    BucketKind,
    Dirent,
    Extent,
    Inode,
    Tree,
    pack,
)
from pyfs.format.superblock import plan_geometry
from pyfs.fs import FileSystem
from pyfs.fs.logged_ops import start_truncate
from pyfs.fs.names import name_hash
from pyfs.fsck.scan import read_image
from pyfs.engine.journal_scan import Located, find_entries
from pyfs.cli.mkfs import write_filesystem

IMAGE_SIZE = 8 << 20
BULK_FILES = 300
ALL = "*"  # Case.lost: the damage may change anything


def small_geometry(seed: int = 1):
    return plan_geometry(IMAGE_SIZE, uuid=random.Random(seed).randbytes(16), bucket_size=64 << 10,
                         journal_size=256 << 10, node_size=4096)


def content(name: str, size: int) -> bytes:
    rng = random.Random(name)
    return rng.randbytes(size)


FILES = {
    "docs/readme.txt": 100,
    "docs/sub/big.bin": 300 << 10,
    "src/main.py": 5000,
    "src/a.txt": 30,
    "src/b.txt": 40,
    "src/c.txt": 50,
    "src/data.bin": 20000,
    "cyc/a/b/file.txt": 70,
}
DIRS = ["docs", "docs/sub", "src", "empty", "cyc", "cyc/a", "cyc/a/b", "bulk"]


def _make(fs: FileSystem, bulk: int) -> None:
    inos = {"": ROOT_INO}
    for d in DIRS:
        parent, _, name = d.rpartition("/")
        inos[d] = fs.mkdir(inos[parent], name.encode(), 0o755).ino
    for path, size in FILES.items():
        parent, _, name = path.rpartition("/")
        fh, attr = fs.create(inos[parent], name.encode(), 0o644)
        data = content(path, size)
        for off in range(0, size, 64 << 10):
            fs.write(fh, off, data[off : off + (64 << 10)])
        fs.release(fh)
        inos[path] = attr.ino
    fs.link(inos["src/main.py"], inos["docs"], b"main-link.py")
    fs.setxattr(inos["docs/readme.txt"], b"user.color", b"blue")
    fs.setxattr(inos["docs/readme.txt"], b"user.big", content("xattr", 5000))
    fs.setxattr(inos["src/a.txt"], b"user.tag", b"a")
    fs.symlink(ROOT_INO, b"ln", b"docs/readme.txt")
    for i in range(bulk):
        fh, _ = fs.create(inos["bulk"], b"f%03d" % i, 0o644)
        fs.write(fh, 0, b"bulk file %03d..." % i)
        fs.release(fh)


@functools.lru_cache(maxsize=4)
def healthy_image(seed: int = 1, bulk: int = BULK_FILES) -> bytes:
    """mkfs, then the files above (and `bulk` files in /bulk) through FileSystem, then a clean unmount."""
    dev = FaultDevice(bytearray(IMAGE_SIZE))
    write_filesystem(dev, small_geometry(seed))
    dev = FaultDevice(dev.durable_image())
    fs = FileSystem.mount(dev)
    _make(fs, bulk)
    fs.close()
    return bytes(dev.durable_image())


# -- reading an image back --------------------------------------------------------------------


def snapshot(image: bytes) -> dict[str, tuple]:
    """path -> what a user sees: (kind, content or target, xattrs, nlink), read through FileSystem."""
    fs = FileSystem.mount(FaultDevice(image), EngineOptions(read_only=True))
    out: dict[str, tuple] = {}

    def walk(ino: int, prefix: str) -> None:
        for name, attr, _ in list(fs.readdir(ino)):
            if name in (b".", b".."):
                continue
            path = prefix + name.decode("utf-8", "backslashreplace")
            xattrs = tuple(sorted((n, fs.getxattr(attr.ino, n)) for n in fs.listxattr(attr.ino)))
            if stat.S_ISDIR(attr.mode):
                out[path] = ("dir", None, xattrs, None)
                walk(attr.ino, path + "/")
            elif stat.S_ISLNK(attr.mode):
                out[path] = ("symlink", fs.readlink(attr.ino), xattrs, attr.nlink)
            else:
                fh = fs.open(attr.ino)
                data = fs.read(fh, 0, attr.size)
                fs.release(fh)
                out[path] = ("file", data, xattrs, attr.nlink)

    walk(ROOT_INO, "")
    return out


def inode_numbers(image: bytes) -> dict[str, int]:
    fs = FileSystem.mount(FaultDevice(image), EngineOptions(read_only=True))
    out = {"": ROOT_INO}

    def walk(ino: int, prefix: str) -> None:
        for name, attr, _ in list(fs.readdir(ino)):
            if name in (b".", b".."):
                continue
            path = prefix + name.decode()
            out[path] = attr.ino
            if stat.S_ISDIR(attr.mode):
                walk(attr.ino, path + "/")

    walk(ROOT_INO, "")
    return out


def tree_nodes(image: bytes, tree: int) -> list[tuple[Ptr, int, list[bytes]]]:
    """(pointer, level, keys) of every node of a btree in the newest checkpoint, root first."""
    img = read_image(FaultDevice(image))
    store = NodeStore(img.device, img.sb.node_size, img.seed)
    root = img.checkpoint.roots[int(tree)]
    out = []
    stack = [(Ptr(root.addr, root.csum), root.level)]
    while stack:
        ptr, level = stack.pop()
        node = store.load(ptr, tree, level)
        out.append((ptr, level, list(node.keys)))
        if level:
            stack.extend((child, level - 1) for child in node.vals)
    return out


def node_length(image: bytes, addr: int) -> int:
    return NODE_HEADER_SIZE + int.from_bytes(image[addr + 8 : addr + 12], "little")


def journal_entries(image: bytes) -> list[Located]:
    engine = Engine.open(FaultDevice(image), EngineOptions(read_only=True))
    sb = engine.sb
    region = bytes(image[sb.journal_offset : sb.journal_offset + sb.journal_size])
    return sorted(find_entries(region, engine.seed), key=lambda loc: loc.entry.seq)


# -- ways to damage an image ----------------------------------------------------------------------


def by_transaction(image: bytes, change: Callable[[Engine, dict[str, int]], None]) -> bytes:
    """The image after `change` ran as a committed bug (ordinary transactions), then a clean close."""
    inos = inode_numbers(image)
    dev = FaultDevice(image)
    engine = Engine.open(dev)
    change(engine, inos)
    engine.close()
    return bytes(dev.durable_image())


def flip(image: bytes, offset: int, bit: int = 0x10) -> bytes:
    out = bytearray(image)
    out[offset] ^= bit
    return bytes(out)


def zero(image: bytes, offset: int, length: int = 512) -> bytes:
    out = bytearray(image)
    out[offset : offset + length] = bytes(length)
    return bytes(out)


def leaf_of(image: bytes, tree: int, owned_by: Callable[[tuple], bool]) -> Ptr:
    """A leaf of `tree` all of whose keys satisfy `owned_by` (so the damage stays there)."""
    for ptr, level, keys in tree_nodes(image, tree):
        if level == 0 and keys and all(owned_by(decode_key(k)) for k in keys):
            return ptr
    raise AssertionError(f"no leaf of tree {tree} holds only the keys asked for")


def _put_inode(engine: Engine, ino: int, **changes) -> None:
    with engine.transaction() as t:
        inode = Inode.decode(t.get(Tree.INODES, (ino,)))
        t.put(Tree.INODES, (ino,), replace(inode, **changes).encode())


def _first_region_extent(engine: Engine, ino: int) -> tuple[tuple, Extent]:
    with engine.transaction() as t:
        for key, raw in t.scan(Tree.EXTENTS, prefix=(ino,)):
            ext = Extent.decode(raw)
            if ext.inline is None:
                return key, ext
    raise AssertionError(f"inode {ino} has no region extent")


# -- the cases --------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    build: Callable[[bytes], bytes]
    kinds: tuple[str, ...]                 # kinds `fsck -n` must name
    lost: frozenset[str] | str = frozenset()  # paths the damage may change (ALL: anything)
    decision: bool = True                  # needs a decision (-p exits 4)
    extra: dict = field(default_factory=dict)


def _bulk_paths() -> frozenset[str]:
    return frozenset({"bulk"} | {f"bulk/f{i:03d}" for i in range(BULK_FILES)})


def _bulk_inos(image: bytes) -> set[int]:
    inos = inode_numbers(image)
    return {ino for path, ino in inos.items() if path.startswith("bulk/")}


def _node_case(name: str, tree: int, owned: str, how: str, kinds: tuple[str, ...], lost, decision=True) -> Case:
    def build(image: bytes) -> bytes:
        bulk = _bulk_inos(image)
        bulk_dir = inode_numbers(image)["bulk"]
        tests = {
            "bulk-dirents": lambda k: k[0] == bulk_dir,
            "bulk-inodes": lambda k: k[0] in bulk,
            "any": lambda k: True,
        }
        ptr = leaf_of(image, tree, tests[owned])
        middle = ptr.addr + node_length(image, ptr.addr) // 2
        if how == "flip":
            return flip(image, middle)
        return zero(image, middle - middle % 512)

    return Case(name, build, kinds, lost, decision)


def _txn_case(name: str, kinds: tuple[str, ...], lost=frozenset(), decision=True):
    def wrap(change: Callable[[Engine, dict[str, int]], None]) -> Case:
        return Case(name, lambda image: by_transaction(image, change), kinds, frozenset(lost) if lost != ALL else ALL,
                    decision)
    return wrap


CASES: list[Case] = []


def case(c: Case) -> Case:
    CASES.append(c)
    return c


# superblocks
case(Case("primary superblock flipped", lambda im: flip(im, 40), ("superblock",), decision=False))
case(Case("backup superblock zeroed", lambda im: zero(im, len(im) - 4096, 4096), ("superblock",), decision=False))
case(Case("both superblocks flipped at different bytes", lambda im: flip(flip(im, 0x4F, 0x40), len(im) - 4096 + 0x84, 1),
          ("superblock",), decision=False))
case(Case("backup superblock zeroed and a bit of the primary flipped",
          lambda im: flip(zero(im, len(im) - 4096, 4096), 0x9A, 0x20), ("superblock",), decision=False))

# btree nodes (a bad disk)
case(_node_case("dirents leaf flipped", Tree.DIRENTS, "bulk-dirents", "flip", ("node", "unreachable"), _bulk_paths()))
case(_node_case("inodes leaf zeroed", Tree.INODES, "bulk-inodes", "zero", ("node", "dirent-target"), _bulk_paths()))
case(_node_case("extents leaf flipped", Tree.EXTENTS, "bulk-inodes", "flip", ("node", "data-bytes"), _bulk_paths()))
case(_node_case("alloc node flipped", Tree.ALLOC, "any", "flip", ("node",), frozenset()))
case(_node_case("misc node zeroed", Tree.MISC, "any", "zero", ("node", "inode-counter"), frozenset()))
case(_node_case("xattrs node flipped", Tree.XATTRS, "any", "flip", ("node",), frozenset({"docs/readme.txt", "src/a.txt"})))


# space (bugs)
@case
@_txn_case("bucket count too high", ("bucket-count",), decision=False)
def _(engine, inos):
    _, ext = _first_region_extent(engine, inos["src/main.py"])
    b = engine.sb.bucket_of(ext.addr)
    with engine.transaction() as t:
        info = AllocInfo.decode(t.get(Tree.ALLOC, (b,)))
        t.put(Tree.ALLOC, (b,), replace(info, live_bytes=info.live_bytes + 8192).encode())


@case
@_txn_case("used bucket marked free", ("bucket-count",), decision=False)
def _(engine, inos):
    _, ext = _first_region_extent(engine, inos["src/data.bin"])
    b = engine.sb.bucket_of(ext.addr)
    with engine.transaction() as t:
        t.put(Tree.ALLOC, (b,), AllocInfo(0, BucketKind.FREE, 0).encode())


@case
@_txn_case("two files share bytes", ("double-reference",), lost={"src/b.txt"})
def _(engine, inos):
    _, ext = _first_region_extent(engine, inos["docs/sub/big.bin"])
    ino = inos["src/b.txt"]
    with engine.transaction() as t:
        t.delete(Tree.EXTENTS, (ino, 0))
        t.put(Tree.EXTENTS, (ino, 0), Extent(4096, ext.region_addr, ext.region_len, ext.region_csum, 4096).encode())
        t.adjust_bucket_usage(ext.addr, 4096)
        inode = Inode.decode(t.get(Tree.INODES, (ino,)))
        t.put(Tree.INODES, (ino,), replace(inode, size=4096, data_bytes=4096).encode())


@case
@_txn_case("extent into a btree bucket", ("extent-address",), lost={"src/c.txt"})
def _(engine, inos):
    node = engine.trees[Tree.INODES].root
    ino = inos["src/c.txt"]
    with engine.transaction() as t:
        t.put(Tree.EXTENTS, (ino, 0), Extent(4096, node.addr, 4096, 0).encode())
        inode = Inode.decode(t.get(Tree.INODES, (ino,)))
        t.put(Tree.INODES, (ino,), replace(inode, size=4096, data_bytes=4096).encode())


@case
@_txn_case("extent outside the bucket area", ("extent-address",), lost={"src/c.txt"})
def _(engine, inos):
    ino = inos["src/c.txt"]
    with engine.transaction() as t:
        t.put(Tree.EXTENTS, (ino, 8192), Extent(4096, engine.sb.journal_offset, 4096, 0).encode())


# inodes
@case
@_txn_case("inode without a file type", ("inode-mode",))
def _(engine, inos):
    _put_inode(engine, inos["src/a.txt"], mode=0o644)


@case
@_txn_case("hard link count wrong", ("nlink",), decision=False)
def _(engine, inos):
    _put_inode(engine, inos["src/main.py"], nlink=1)


@case
@_txn_case("directory link count wrong", ("nlink",), decision=False)
def _(engine, inos):
    _put_inode(engine, inos["docs"], nlink=7)


@case
@_txn_case("extents beyond EOF", ("size",), decision=False)
def _(engine, inos):
    _put_inode(engine, inos["src/data.bin"], size=100)


@case
@_txn_case("data_bytes wrong", ("data-bytes",), decision=False)
def _(engine, inos):
    _put_inode(engine, inos["docs/sub/big.bin"], data_bytes=12)


@case
@_txn_case("orphan key on a linked file", ("orphan-linked",), decision=False)
def _(engine, inos):
    with engine.transaction() as t:
        t.put(Tree.MISC, (ORPHAN_PREFIX, inos["src/b.txt"]), b"")


@case
@_txn_case("nlink 0 without orphan key", ("nlink-zero",), decision=False)
def _(engine, inos):
    _put_inode(engine, inos["src/c.txt"], nlink=0)


@case
@_txn_case("orphan key of a missing inode", ("orphan-missing",), decision=False)
def _(engine, inos):
    with engine.transaction() as t:
        t.put(Tree.MISC, (ORPHAN_PREFIX, 99999), b"")


@case
@_txn_case("inode counter too low", ("inode-counter",), decision=False)
def _(engine, inos):
    with engine.transaction() as t:
        t.put(Tree.MISC, NEXT_INO_KEY, pack(5))


@case
@_txn_case("inode counter missing", ("inode-counter",), decision=False)
def _(engine, inos):
    with engine.transaction() as t:
        t.delete(Tree.MISC, NEXT_INO_KEY)


# dirents
@case
@_txn_case("dirent naming a missing inode", ("dirent-target",), lost={"src/ghost"})
def _(engine, inos):
    with engine.transaction() as t:
        t.put(Tree.DIRENTS, (inos["src"], name_hash(b"ghost"), b"ghost"), Dirent(88888, stat.S_IFREG).encode())


@case
@_txn_case("dirent file type wrong", ("dirent-type",), decision=False)
def _(engine, inos):
    with engine.transaction() as t:
        t.put(Tree.DIRENTS, (inos["src"], name_hash(b"a.txt"), b"a.txt"), Dirent(inos["src/a.txt"], stat.S_IFDIR).encode())


@case
@_txn_case("dirent under the wrong hash", ("dirent-hash",), decision=False)
def _(engine, inos):
    with engine.transaction() as t:
        key = (inos["src"], name_hash(b"b.txt"), b"b.txt")
        raw = t.get(Tree.DIRENTS, key)
        t.delete(Tree.DIRENTS, key)
        t.put(Tree.DIRENTS, (inos["src"], 12345, b"b.txt"), raw)


@case
@_txn_case("directory with two parents", ("dir-names",), lost={"src/sub2"})
def _(engine, inos):
    with engine.transaction() as t:
        t.put(Tree.DIRENTS, (inos["src"], name_hash(b"sub2"), b"sub2"), Dirent(inos["docs/sub"], stat.S_IFDIR).encode())


@case
@_txn_case("directory parent field wrong", ("dir-parent",), decision=False)
def _(engine, inos):
    _put_inode(engine, inos["docs/sub"], parent=inos["src"])


@case
@_txn_case("directory cycle", ("dir-cycle",), lost={"cyc/a", "cyc/a/b", "cyc/a/b/file.txt"})
def _(engine, inos):
    a, b = inos["cyc/a"], inos["cyc/a/b"]
    with engine.transaction() as t:
        t.delete(Tree.DIRENTS, (inos["cyc"], name_hash(b"a"), b"a"))
        t.put(Tree.DIRENTS, (b, name_hash(b"a"), b"a"), Dirent(a, stat.S_IFDIR).encode())
        inode = Inode.decode(t.get(Tree.INODES, (a,)))
        t.put(Tree.INODES, (a,), replace(inode, parent=b).encode())


@case
@_txn_case("file without a name", ("unreachable",), lost={"src/data.bin"})
def _(engine, inos):
    with engine.transaction() as t:
        t.delete(Tree.DIRENTS, (inos["src"], name_hash(b"data.bin"), b"data.bin"))


@case
@_txn_case("directory without a name", ("unreachable",), lost={"cyc", "cyc/a", "cyc/a/b", "cyc/a/b/file.txt"})
def _(engine, inos):
    with engine.transaction() as t:
        t.delete(Tree.DIRENTS, (ROOT_INO, name_hash(b"cyc"), b"cyc"))


@case
@_txn_case("xattrs of a missing inode", ("xattr-orphan",))
def _(engine, inos):
    with engine.transaction() as t:
        t.put(Tree.XATTRS, (77777, b"user.x", 0), b"stale")


@case
@_txn_case("extents of a missing inode", ("extent-orphan",))
def _(engine, inos):
    with engine.transaction() as t:
        t.put(Tree.EXTENTS, (77777, 0), Extent(length=5, inline=b"stale").encode())


# undecodable keys and values
@case
@_txn_case("malformed logged op", ("logged-op",))
def _(engine, inos):
    with engine.transaction() as t:
        t.put(Tree.LOGGED_OPS, ("truncate", inos["src/a.txt"]), b"\x01")


@case
@_txn_case("undecodable misc key", ("key",))
def _(engine, inos):
    with engine.transaction() as t:
        t.put_raw(Tree.MISC, b"\x99junk", b"")


@case
@_txn_case("undecodable dirent value", ("value",), lost={"src/main.py", "docs/main-link.py"})
def _(engine, inos):
    with engine.transaction() as t:
        t.put_raw(Tree.DIRENTS, encode_key((inos["src"], name_hash(b"main.py"), b"main.py")), b"\xc1")


# -- crash states (not damage) and journals ------------------------------------------------------------

CRASH_FILES = {"new1.txt": 3000, "new2.txt": 10, "new3.txt": 7000, "new4.txt": 20}


def crashed_image(image: bytes | None = None) -> bytes:  # noqa: D103
    """The healthy image after four creates, each flushed alone, and a power cut (no close)."""
    dev = FaultDevice(image or healthy_image())
    fs = FileSystem.mount(dev)
    for name, size in CRASH_FILES.items():
        fh, _ = fs.create(ROOT_INO, name.encode(), 0o644)
        fs.write(fh, 0, content(name, size))
        fs.release(fh)
        fs.fsync_now()
    return bytes(dev.durable_image())


def _after_checkpoint(image: bytes) -> list[Located]:
    entries = journal_entries(image)
    newest = max(loc.entry.seq for loc in entries if loc.entry.is_checkpoint)
    return [loc for loc in entries if loc.entry.seq > newest]


def _journal_at(image: bytes, loc: Located, into: int) -> int:
    return small_geometry().journal_offset + loc.offset + into


def crash_torn_tail() -> bytes:
    image = crashed_image()
    last = _after_checkpoint(image)[-1]
    return flip(image, _journal_at(image, last, last.length - 3), 0x80)


def crash_orphan() -> bytes:
    """A file unlinked while open, then a power cut: its orphan key waits for mount."""
    dev = FaultDevice(healthy_image())
    fs = FileSystem.mount(dev)
    fh, attr = fs.create(ROOT_INO, b"tmpfile", 0o644)
    fs.write(fh, 0, content("tmp", 9000))
    fs.unlink(ROOT_INO, b"tmpfile")
    fs.fsync_now()
    return bytes(dev.durable_image())


def crash_logged_op() -> bytes:
    """A long truncate recorded (size already 0) before its first step ran, then a power cut."""
    inos = inode_numbers(healthy_image())
    dev = FaultDevice(healthy_image())
    engine = Engine.open(dev)
    ino = inos["docs/sub/big.bin"]
    with engine.transaction() as t:
        inode = Inode.decode(t.get(Tree.INODES, (ino,)))
        t.put(Tree.INODES, (ino,), replace(inode, size=0).encode())
        start_truncate(t, ino, 0)
    engine.flush()
    return bytes(dev.durable_image())


CRASH_STATES = {
    "torn tail": crash_torn_tail,
    "replay pending": crashed_image,
    "orphan": crash_orphan,
    "unfinished logged op": crash_logged_op,
}
CRASH_LOST = frozenset({"docs/sub/big.bin"})  # truncated by the finished logged op


def journal_middle_entry_flipped(image: bytes) -> bytes:
    image = crashed_image(image)
    victim = _after_checkpoint(image)[1]
    return flip(image, _journal_at(image, victim, victim.length // 2), 0x01)


def journal_sector_zeroed(image: bytes) -> bytes:
    image = crashed_image(image)
    victim = _after_checkpoint(image)[2]
    at = _journal_at(image, victim, 0)
    return zero(image, at - at % 512)


def journal_checkpoint_damaged(image: bytes) -> bytes:
    image = crashed_image(image)
    entries = journal_entries(image)
    newest = max((loc for loc in entries if loc.entry.is_checkpoint), key=lambda loc: loc.entry.seq)
    return flip(image, _journal_at(image, newest, newest.length // 2), 0x04)


_NEW = frozenset(CRASH_FILES)
case(Case("journal entry proven flushed is damaged", journal_middle_entry_flipped, ("journal",), _NEW))
case(Case("journal sector zeroed", journal_sector_zeroed, ("journal",), _NEW))
case(Case("newest checkpoint entry damaged", journal_checkpoint_damaged, ("journal",), ALL))


def find_case(name: str) -> Case:
    return next(c for c in CASES if c.name == name)


def healthy_metadata_ranges(image: bytes) -> list[tuple[int, int]]:
    """Byte ranges that matter (for fuzzing): both superblock records, the journal entries from the
    newest checkpoint on, and the checksummed bytes of every btree node; once each, the whole
    journal region and the whole superblock blocks."""
    sb = small_geometry()
    record = 16 + int.from_bytes(image[12:16], "little") + 8
    ranges = [(0, record), (sb.backup_offset, sb.backup_offset + record), (0, sb.block_size),
              (sb.backup_offset, sb.size), (sb.journal_offset, sb.journal_offset + sb.journal_size)]
    for tree in (Tree.INODES, Tree.DIRENTS, Tree.EXTENTS, Tree.XATTRS, Tree.ALLOC, Tree.MISC):
        for ptr, _, _ in tree_nodes(image, tree):
            ranges.append((ptr.addr, ptr.addr + node_length(image, ptr.addr)))
    entries = journal_entries(image)
    newest = max(loc.entry.seq for loc in entries if loc.entry.is_checkpoint)
    for loc in entries:
        if loc.entry.seq >= newest:
            start = sb.journal_offset + loc.offset
            ranges.append((start, start + loc.length))
    return ranges


__all__ = ["ALL", "CASES", "CRASH_LOST", "CRASH_STATES", "Case", "crashed_image", "find_case",
           "healthy_image", "healthy_metadata_ranges", "snapshot", "small_geometry", "tree_nodes"]
