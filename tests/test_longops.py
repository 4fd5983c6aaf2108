"""Long operations (issue #5): fcollapse, finsert, punch, zero, rmtree and their logged steps.

Promises proven here (DESIGN.md invariant 7; the FileSystem methods
`collapse`, `insert`, `punch`, `zero`, `rmtree`, `long_ops` and
pyfs/fs/longops.py):
- Random files of many extents (small writes at random offsets, holes,
  appends, inline files) edited by random sequences of collapse, insert,
  punch, zero and truncate, with valid and invalid arguments, read back byte
  for byte as a plain bytes model says, with the errno Linux gives, after
  every call and after a remount; with `STEP_EXTENTS` small every operation
  spans many transactions.  No logged op is left when a call returns, the
  inode's `data_bytes` equals its extents and never exceeds the bytes the
  model says can hold data (holes stay holes), no extent lies past EOF, and
  the engine checker and fsck find nothing.
- Every errno case of the spec, each leaving the file exactly as it was.
- rmtree removes a tree of every kind of inode (deep, wide, fragmented,
  hard-linked in and out, xattrs), deletes every inode of it and returns its
  space, keeps open or looked-up inodes as orphans until released, and
  checks permissions on the whole tree before it changes anything.
- Each step is one transaction carrying the logged-op key, the start is
  durable before the first step, `long_ops` shows progress while an
  operation runs, and an operation cut by a crash after many checkpoints
  (the logged op lives only in checkpoint entries by then) is finished at
  mount.
"""

from __future__ import annotations

import errno
import os
import random
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from pyfs.engine.check import check_engine
from pyfs.engine.fault_device import FaultDevice, PowerCut
from pyfs.engine.engine import Engine, EngineOptions
from pyfs.format.records import ORPHAN_PREFIX, BucketKind, Extent, Inode, Tree
from pyfs.fs import Ctx, FileSystem, format_filesystem
from pyfs.fs.extents import inline_max
from pyfs.fs.filesystem import MAX_FILE_SIZE
from test_fs_core import contents, errno_of, new_dir, remount
from tools.crashsim import (
    fs_snapshot,
    fsck_problems,
    pending_ops_of,
    rmtree_model,
    small_geometry,
    snapshot_difference,
    step_extents,
)

ROOT = 1
BLOCK = 4096
IMAGE_SIZE = 16 << 20
USER = Ctx(uid=1000, gid=1000)
OTHER = Ctx(uid=1001, gid=1001)
_IMAGES: dict[int, bytes] = {}


# -- set-up and helpers ------------------------------------------------------------------------


def fresh_image(size: int = IMAGE_SIZE) -> bytearray:
    if size not in _IMAGES:
        dev = FaultDevice(bytearray(size))
        engine = Engine.format(dev, small_geometry(23, size))
        format_filesystem(engine)
        engine.close()
        _IMAGES[size] = bytes(dev.durable_image())
    return bytearray(_IMAGES[size])


@pytest.fixture
def small_steps() -> Iterator[int]:
    """STEP_EXTENTS = 4: every operation below spans many transactions."""
    with step_extents(4):
        yield 4


@pytest.fixture
def fs(small_steps) -> Iterator[FileSystem]:
    fs = FileSystem.mount(FaultDevice(fresh_image()))
    yield fs
    if not fs.engine.closed and fs.engine.failed is None:
        assert check_engine(fs.engine) == []
        assert fs.engine.logged_ops == {}


def new_file(fs: FileSystem, parent: int, name: bytes, pieces: list[tuple[int, bytes]] = (),
             mode: int = 0o644, ctx: Ctx = Ctx()) -> int:
    """A file written piece by piece, closed and forgotten."""
    fh, attr = fs.create(parent, name, mode, os.O_RDWR, ctx)
    for offset, data in pieces:
        fs.write(fh, offset, data)
    fs.release(fh)
    fs.forget(attr.ino)
    return attr.ino


def inode_of(fs: FileSystem, ino: int) -> Inode:
    with fs.engine.transaction() as t:
        raw = t.get(Tree.INODES, (ino,))
    assert raw is not None, f"inode {ino} is gone"
    return Inode.decode(raw)


def extents_of(fs: FileSystem, ino: int) -> list[tuple[int, Extent]]:
    with fs.engine.transaction() as t:
        return [(off, Extent.decode(raw)) for (_, off), raw in t.scan(Tree.EXTENTS, (ino, 0), (ino + 1, 0))]


def keys_of(fs: FileSystem, tree: Tree, ino: int) -> list:
    with fs.engine.transaction() as t:
        return [k for k, _ in t.scan(tree, prefix=(ino,))]


def data_live_bytes(fs: FileSystem) -> int:
    """Live bytes of every data bucket: what file data occupies on the image."""
    space = fs.engine.space
    return sum(space.live[b] for b in range(fs.engine.sb.nbuckets) if space.kind[b] == BucketKind.DATA)


def fragmented(rng: random.Random, extents: int, start: int = 0, spacing: int = BLOCK) -> list[tuple[int, bytes]]:
    """`extents` small writes at random places of consecutive cells: one extent each, holes between."""
    return [(start + i * spacing + rng.randrange(0, spacing - 1100), rng.randbytes(rng.randint(20, 1000)))
            for i in range(extents)]


def model_of(pieces: list[tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for offset, data in pieces:
        if offset > len(out):
            out.extend(bytes(offset - len(out)))
        out[offset:offset + len(data)] = data
    return bytes(out)


def file_state(fs: FileSystem, ino: int) -> tuple:
    """Everything a failed call must leave alone: content, attributes, extents, data bytes."""
    attr = fs.getattr(ino)
    return (contents(fs, ino) if stat.S_ISREG(attr.mode) else b"", attr.size, attr.mode, attr.uid, attr.nlink,
            attr.mtime_ns, attr.ctime_ns, attr.blocks, inode_of(fs, ino).data_bytes,
            [(off, e.length) for off, e in extents_of(fs, ino)])


def assert_consistent(fs: FileSystem, ino: int) -> None:
    """Structural promises of a file's extent map after any operation."""
    inode = inode_of(fs, ino)
    exts = extents_of(fs, ino)
    end = 0
    for off, ext in exts:
        assert off >= end, f"extent at {off} overlaps the one before (ends {end})"
        assert ext.length > 0, f"empty extent at {off}"
        end = off + ext.length
    assert end <= inode.size, f"extent ends at {end}, past EOF {inode.size}"
    assert inode.data_bytes == sum(e.length for _, e in exts), \
        f"data_bytes {inode.data_bytes} but the extents hold {sum(e.length for _, e in exts)}"


# -- the model ---------------------------------------------------------------------------------


@dataclass
class FileModel:
    """The content of a file, and which bytes may hold data (0: a hole; st_blocks may not count it)."""

    data: bytearray
    mask: bytearray

    @classmethod
    def empty(cls) -> "FileModel":
        return cls(bytearray(), bytearray())

    def _grow(self, size: int) -> None:
        if size > len(self.data):
            self.data.extend(bytes(size - len(self.data)))
            self.mask.extend(bytes(size - len(self.mask)))

    def write(self, offset: int, data: bytes, inline_limit: int) -> None:
        old = len(self.data)
        end = offset + len(data)
        self._grow(end)
        self.data[offset:end] = data
        self.mask[offset:end] = b"\1" * len(data)
        if old <= inline_limit:
            # Inline storage keeps holes as zeros: a file that stays inline holds data
            # throughout, and one that leaves it moves its old inline bytes to a region.
            covered = self.size if self.size <= inline_limit else old
            self.mask[0:covered] = b"\1" * covered

    def truncate(self, size: int) -> None:
        del self.data[size:]
        del self.mask[size:]
        self._grow(size)

    def collapse(self, offset: int, length: int) -> None:
        del self.data[offset:offset + length]
        del self.mask[offset:offset + length]

    def insert(self, offset: int, length: int) -> None:
        self.data[offset:offset] = bytes(length)
        self.mask[offset:offset] = bytes(length)

    def punch(self, offset: int, length: int, keep_size: bool) -> None:
        if not keep_size:
            self._grow(offset + length)
        end = min(offset + length, len(self.data))
        if offset < end:
            self.data[offset:end] = bytes(end - offset)
            self.mask[offset:end] = bytes(end - offset)

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def allocatable(self) -> int:
        return self.mask.count(1)


def range_errno(kind: str, size: int, offset: int, length: int) -> int | None:
    """The errno Linux's fallocate gives for a regular file of `size` bytes (None: success)."""
    if offset < 0 or length <= 0:
        return errno.EINVAL
    if kind in ("collapse", "insert"):
        if offset % BLOCK or length % BLOCK:
            return errno.EINVAL
        if kind == "collapse":
            return errno.EINVAL if offset + length >= size else None
        if size + length > MAX_FILE_SIZE:
            return errno.EFBIG
        return errno.EINVAL if offset >= size else None
    return errno.EFBIG if offset + length > MAX_FILE_SIZE else None


def call(fs: FileSystem, kind: str, ino: int, offset: int, length: int, keep_size: bool = True,
         ctx: Ctx = Ctx(), label: str | None = None):
    if kind == "collapse":
        return fs.collapse(ino, offset, length, ctx=ctx, label=label)
    if kind == "insert":
        return fs.insert(ino, offset, length, ctx=ctx, label=label)
    if kind == "punch":
        return fs.punch(ino, offset, length, keep_size=keep_size, ctx=ctx, label=label)
    if kind == "zero":
        return fs.zero(ino, offset, length, keep_size=keep_size, ctx=ctx, label=label)
    raise ValueError(kind)


def apply_model(model: FileModel, kind: str, offset: int, length: int, keep_size: bool) -> None:
    if kind == "collapse":
        model.collapse(offset, length)
    elif kind == "insert":
        model.insert(offset, length)
    else:
        model.punch(offset, length, keep_size)


# -- property test: random files, random range operations ----------------------------------------

MAX_MODEL_SIZE = 600_000  # keeps the image far from full: every small write takes a 4 KiB block
SHAPES = ("inline", "fragmented", "appended", "holey", "regions", "mixed")


class RangeOpsMachine(RuleBasedStateMachine):
    """Three files; every rule edits one of them and the model alike."""

    def __init__(self) -> None:
        super().__init__()
        self._steps = step_extents(4)
        self._steps.__enter__()
        self.fs = FileSystem.mount(FaultDevice(fresh_image()))
        self.limit = inline_max(self.fs.engine)
        self.files: dict[int, FileModel] = {}

    # -- helpers ---------------------------------------------------------------

    def write(self, ino: int, offset: int, data: bytes) -> None:
        fh = self.fs.open(ino, os.O_RDWR)
        try:
            assert self.fs.write(fh, offset, data) == len(data)
        finally:
            self.fs.release(fh)
        self.files[ino].write(offset, data, self.limit)

    def pick(self, data) -> tuple[int, FileModel]:
        ino = data.draw(st.sampled_from(sorted(self.files)), label="file")
        return ino, self.files[ino]

    def room(self, ino: int, new_size: int) -> bool:
        return sum(m.size for i, m in self.files.items() if i != ino) + new_size <= MAX_MODEL_SIZE

    def draw_range(self, data, model: FileModel, aligned: bool) -> tuple[int, int]:
        """Mostly sensible ranges; sometimes misaligned, empty, negative or past EOF."""
        size = model.size
        blocks = max(1, size // BLOCK)
        how = data.draw(st.sampled_from(["valid"] * 6 + ["to_eof", "past_eof", "misaligned", "empty", "negative"]),
                        label="range")
        if aligned:
            offset = BLOCK * data.draw(st.integers(0, blocks), label="offset block")
            length = BLOCK * data.draw(st.integers(1, max(1, min(24, blocks))), label="length blocks")
        else:
            offset = data.draw(st.integers(0, size + 3 * BLOCK), label="offset")
            length = data.draw(st.integers(1, max(1, min(size, 80_000)) + BLOCK), label="length")
        if how == "to_eof":
            length = max(BLOCK, (size - offset) // BLOCK * BLOCK) if aligned else max(1, size - offset)
        elif how == "past_eof":
            offset = (size // BLOCK + data.draw(st.integers(0, 2))) * BLOCK
        elif how == "misaligned":
            offset += data.draw(st.integers(1, BLOCK - 1))
        elif how == "empty":
            length = data.draw(st.sampled_from([0, -BLOCK]))
        elif how == "negative":
            offset = -BLOCK
        event(f"range: {how}")
        return offset, length

    # -- files -------------------------------------------------------------------

    @initialize(shapes=st.lists(st.sampled_from(SHAPES), min_size=3, max_size=3), seed=st.integers(0, 2**32))
    def make_files(self, shapes: list[str], seed: int) -> None:
        rng = random.Random(seed)
        for i, shape in enumerate(shapes):
            fh, attr = self.fs.create(ROOT, b"f%d" % i, 0o644, os.O_RDWR)
            self.fs.release(fh)
            self.fs.forget(attr.ino)
            self.files[attr.ino] = FileModel.empty()
            if shape == "inline":
                pieces = [(rng.randrange(0, 400), rng.randbytes(rng.randint(1, 200))) for _ in range(rng.randint(1, 5))]
            elif shape == "fragmented":
                pieces = fragmented(rng, rng.randint(20, 60))
            elif shape == "appended":
                pieces = [(j * 100, rng.randbytes(100)) for j in range(rng.randint(10, 40))]
                pieces = [(0, rng.randbytes(800))] + pieces[8:]
            elif shape == "holey":
                pieces = [(rng.randrange(0, 150_000), rng.randbytes(rng.randint(1, 6000))) for _ in range(12)]
            elif shape == "regions":
                pieces = [(0, rng.randbytes(rng.randint(40_000, 140_000)))]
            else:
                pieces = fragmented(rng, 15) + [(rng.randrange(0, 60_000), rng.randbytes(rng.randint(1, 9000)))
                                                 for _ in range(6)]
            for offset, piece in pieces:
                self.write(attr.ino, offset, piece)
            event(f"shape {shape}: {len(extents_of(self.fs, attr.ino))} extents")

    @rule(data=st.data(), seed=st.integers(0, 2**32), count=st.integers(1, 12))
    def scribble(self, data, seed: int, count: int) -> None:
        """More small writes at random offsets: more extents, some appended."""
        ino, model = self.pick(data)
        rng = random.Random(seed)
        for _ in range(count):
            offset = rng.randrange(0, model.size + 9000)
            piece = rng.randbytes(rng.randint(1, 1500))
            if self.room(ino, max(model.size, offset + len(piece))):
                self.write(ino, offset, piece)

    # -- the operations ----------------------------------------------------------------

    @rule(data=st.data(), kind=st.sampled_from(["collapse", "insert"]))
    def shift(self, data, kind: str) -> None:
        ino, model = self.pick(data)
        offset, length = self.draw_range(data, model, aligned=True)
        if kind == "insert" and not self.room(ino, model.size + max(0, length)):
            length = BLOCK
        self.expect(kind, ino, model, offset, length, True)

    @rule(data=st.data(), kind=st.sampled_from(["punch", "zero"]), keep_size=st.booleans())
    def hole(self, data, kind: str, keep_size: bool) -> None:
        ino, model = self.pick(data)
        offset, length = self.draw_range(data, model, aligned=data.draw(st.booleans(), label="aligned"))
        if not keep_size and not self.room(ino, max(model.size, offset + length)):
            keep_size = True
        self.expect(kind, ino, model, offset, length, keep_size)

    def expect(self, kind: str, ino: int, model: FileModel, offset: int, length: int, keep_size: bool) -> None:
        err = range_errno(kind, model.size, offset, length)
        before = file_state(self.fs, ino) if err is not None else None
        got = errno_of(call, self.fs, kind, ino, offset, length, keep_size)
        event(f"{kind} -> {errno.errorcode[got] if got else 'ok'}")
        assert got == err, (f"{kind}(offset={offset}, length={length}, keep_size={keep_size}) of a "
                            f"{model.size}-byte file: expected {err and errno.errorcode[err]}, "
                            f"got {got and errno.errorcode[got]}")
        if err is None:
            apply_model(model, kind, offset, length, keep_size)
        else:
            assert file_state(self.fs, ino) == before, f"a failed {kind} changed the file"

    @rule(data=st.data(), how=st.sampled_from(["zero", "down", "block", "up"]))
    def truncate(self, data, how: str) -> None:
        ino, model = self.pick(data)
        size = {"zero": 0, "down": data.draw(st.integers(0, model.size)),
                "block": BLOCK * data.draw(st.integers(0, model.size // BLOCK + 2)),
                "up": model.size + data.draw(st.integers(1, 20_000))}[how]
        if not self.room(ino, size):
            size = model.size // 2
        assert self.fs.setattr(ino, size=size).size == size
        model.truncate(size)

    @rule()
    def remount(self) -> None:
        self.fs = remount(self.fs)

    # -- after every rule -------------------------------------------------------------

    @invariant()
    def files_match_the_model(self) -> None:
        assert self.fs.engine.logged_ops == {}, "a logged op is left after the call returned"
        assert self.fs.long_ops() == []
        for ino, model in self.files.items():
            attr = self.fs.getattr(ino)
            assert attr.size == model.size
            got = contents(self.fs, ino)
            if got != model.data:
                first = next(i for i in range(min(len(got), model.size)) if got[i] != model.data[i]) \
                    if len(got) == model.size else min(len(got), model.size)
                raise AssertionError(f"inode {ino}: content differs from byte {first} (size {model.size})")
            assert_consistent(self.fs, ino)
            data_bytes = inode_of(self.fs, ino).data_bytes
            assert data_bytes <= model.allocatable, \
                f"inode {ino}: {data_bytes} data bytes, but only {model.allocatable} bytes are not holes"
            assert attr.blocks == -(-data_bytes // BLOCK) * (BLOCK // 512)

    def teardown(self) -> None:
        try:
            assert check_engine(self.fs.engine) == []
            self.fs.close()
            image = self.fs.engine.device.durable_image()
            assert fsck_problems(image) == []
            fs = FileSystem.mount(FaultDevice(image))
            for ino, model in self.files.items():
                assert contents(fs, ino) == model.data
            assert check_engine(fs.engine) == []
        finally:
            self._steps.__exit__(None, None, None)


RangeOpsMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
test_range_operations_on_random_files_behave_like_the_bytes_model = RangeOpsMachine.TestCase


# -- collapse, insert, punch, zero: what each does ---------------------------------------------------


def fragmented_file(fs: FileSystem, name: bytes, extents: int, seed: int = 1) -> tuple[int, bytes]:
    pieces = fragmented(random.Random(seed), extents)
    return new_file(fs, ROOT, name, pieces), model_of(pieces)


def test_collapse_removes_the_range_and_moves_every_later_extent_down(fs: FileSystem) -> None:
    """Collapse over a 200-extent file in steps of 4: the content is c[:off] + c[off+len:], the size
    shrinks by len, the dropped extents are gone and a remount keeps it."""
    ino, data = fragmented_file(fs, b"f", 200)
    attr = fs.collapse(ino, 10 * BLOCK, 50 * BLOCK)
    expected = data[:10 * BLOCK] + data[60 * BLOCK:]
    assert attr.size == len(expected) == fs.getattr(ino).size
    assert contents(fs, ino) == expected
    assert len(extents_of(fs, ino)) == 150
    assert_consistent(fs, ino)
    fs = remount(fs)
    assert contents(fs, ino) == expected


def test_collapse_inside_one_extent_keeps_both_ends_of_it(fs: FileSystem) -> None:
    """A range inside one extent splits it: both ends keep pointing into the region, data_bytes
    drops by the length."""
    data = os.urandom(20 * BLOCK)
    ino = new_file(fs, ROOT, b"f", [(0, data)])
    fs.collapse(ino, 3 * BLOCK, 2 * BLOCK)
    assert contents(fs, ino) == data[:3 * BLOCK] + data[5 * BLOCK:]
    assert inode_of(fs, ino).data_bytes == 18 * BLOCK
    assert_consistent(fs, ino)


def test_collapse_up_to_one_block_before_eof_works_and_the_tail_moves_down(fs: FileSystem) -> None:
    """The largest collapse allowed (ending inside the last block) works and moves the partial tail
    block down."""
    ino, data = fragmented_file(fs, b"f", 10)
    size = len(data)
    offset = (size - 1) // BLOCK * BLOCK - BLOCK
    fs.collapse(ino, offset, BLOCK)
    assert contents(fs, ino) == data[:offset] + data[offset + BLOCK:]


def test_insert_makes_a_hole_and_moves_every_later_extent_up(fs: FileSystem) -> None:
    """Insert moves every later extent up by len, reads zeros in between, allocates nothing
    (st_blocks unchanged) and survives a remount."""
    ino, data = fragmented_file(fs, b"f", 200)
    blocks = fs.getattr(ino).blocks
    attr = fs.insert(ino, 10 * BLOCK, 64 * BLOCK)
    expected = data[:10 * BLOCK] + bytes(64 * BLOCK) + data[10 * BLOCK:]
    assert attr.size == len(expected)
    assert contents(fs, ino) == expected
    assert fs.getattr(ino).blocks == blocks, "the inserted range must be a hole"
    assert_consistent(fs, ino)
    fs = remount(fs)
    assert contents(fs, ino) == expected


def test_insert_at_offset_zero_of_an_inline_file_keeps_its_bytes_and_makes_a_hole(fs: FileSystem) -> None:
    """An inline file can take an insert at 0: its bytes move up, the hole holds no data."""
    ino = new_file(fs, ROOT, b"f", [(0, b"inline bytes")])
    fs.insert(ino, 0, BLOCK)
    assert contents(fs, ino) == bytes(BLOCK) + b"inline bytes"
    assert inode_of(fs, ino).data_bytes <= len(b"inline bytes")
    assert_consistent(fs, ino)


def test_insert_then_collapse_of_the_same_range_gives_the_file_back(fs: FileSystem) -> None:
    """Insert and collapse are inverses: content and extent count come back."""
    ino, data = fragmented_file(fs, b"f", 120)
    fs.insert(ino, 7 * BLOCK, 13 * BLOCK)
    fs.collapse(ino, 7 * BLOCK, 13 * BLOCK)
    assert contents(fs, ino) == data
    assert len(extents_of(fs, ino)) == 120


def test_insert_up_to_the_maximum_file_size_works_and_one_block_more_fails_with_efbig(fs: FileSystem) -> None:
    """Insert may grow a file to exactly MAX_FILE_SIZE; one block more is EFBIG."""
    ino = new_file(fs, ROOT, b"f", [(0, b"x" * 100)])
    room = (MAX_FILE_SIZE - 100) // BLOCK * BLOCK
    assert errno_of(fs.insert, ino, 0, room + BLOCK) == errno.EFBIG
    assert fs.insert(ino, 0, room).size == room + 100
    fh = fs.open(ino, os.O_RDONLY)
    assert fs.read(fh, room - 10, 200) == bytes(10) + b"x" * 100
    assert fs.read(fh, 0, 10) == bytes(10)
    fs.release(fh)


@pytest.mark.parametrize("kind", ["punch", "zero"])
def test_punch_and_zero_make_a_hole_at_any_byte_offsets_and_free_its_space(fs: FileSystem, kind: str) -> None:
    """Punch and zero take unaligned ranges, read back as zeros there, and free the bytes both in
    the inode and in the bucket counts."""
    ino, data = fragmented_file(fs, b"f", 100)
    before, live_before = inode_of(fs, ino).data_bytes, data_live_bytes(fs)
    attr = call(fs, kind, ino, 1234, 50 * BLOCK + 17)
    expected = bytearray(data)
    expected[1234:1234 + 50 * BLOCK + 17] = bytes(50 * BLOCK + 17)
    assert attr.size == len(data)
    assert contents(fs, ino) == expected
    freed = before - inode_of(fs, ino).data_bytes
    assert freed > 40 * 20
    assert data_live_bytes(fs) == live_before - freed, "the buckets must count the freed bytes"
    assert_consistent(fs, ino)


@pytest.mark.parametrize("kind", ["punch", "zero"])
def test_punch_and_zero_with_keep_size_past_eof_change_only_up_to_eof(fs: FileSystem, kind: str) -> None:
    """With keep_size, a range reaching past EOF changes bytes up to EOF only and never the size."""
    data = os.urandom(10_000)
    ino = new_file(fs, ROOT, b"f", [(0, data)])
    call(fs, kind, ino, 8000, 100_000, keep_size=True)
    assert contents(fs, ino) == data[:8000] + bytes(2000)
    call(fs, kind, ino, 50_000, 100, keep_size=True)
    assert fs.getattr(ino).size == 10_000


@pytest.mark.parametrize("kind", ["punch", "zero"])
def test_punch_and_zero_without_keep_size_grow_the_file_to_the_end_of_the_range(fs: FileSystem, kind: str) -> None:
    """Without keep_size (a pyfs extension) the size becomes max(size, off+len), never smaller."""
    data = os.urandom(10_000)
    ino = new_file(fs, ROOT, b"f", [(0, data)])
    attr = call(fs, kind, ino, 8000, 100_000, keep_size=False)
    assert attr.size == 108_000
    assert contents(fs, ino) == data[:8000] + bytes(100_000)
    attr = call(fs, kind, ino, 500, 100, keep_size=False)
    assert attr.size == 108_000, "a range inside the file does not shrink it"


def test_punch_of_an_inline_file_keeps_the_bytes_around_the_hole(fs: FileSystem) -> None:
    """A hole punched into an inline file keeps the bytes on both sides and frees the punched ones."""
    ino = new_file(fs, ROOT, b"f", [(0, b"a" * 300)])
    fs.punch(ino, 100, 50)
    assert contents(fs, ino) == b"a" * 100 + bytes(50) + b"a" * 150
    assert inode_of(fs, ino).data_bytes <= 250
    assert_consistent(fs, ino)


def test_punch_up_to_the_maximum_file_size_works_and_one_byte_more_fails_with_efbig(fs: FileSystem) -> None:
    """off+len may reach MAX_FILE_SIZE exactly; one byte more is EFBIG, with or without keep_size."""
    ino = new_file(fs, ROOT, b"f", [(0, b"x" * 100)])
    assert errno_of(fs.punch, ino, 10, MAX_FILE_SIZE - 9) == errno.EFBIG
    assert errno_of(fs.punch, ino, 10, MAX_FILE_SIZE - 9, keep_size=False) == errno.EFBIG
    fs.punch(ino, 10, MAX_FILE_SIZE - 10)
    assert contents(fs, ino) == b"x" * 10 + bytes(90)


@pytest.mark.parametrize("kind", ["collapse", "insert", "punch", "zero"])
def test_range_operations_work_on_an_open_file_without_names_which_goes_at_release(fs: FileSystem, kind: str) -> None:
    """An unlinked but open file takes every range operation, and is deleted at release as usual."""
    ino, data = fragmented_file(fs, b"f", 40)
    fh = fs.open(ino, os.O_RDWR)
    fs.unlink(ROOT, b"f")
    call(fs, kind, ino, BLOCK, 20 * BLOCK)
    model = FileModel(bytearray(data), bytearray(len(data)))
    apply_model(model, kind, BLOCK, 20 * BLOCK, True)
    assert fs.read(fh, 0, model.size + 1) == model.data
    fs.release(fh)
    assert errno_of(fs.getattr, ino) == errno.ENOENT
    assert extents_of(fs, ino) == []


def test_a_huge_collapse_with_a_step_of_one_extent_finishes(fs: FileSystem) -> None:
    """STEP_EXTENTS = 1 (a step touching a single extent) still makes progress to the end for
    collapse, insert and punch."""
    ino, data = fragmented_file(fs, b"f", 60)
    with step_extents(1):
        fs.collapse(ino, 2 * BLOCK, 3 * BLOCK)
        fs.insert(ino, BLOCK, 2 * BLOCK)
        fs.punch(ino, 3, 20 * BLOCK)
    expected = FileModel(bytearray(data), bytearray(len(data)))
    expected.collapse(2 * BLOCK, 3 * BLOCK)
    expected.insert(BLOCK, 2 * BLOCK)
    expected.punch(3, 20 * BLOCK, True)
    assert contents(fs, ino) == expected.data


def test_a_collapse_over_thousands_of_extents_with_the_default_step_finishes_and_survives_remount() -> None:
    """The default step size on 2000 extents: the collapse is right and a remount keeps it."""
    with step_extents(256):
        fs = FileSystem.mount(FaultDevice(fresh_image()))
        ino, data = fragmented_file(fs, b"f", 2000)
        fs.collapse(ino, 100 * BLOCK, 300 * BLOCK)
        expected = data[:100 * BLOCK] + data[400 * BLOCK:]
        assert contents(fs, ino) == expected
        fs = remount(fs)
        assert contents(fs, ino) == expected
        assert check_engine(fs.engine) == []


@pytest.mark.parametrize("kind", ["collapse", "insert", "punch", "zero"])
def test_range_operations_update_mtime_and_ctime(fs: FileSystem, clock: list[int], kind: str) -> None:
    """Every range operation sets mtime and ctime, and the Attr it returns shows them."""
    ino, _ = fragmented_file(fs, b"f", 20)
    before = fs.getattr(ino)
    attr = call(fs, kind, ino, BLOCK, BLOCK)
    now = fs.getattr(ino)
    assert now.mtime_ns > before.mtime_ns and now.ctime_ns > before.ctime_ns
    assert (attr.mtime_ns, attr.ctime_ns) == (now.mtime_ns, now.ctime_ns)


@pytest.mark.parametrize("kind", ["collapse", "insert", "punch", "zero"])
def test_range_operations_by_another_user_clear_setuid_and_group_executable_setgid(fs: FileSystem, kind: str) -> None:
    """A caller other than root clears setuid, and setgid of a group-executable file, as a write
    does."""
    ino = new_file(fs, ROOT, b"f", [(0, os.urandom(5 * BLOCK))], mode=0o6775, ctx=USER)
    call(fs, kind, ino, BLOCK, BLOCK, ctx=USER)
    assert stat.S_IMODE(fs.getattr(ino).mode) == 0o775


@pytest.mark.parametrize("kind", ["collapse", "insert", "punch", "zero"])
def test_range_operations_by_another_user_keep_setgid_without_group_execute(fs: FileSystem, kind: str) -> None:
    """Setgid without group execute (mandatory locking's mark) stays; setuid goes."""
    ino = new_file(fs, ROOT, b"f", [(0, os.urandom(5 * BLOCK))], mode=0o6764, ctx=USER)
    call(fs, kind, ino, BLOCK, BLOCK, ctx=USER)
    assert stat.S_IMODE(fs.getattr(ino).mode) == 0o2764


@pytest.mark.parametrize("kind", ["collapse", "insert", "punch", "zero"])
def test_range_operations_by_root_keep_setuid(fs: FileSystem, kind: str) -> None:
    """Root's range operations keep setuid and setgid."""
    ino = new_file(fs, ROOT, b"f", [(0, os.urandom(5 * BLOCK))], mode=0o6755)
    call(fs, kind, ino, BLOCK, BLOCK)
    assert stat.S_IMODE(fs.getattr(ino).mode) == 0o6755


@pytest.mark.parametrize("kind", ["collapse", "insert", "punch", "zero"])
@pytest.mark.parametrize("owner,mode,ctx", [
    (USER, 0o600, USER),            # owner with write permission
    (Ctx(0, 1000), 0o060, USER),    # group with write permission
    (OTHER, 0o002, USER),           # other with write permission
    (OTHER, 0o000, Ctx()),          # root needs no permission bit
])
def test_range_operations_are_allowed_with_write_permission(
        fs: FileSystem, kind: str, owner: Ctx, mode: int, ctx: Ctx) -> None:
    """Owner, group and other write bits each suffice (only the caller's class counts); root needs
    none."""
    ino = new_file(fs, ROOT, b"f", [(0, os.urandom(5 * BLOCK))], ctx=owner)
    fs.setattr(ino, mode=mode)
    assert errno_of(call, fs, kind, ino, BLOCK, BLOCK, ctx=ctx) is None


# -- errno cases: each leaves the file as it was ----------------------------------------------------

SIZE = 10 * BLOCK + 500  # the file of the errno tests


def special(fs: FileSystem, what: str) -> int:
    """An inode that is not a regular file."""
    if what == "directory":
        return new_dir(fs, ROOT, b"dir")
    if what == "symlink":
        attr = fs.symlink(ROOT, b"link", b"target")
    elif what == "fifo":
        attr = fs.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o666)
    elif what == "chardev":
        attr = fs.mknod(ROOT, b"cdev", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    else:
        attr = fs.mknod(ROOT, b"sock", stat.S_IFSOCK | 0o666)
    fs.forget(attr.ino)
    return attr.ino


ERRNO_CASES = [
    # (kind, offset, length, keep_size, errno)
    ("collapse", 100, BLOCK, True, errno.EINVAL),                  # offset not block aligned
    ("collapse", BLOCK, 100, True, errno.EINVAL),                  # length not block aligned
    ("collapse", BLOCK, 0, True, errno.EINVAL),                    # empty range
    ("collapse", BLOCK, -BLOCK, True, errno.EINVAL),               # negative length
    ("collapse", -BLOCK, BLOCK, True, errno.EINVAL),               # negative offset
    ("collapse", 0, 10 * BLOCK + BLOCK, True, errno.EINVAL),       # reaches past EOF
    ("collapse", 10 * BLOCK, BLOCK, True, errno.EINVAL),           # ends past EOF
    ("collapse", 20 * BLOCK, BLOCK, True, errno.EINVAL),           # starts past EOF
    ("insert", 100, BLOCK, True, errno.EINVAL),
    ("insert", BLOCK, 100, True, errno.EINVAL),
    ("insert", BLOCK, 0, True, errno.EINVAL),
    ("insert", -BLOCK, BLOCK, True, errno.EINVAL),
    ("insert", 11 * BLOCK, BLOCK, True, errno.EINVAL),             # at EOF or past it
    ("insert", 30 * BLOCK, BLOCK, True, errno.EINVAL),
    ("insert", 0, MAX_FILE_SIZE // BLOCK * BLOCK, True, errno.EFBIG),
    ("punch", 0, 0, True, errno.EINVAL),
    ("punch", 0, -1, True, errno.EINVAL),
    ("punch", -1, 10, True, errno.EINVAL),
    ("punch", 10, MAX_FILE_SIZE, True, errno.EFBIG),
    ("punch", MAX_FILE_SIZE, 1, False, errno.EFBIG),
    ("zero", 0, 0, True, errno.EINVAL),
    ("zero", -1, 10, False, errno.EINVAL),
    ("zero", 10, MAX_FILE_SIZE, False, errno.EFBIG),
]


@pytest.mark.parametrize("kind,offset,length,keep_size,err", ERRNO_CASES)
def test_invalid_ranges_fail_with_the_linux_errno_and_change_nothing(
        fs: FileSystem, kind: str, offset: int, length: int, keep_size: bool, err: int | None) -> None:
    """Every invalid range gets Linux's errno (EINVAL for alignment, emptiness and position; EFBIG
    past the limit) and leaves content, attributes and extents as they were."""
    ino = new_file(fs, ROOT, b"f", fragmented(random.Random(5), 10) + [(SIZE - 500, b"e" * 500)])
    assert fs.getattr(ino).size == SIZE
    before = file_state(fs, ino)
    assert errno_of(call, fs, kind, ino, offset, length, keep_size) == err
    assert file_state(fs, ino) == before
    assert fs.engine.logged_ops == {}


def test_collapse_exactly_to_eof_fails_with_einval_as_on_linux(fs: FileSystem) -> None:
    """A collapse whose range ends exactly at EOF is EINVAL (Linux: use truncate), and changes
    nothing."""
    ino = new_file(fs, ROOT, b"f", [(0, os.urandom(4 * BLOCK))])
    before = file_state(fs, ino)
    assert errno_of(fs.collapse, ino, BLOCK, 3 * BLOCK) == errno.EINVAL
    assert file_state(fs, ino) == before


@pytest.mark.parametrize("kind", ["collapse", "insert", "punch", "zero"])
@pytest.mark.parametrize("what,err", [("directory", errno.EISDIR), ("symlink", errno.ENODEV),
                                      ("fifo", errno.ENODEV), ("chardev", errno.ENODEV),
                                      ("socket", errno.ENODEV)])
def test_range_operations_on_anything_but_a_regular_file_fail(
        fs: FileSystem, kind: str, what: str, err: int | None) -> None:
    """A directory gives EISDIR; symlinks, fifos, devices and sockets give ENODEV; nothing changes."""
    ino = special(fs, what)
    before = file_state(fs, ino)
    assert errno_of(call, fs, kind, ino, 0, BLOCK) == err
    assert file_state(fs, ino) == before


@pytest.mark.parametrize("kind", ["collapse", "insert", "punch", "zero"])
@pytest.mark.parametrize("owner,mode", [(Ctx(), 0o644), (USER, 0o444), (USER, 0o077), (Ctx(0, 1000), 0o604)])
def test_range_operations_without_write_permission_fail_with_eacces(
        fs: FileSystem, kind: str, owner: Ctx, mode: int) -> None:
    """Without the write bit of the caller's class the call is EACCES (even when another class has
    it) and changes nothing."""
    ino = new_file(fs, ROOT, b"f", [(0, os.urandom(5 * BLOCK))], ctx=owner)
    fs.setattr(ino, mode=mode)
    before = file_state(fs, ino)
    assert errno_of(call, fs, kind, ino, BLOCK, BLOCK, ctx=USER) == errno.EACCES
    assert file_state(fs, ino) == before


@pytest.mark.parametrize("kind", ["collapse", "insert", "punch", "zero"])
def test_range_operations_on_a_read_only_filesystem_fail_with_erofs(fs: FileSystem, kind: str) -> None:
    """A read-only mount refuses every range operation with EROFS."""
    ino = new_file(fs, ROOT, b"f", [(0, os.urandom(5 * BLOCK))])
    image = remount(fs).engine.device.durable_image()
    ro = FileSystem.mount(FaultDevice(image), EngineOptions(read_only=True))
    before = file_state(ro, ino)
    assert errno_of(call, ro, kind, ino, BLOCK, BLOCK) == errno.EROFS
    assert file_state(ro, ino) == before


@pytest.mark.parametrize("kind", ["collapse", "insert", "punch", "zero"])
def test_range_operations_on_an_unknown_inode_fail_with_enoent(fs: FileSystem, kind: str) -> None:
    """An inode that does not exist is ENOENT."""
    assert errno_of(call, fs, kind, 999_999, 0, BLOCK) == errno.ENOENT


# -- steps, progress and durability of the start ------------------------------------------------------


def record_commits(fs: FileSystem, after_each: Callable[[list], None] | None = None) -> list[tuple[int, list, int]]:
    """Hook the engine's commit: (durable seq when the commit began, its key updates, its seq) per commit."""
    commits: list[tuple[int, list, int]] = []
    original = fs.engine._commit

    def commit(updates):
        durable = fs.engine.journal.durable_seq
        seq = original(updates)
        commits.append((durable, list(updates), seq))
        if after_each is not None:
            after_each(updates)
        return seq

    fs.engine._commit = commit
    return commits


@pytest.mark.parametrize("kind", ["collapse", "insert", "punch", "zero", "truncate"])
def test_each_step_is_one_transaction_carrying_the_logged_op_and_the_start_is_durable_before_the_first(
        fs: FileSystem, kind: str) -> None:
    """Invariant 7 step by step: every transaction from the start to the end of the op carries its
    logged-op key, changes at most about 2 * STEP_EXTENTS extent keys, the last deletes the key, and
    the start is durable before the first step commits."""
    ino, _ = fragmented_file(fs, b"f", 120)
    fs.fsync_now()
    commits = record_commits(fs)
    if kind == "truncate":
        fs.setattr(ino, size=3 * BLOCK)
    else:
        call(fs, kind, ino, 2 * BLOCK, 100 * BLOCK)
    del fs.engine._commit
    with_op = [i for i, (_, updates, _) in enumerate(commits) if any(tree == Tree.LOGGED_OPS for tree, _, _ in updates)]
    assert len(with_op) >= 10, f"a {kind} over 120 extents with steps of 4 took {len(with_op)} logged transactions"
    first, last = with_op[0], with_op[-1]
    assert with_op == list(range(first, last + 1)), "every transaction between the start and the end carries the op"
    start_seq = commits[first][2]
    assert commits[first + 1][0] >= start_seq, "the first step ran before the start was durable"
    for _, updates, _ in commits[first:last + 1]:
        extent_updates = sum(1 for tree, _, _ in updates if tree == Tree.EXTENTS)
        assert extent_updates <= 2 * 4 + 4, f"a step of {kind} changed {extent_updates} extent keys"
    assert any(tree == Tree.LOGGED_OPS and v is None for tree, _, v in commits[last][1]), "the last step ends the op"


@pytest.mark.parametrize("kind", ["collapse", "insert", "punch", "zero"])
def test_long_ops_shows_the_operation_and_its_progress_while_it_runs(fs: FileSystem, kind: str) -> None:
    """long_ops() lists the running operation with its kind, inode and label, and done grows towards
    total; it is empty once the call returns."""
    ino, _ = fragmented_file(fs, b"f", 120)
    seen = []
    record_commits(fs, lambda updates: seen.append(fs.long_ops()))
    call(fs, kind, ino, 2 * BLOCK, 100 * BLOCK, label="/some/file")
    del fs.engine._commit
    running = [ops for ops in seen if ops]
    assert len(running) >= 5
    for ops in running:
        assert len(ops) == 1
        (op,) = ops
        assert (op.kind, op.ino, op.label) == (kind, ino, "/some/file")
        assert 0 <= op.done <= op.total and op.unit
    done = [ops[0].done for ops in running]
    assert done == sorted(done) and done[-1] > done[0], f"progress must grow: {done}"
    assert fs.long_ops() == []


def test_long_ops_shows_an_rmtree_with_its_label(fs: FileSystem) -> None:
    """An rmtree shows in long_ops() under its top directory's inode with its label while it runs."""
    t = new_dir(fs, ROOT, b"t")
    for i in range(40):
        new_file(fs, t, b"f%d" % i, [(0, b"x")])
    seen = []
    record_commits(fs, lambda updates: seen.append(fs.long_ops()))
    fs.rmtree(ROOT, b"t", label="/t")
    del fs.engine._commit
    running = [op for ops in seen for op in ops if op.kind == "rmtree"]
    assert running and all(op.label == "/t" and op.ino == t for op in running)
    assert fs.long_ops() == []


def test_an_operation_cut_after_many_checkpoints_is_finished_at_mount() -> None:
    """An op whose key lives only in checkpoint entries (a checkpoint before every commit, so the
    entries that put it are reclaimed) is still found and finished by mount."""
    eager = EngineOptions(checkpoint_fill=0.0)
    with step_extents(4):
        fs = FileSystem.mount(FaultDevice(fresh_image()))
        ino, data = fragmented_file(fs, b"f", 150)
        fs.close()
        image = fs.engine.device.durable_image()
        expected = data[:BLOCK] + data[61 * BLOCK:]
        probe = FaultDevice(bytearray(image))
        fs = FileSystem.mount(probe, eager)
        before = fs.engine.checkpoints
        fs.collapse(ino, BLOCK, 60 * BLOCK)
        assert fs.engine.checkpoints - before >= 20
        total = len(probe.ops)
        finished_pending = 0
        for cut in range(total // 3, total, max(1, total // 12)):
            dev = FaultDevice(bytearray(image), cut_power_at=cut)
            with pytest.raises(PowerCut):
                FileSystem.mount(dev, eager).collapse(ino, BLOCK, 60 * BLOCK)
            after = dev.durable_image()
            engine = Engine.open(FaultDevice(bytearray(after)), EngineOptions(read_only=True))
            if engine.logged_ops:
                finished_pending += 1
                # The checkpoint this image opens from carries the op: reclaim did not lose it.
                assert engine.journal_scan.checkpoint.logged_ops, "the newest checkpoint lost the logged op"
            fs = FileSystem.mount(FaultDevice(after))
            assert fs.engine.logged_ops == {}
            assert contents(fs, ino) == expected
            assert check_engine(fs.engine) == []
        assert finished_pending >= 3, "too few cuts fell inside the collapse"


# -- rmtree ---------------------------------------------------------------------------------------------


def tree_inos(fs: FileSystem, top: int) -> set[int]:
    """Every inode reachable from directory `top`, itself included."""
    found, stack = {top}, [top]
    while stack:
        d = stack.pop()
        for name, attr, _ in list(fs.readdir(d)):
            if name in (b".", b".."):
                continue
            found.add(attr.ino)
            if stat.S_ISDIR(attr.mode):
                stack.append(attr.ino)
    return found


def assert_gone(fs: FileSystem, inos: set[int]) -> None:
    """No key of any of `inos` is left in any btree."""
    for ino in sorted(inos):
        assert errno_of(fs.getattr, ino) == errno.ENOENT, f"inode {ino} is still there"
        for tree in (Tree.EXTENTS, Tree.XATTRS, Tree.DIRENTS):
            assert keys_of(fs, tree, ino) == [], f"inode {ino} still has {tree.name.lower()} keys"
        with fs.engine.transaction() as t:
            assert t.get(Tree.MISC, (ORPHAN_PREFIX, ino)) is None, f"inode {ino} is still an orphan"


def big_tree(fs: FileSystem, parent: int, rng: random.Random) -> int:
    """A tree of every kind of inode: files inline, one region and fragmented; symlinks; fifos;
    xattrs small and chunked; empty directories; a 50-level chain; a directory of 60 entries."""
    t = new_dir(fs, parent, b"t")
    fs.setxattr(t, b"user.t", rng.randbytes(3000))
    for d in range(4):
        sub = new_dir(fs, t, b"d%d" % d)
        fs.setxattr(sub, b"user.big", rng.randbytes(9000))
        new_file(fs, sub, b"inline", [(0, rng.randbytes(300))])
        new_file(fs, sub, b"region", [(0, rng.randbytes(70_000))])
        frag = new_file(fs, sub, b"frag", fragmented(rng, 40))
        fs.setxattr(frag, b"user.x", b"y")
        fs.forget(fs.symlink(sub, b"link", b"../d0/region").ino)
        fs.forget(fs.mknod(sub, b"fifo", stat.S_IFIFO | 0o644).ino)
        new_dir(fs, sub, b"empty")
    wide = new_dir(fs, t, b"wide")
    for i in range(60):
        new_file(fs, wide, b"w%03d" % i, [(0, b"%d" % i)])
    deep = new_dir(fs, t, b"deep")
    for level in range(50):
        deep = new_dir(fs, deep, b"l%02d" % level)
        if level % 7 == 0:
            new_file(fs, deep, b"f", fragmented(rng, 5))
    return t


def test_rmtree_removes_a_big_tree_deletes_every_inode_and_returns_the_space(
        fs: FileSystem, clock: list[int]) -> None:
    """rmtree of ~150 inodes of every kind: the entry goes, the parent loses a link and gets new
    times, no key of any inode of the tree is left, every other path is unchanged, data space comes
    back to the byte, and the checker, fsck and a remount agree."""
    rng = random.Random(3)
    keep = new_file(fs, ROOT, b"keep", [(0, rng.randbytes(9000))])
    fs.fsync_now()
    free_before, data_before = fs.statfs().blocks_free, data_live_bytes(fs)
    inodes_before = fs.engine.trees[Tree.INODES].nkeys
    t = big_tree(fs, ROOT, rng)
    inos = tree_inos(fs, t)
    assert len(inos) > 100
    root_before = fs.getattr(ROOT)
    snap_before = fs_snapshot(fs)
    assert fs.rmtree(ROOT, b"t", label="t") in (None, t)
    assert errno_of(fs.lookup, ROOT, b"t") == errno.ENOENT
    root = fs.getattr(ROOT)
    assert root.nlink == root_before.nlink - 1
    assert root.mtime_ns > root_before.mtime_ns and root.ctime_ns > root_before.ctime_ns
    assert_gone(fs, inos)
    assert fs.engine.trees[Tree.INODES].nkeys == inodes_before
    assert fs.engine.logged_ops == {} and fs.long_ops() == []
    assert (expected := rmtree_model(snap_before)) == (got := fs_snapshot(fs)), snapshot_difference(expected, got)
    assert contents(fs, keep)
    assert data_live_bytes(fs) == data_before
    fs.fsync_now()
    assert fs.statfs().blocks_free >= free_before - 32, "the tree's space must come back"
    assert check_engine(fs.engine) == []
    fs.close()
    image = fs.engine.device.durable_image()
    assert fsck_problems(image) == []
    fs = FileSystem.mount(FaultDevice(image))
    assert_gone(fs, inos)


def test_rmtree_keeps_a_file_linked_from_outside_the_tree_with_one_link_less(fs: FileSystem) -> None:
    """A file with names inside and outside the tree keeps its outside name and data; its link count
    drops by the names inside."""
    t = new_dir(fs, ROOT, b"t")
    sub = new_dir(fs, t, b"sub")
    data = os.urandom(30_000)
    shared = new_file(fs, sub, b"shared", [(0, data)])
    fs.forget(fs.link(shared, t, b"again").ino)
    fs.forget(fs.link(shared, ROOT, b"outside").ino)
    assert fs.getattr(shared).nlink == 3
    fs.rmtree(ROOT, b"t")
    assert fs.getattr(shared).nlink == 1
    assert fs.lookup(ROOT, b"outside").ino == shared
    fs.forget(shared)
    assert contents(fs, shared) == data
    assert_gone(fs, {t, sub})
    fs = remount(fs)
    assert contents(fs, shared) == data and fs.getattr(shared).nlink == 1


def test_rmtree_deletes_a_file_whose_every_link_is_inside_the_tree(fs: FileSystem) -> None:
    """A file whose every name is inside the tree is deleted once, not leaked or double freed."""
    t = new_dir(fs, ROOT, b"t")
    a, b = new_dir(fs, t, b"a"), new_dir(fs, t, b"b")
    ino = new_file(fs, a, b"f", fragmented(random.Random(1), 30))
    fs.forget(fs.link(ino, b, b"g").ino)
    fs.forget(fs.link(ino, t, b"h").ino)
    fs.rmtree(ROOT, b"t")
    assert_gone(fs, {t, a, b, ino})


def test_rmtree_of_a_50_level_deep_chain_removes_every_level(fs: FileSystem) -> None:
    """A 50-level chain of directories is removed from the bottom up."""
    top = d = new_dir(fs, ROOT, b"t")
    chain = [d]
    for level in range(50):
        d = new_dir(fs, d, b"level-%d" % level)
        chain.append(d)
    new_file(fs, d, b"bottom", [(0, b"bottom")])
    fs.rmtree(ROOT, b"t")
    assert_gone(fs, set(chain))
    assert top not in tree_inos(fs, ROOT)


def test_rmtree_of_an_empty_directory_works_like_rmdir(fs: FileSystem) -> None:
    """An empty directory: removed, parent link count down by one."""
    d = new_dir(fs, ROOT, b"t")
    nlink = fs.getattr(ROOT).nlink
    fs.rmtree(ROOT, b"t")
    assert_gone(fs, {d})
    assert fs.getattr(ROOT).nlink == nlink - 1


def test_rmtree_in_a_subdirectory_updates_that_parent(fs: FileSystem, clock: list[int]) -> None:
    """The parent is any directory: its link count and mtime change, its other entries stay."""
    p = new_dir(fs, ROOT, b"p")
    new_dir(fs, p, b"sibling")
    t = new_dir(fs, p, b"t")
    new_file(fs, t, b"f", [(0, b"x")])
    before = fs.getattr(p)
    fs.rmtree(p, b"t")
    after = fs.getattr(p)
    assert after.nlink == before.nlink - 1 == 3
    assert after.mtime_ns > before.mtime_ns
    assert [n for n, _, _ in fs.readdir(p)] == [b".", b"..", b"sibling"]


def test_an_open_file_in_a_removed_tree_stays_readable_until_released_then_goes(fs: FileSystem) -> None:
    """An open file of the tree lives on without names, data and space included, until its release."""
    t = new_dir(fs, ROOT, b"t")
    sub = new_dir(fs, t, b"sub")
    live_before = data_live_bytes(fs)
    data = os.urandom(100_000)
    ino = new_file(fs, sub, b"open", [(0, data)])
    fh = fs.open(ino, os.O_RDWR)
    fs.rmtree(ROOT, b"t")
    assert errno_of(fs.lookup, ROOT, b"t") == errno.ENOENT
    assert_gone(fs, {t, sub})
    assert fs.getattr(ino).nlink == 0
    assert fs.read(fh, 0, len(data) + 1) == data
    assert fs.write(fh, 0, b"still writable") == 14
    assert data_live_bytes(fs) == live_before + 100_000, "its data lives while it is open"
    fs.release(fh)
    assert_gone(fs, {ino})
    assert data_live_bytes(fs) == live_before
    assert check_engine(fs.engine) == []


def test_a_looked_up_file_in_a_removed_tree_lives_until_forgotten(fs: FileSystem) -> None:
    """A file the kernel knows (lookup count) lives until forget, as after unlink."""
    t = new_dir(fs, ROOT, b"t")
    ino = new_file(fs, t, b"known", [(0, b"data")])
    assert fs.lookup(t, b"known").ino == ino
    fs.rmtree(ROOT, b"t")
    assert fs.getattr(ino).nlink == 0
    fs.forget(ino)
    assert_gone(fs, {t, ino})


def test_a_looked_up_directory_in_a_removed_tree_lives_as_an_empty_orphan_until_forgotten(fs: FileSystem) -> None:
    """A directory the kernel knows loses its contents and its name, stays as an empty orphan
    (readdir ENOENT) until forget."""
    t = new_dir(fs, ROOT, b"t")
    sub = new_dir(fs, t, b"sub")
    inside = new_file(fs, sub, b"f", [(0, b"data")])
    assert fs.lookup(t, b"sub").ino == sub
    fs.rmtree(ROOT, b"t")
    assert_gone(fs, {inside})
    assert fs.getattr(sub).nlink == 0
    assert errno_of(lambda: list(fs.readdir(sub))) == errno.ENOENT
    fs.forget(sub)
    assert_gone(fs, {t, sub})


def test_a_looked_up_top_directory_of_a_removed_tree_lives_as_an_empty_orphan_until_forgotten(fs: FileSystem) -> None:
    """The same for the top directory of the tree."""
    t = new_dir(fs, ROOT, b"t")
    inside = new_file(fs, t, b"f", fragmented(random.Random(2), 20))
    assert fs.lookup(ROOT, b"t").ino == t
    fs.rmtree(ROOT, b"t")
    assert errno_of(fs.lookup, ROOT, b"t") == errno.ENOENT
    assert_gone(fs, {inside})
    assert fs.getattr(t).nlink == 0
    assert errno_of(lambda: list(fs.readdir(t))) == errno.ENOENT
    fs.forget(t)
    assert_gone(fs, {t})


def test_an_open_file_in_a_removed_tree_is_deleted_by_the_next_mount_after_a_crash(fs: FileSystem) -> None:
    """An orphan left open at a crash is deleted by the next mount, with the rest of the tree gone."""
    t = new_dir(fs, ROOT, b"t")
    ino = new_file(fs, t, b"open", [(0, os.urandom(50_000))])
    fs.open(ino, os.O_RDONLY)
    fs.rmtree(ROOT, b"t")
    fs.fsync_now()
    fs = FileSystem.mount(FaultDevice(fs.engine.device.durable_image()))
    assert_gone(fs, {t, ino})
    assert check_engine(fs.engine) == []


def test_rmtree_with_many_entries_per_directory_and_tiny_steps_finishes(fs: FileSystem) -> None:
    """Directories of many entries, files of several extents, one entry or extent per step: it still
    finishes."""
    t = new_dir(fs, ROOT, b"t")
    for d in range(3):
        sub = new_dir(fs, t, b"d%d" % d)
        for i in range(30):
            new_file(fs, sub, b"f%d" % i, [(0, b"%d" % i)] if i % 3 else fragmented(random.Random(i), 6))
    inos = tree_inos(fs, t)
    with step_extents(1):
        fs.rmtree(ROOT, b"t")
    assert_gone(fs, inos)


@pytest.mark.parametrize("name,err", [(b"missing", errno.ENOENT), (b"file", errno.ENOTDIR),
                                      (b"link", errno.ENOTDIR), (b".", errno.EINVAL), (b"..", errno.EINVAL)])
def test_rmtree_of_a_bad_name_fails_and_changes_nothing(fs: FileSystem, name: bytes, err: int | None) -> None:
    """ENOENT for a missing name, ENOTDIR for a file or a symlink to a directory, EINVAL for . and
    ..; nothing changes."""
    new_file(fs, ROOT, b"file", [(0, b"x")])
    new_dir(fs, ROOT, b"dir")
    fs.forget(fs.symlink(ROOT, b"link", b"dir").ino)
    p = new_dir(fs, ROOT, b"p")
    before = fs_snapshot(fs)
    assert errno_of(fs.rmtree, ROOT, name) == err
    if name in (b".", b".."):
        assert errno_of(fs.rmtree, p, name) == err
    assert fs_snapshot(fs) == before


def test_rmtree_in_a_parent_that_is_not_a_directory_fails_with_enotdir(fs: FileSystem) -> None:
    """The parent must be a directory."""
    ino = new_file(fs, ROOT, b"file", [(0, b"x")])
    assert errno_of(fs.rmtree, ino, b"x") == errno.ENOTDIR


def test_rmtree_on_a_read_only_filesystem_fails_with_erofs(fs: FileSystem) -> None:
    """A read-only mount refuses rmtree with EROFS and keeps the tree."""
    t = new_dir(fs, ROOT, b"t")
    new_file(fs, t, b"f", [(0, b"x")])
    image = remount(fs).engine.device.durable_image()
    ro = FileSystem.mount(FaultDevice(image), EngineOptions(read_only=True))
    before = fs_snapshot(ro)
    assert errno_of(ro.rmtree, ROOT, b"t") == errno.EROFS
    assert fs_snapshot(ro) == before


def user_tree(fs: FileSystem, inner_owner: Ctx = USER, inner_mode: int = 0o755,
              parent_owner: Ctx = USER, parent_mode: int = 0o755) -> tuple[int, int]:
    """/p (parent) holding t/a/b/c (c holds a file); returns (p, c)."""
    p = new_dir(fs, ROOT, b"p", parent_mode, parent_owner)
    t = new_dir(fs, p, b"t", 0o755, USER)
    a = new_dir(fs, t, b"a", 0o755, USER)
    b = new_dir(fs, a, b"b", 0o755, USER)
    c = new_dir(fs, b, b"c", inner_mode, inner_owner)
    new_file(fs, c, b"f", [(0, b"x" * 5000)], ctx=OTHER)
    return p, c


@pytest.mark.parametrize("parent_owner,parent_mode", [
    (Ctx(), 0o755),    # no write permission on the parent
    (USER, 0o555),     # owner without write
    (USER, 0o666),     # owner without search
    (Ctx(0, 1000), 0o750),  # group without write
])
def test_rmtree_without_write_and_search_on_the_parent_fails_with_eacces(
        fs: FileSystem, parent_owner: Ctx, parent_mode: int) -> None:
    """The caller needs write and search on the parent (its own class's bits); else EACCES and
    nothing changes."""
    p, _ = user_tree(fs, parent_owner=parent_owner, parent_mode=parent_mode)
    before = fs_snapshot(fs)
    assert errno_of(fs.rmtree, p, b"t", ctx=USER) == errno.EACCES
    assert fs_snapshot(fs) == before


@pytest.mark.parametrize("inner_owner,inner_mode", [
    (OTHER, 0o755),    # another user's directory without write for us
    (USER, 0o555),     # our own directory without write
    (USER, 0o666),     # our own directory without search
    (OTHER, 0o772),    # other bits: write but no search
])
def test_rmtree_without_write_and_search_on_a_directory_inside_fails_with_eacces_and_changes_nothing(
        fs: FileSystem, inner_owner: Ctx, inner_mode: int) -> None:
    """A non-root caller needs write and search on every directory inside; one missing bit anywhere
    is EACCES before anything is removed."""
    p, _ = user_tree(fs, inner_owner=inner_owner, inner_mode=inner_mode)
    before = fs_snapshot(fs)
    assert errno_of(fs.rmtree, p, b"t", ctx=USER) == errno.EACCES
    assert fs_snapshot(fs) == before
    assert fs.engine.logged_ops == {}


def test_rmtree_without_permission_deep_inside_a_big_tree_changes_nothing(fs: FileSystem) -> None:
    """The permission check covers the whole tree before the first step: a locked directory 40
    levels down leaves the 30 other subtrees intact."""
    p = new_dir(fs, ROOT, b"p", 0o755, USER)
    t = new_dir(fs, p, b"t", 0o755, USER)
    for i in range(30):
        sub = new_dir(fs, t, b"d%02d" % i, 0o755, USER)
        new_file(fs, sub, b"f", fragmented(random.Random(i), 4), ctx=USER)
    d = t
    for level in range(40):
        d = new_dir(fs, d, b"l%d" % level, 0o755, USER)
    new_dir(fs, d, b"locked", 0o755, OTHER)
    before = fs_snapshot(fs)
    with step_extents(2):
        assert errno_of(fs.rmtree, p, b"t", ctx=USER) == errno.EACCES
    assert fs_snapshot(fs) == before


@pytest.mark.parametrize("inner_owner,inner_mode,ctx", [
    (OTHER, 0o777, USER),     # another user's directory that everyone may write
    (Ctx(0, 1000), 0o770, USER),  # group write and search
    (OTHER, 0o000, Ctx()),    # root needs no permission
])
def test_rmtree_with_write_and_search_on_every_directory_removes_the_tree(
        fs: FileSystem, inner_owner: Ctx, inner_mode: int, ctx: Ctx) -> None:
    """Write and search through other or group bits suffice; root needs none."""
    p, c = user_tree(fs, inner_owner=inner_owner, inner_mode=inner_mode)
    fs.rmtree(p, b"t", ctx=ctx)
    assert errno_of(fs.lookup, p, b"t") == errno.ENOENT
    assert_gone(fs, {c})


@pytest.mark.parametrize("dir_owner,parent_owner,ctx,err", [
    (OTHER, Ctx(), USER, errno.EPERM),   # neither the directory nor the parent is ours
    (USER, Ctx(), USER, None),           # our directory
    (OTHER, USER, USER, None),           # our parent
    (OTHER, Ctx(), Ctx(), None),         # root
])
def test_rmtree_in_a_sticky_directory_needs_the_directory_or_the_parent_to_be_ours(
        fs: FileSystem, dir_owner: Ctx, parent_owner: Ctx, ctx: Ctx, err: int | None) -> None:
    """In a sticky parent the caller must own the directory or the parent, or be root; else EPERM
    and nothing changes."""
    s = new_dir(fs, ROOT, b"sticky", 0o1777, parent_owner)
    t = new_dir(fs, s, b"t", 0o777, dir_owner)
    new_file(fs, t, b"f", [(0, b"x")], ctx=dir_owner)
    before = fs_snapshot(fs)
    assert errno_of(fs.rmtree, s, b"t", ctx=ctx) == err
    if err is None:
        assert_gone(fs, {t})
    else:
        assert fs_snapshot(fs) == before


@pytest.mark.parametrize("entry_owner,ctx,err", [
    (OTHER, USER, errno.EPERM),   # another user's file in another user's sticky directory
    (USER, USER, None),           # our own file there
    (OTHER, Ctx(), None),         # root
])
def test_rmtree_through_a_sticky_directory_inside_needs_each_entry_to_be_ours(
        fs: FileSystem, entry_owner: Ctx, ctx: Ctx, err: int | None) -> None:
    """As rm -rf would meet unlink(2)'s sticky rule: a world-writable sticky directory of another
    user inside our tree may only lose entries we own; else EPERM before anything changes."""
    home = new_dir(fs, ROOT, b"home", 0o755, USER)
    t = new_dir(fs, home, b"t", 0o755, USER)
    tmp = new_dir(fs, t, b"tmp", 0o1777, OTHER)
    new_file(fs, tmp, b"theirs", [(0, b"x")], ctx=entry_owner)
    before = fs_snapshot(fs)
    assert errno_of(fs.rmtree, home, b"t", ctx=ctx) == err
    if err is None:
        assert_gone(fs, {t, tmp})
    else:
        assert fs_snapshot(fs) == before


def test_rmtree_deletes_an_emptied_subdirectory_whose_xattrs_take_several_steps(fs: FileSystem) -> None:
    """A directory left empty by the walk is deleted even when its xattrs span more than one step
    (it used to stay behind as an orphan until the next mount)."""
    t = new_dir(fs, ROOT, b"t")
    sub = new_dir(fs, t, b"sub")
    for i in range(3):
        fs.setxattr(sub, b"user.big%d" % i, bytes(9000))
    new_file(fs, sub, b"f", [(0, b"x")])
    fs.rmtree(ROOT, b"t")
    assert_gone(fs, {t, sub})
    assert fs.engine.logged_ops == {}


def test_an_rmtree_cut_by_a_power_failure_is_finished_at_mount(fs: FileSystem) -> None:
    """Power cuts during an rmtree with durable steps: after mount the tree is whole or entirely
    gone, never partly."""
    t = big_tree(fs, ROOT, random.Random(9))
    inos = tree_inos(fs, t)
    fs.close()
    image = fs.engine.device.durable_image()
    eager = EngineOptions(checkpoint_fill=0.0)  # every step durable before the next
    probe = FaultDevice(bytearray(image))
    FileSystem.mount(probe, eager).rmtree(ROOT, b"t")
    total = len(probe.ops)
    interrupted = 0
    for cut in range(1, total, max(1, total // 10)):
        dev = FaultDevice(bytearray(image), cut_power_at=cut)
        with pytest.raises(PowerCut):
            FileSystem.mount(dev, eager).rmtree(ROOT, b"t")
        after = dev.durable_image()
        interrupted += bool(pending_ops_of(bytearray(after)))
        fs = FileSystem.mount(FaultDevice(after))
        if errno_of(fs.lookup, ROOT, b"t") is None:
            assert tree_inos(fs, t) == inos, "a tree that is still there is whole"
        else:
            assert_gone(fs, inos)
        assert fs.engine.logged_ops == {}
        assert check_engine(fs.engine) == []
    assert interrupted, "no power cut fell inside the rmtree"


def test_several_operations_interrupted_together_are_all_finished_at_mount(fs: FileSystem) -> None:
    """With a driver running steps (defer_long_ops), several logged ops can be pending at a crash;
    mount finishes all of them."""
    rng = random.Random(8)
    a, b = new_file(fs, ROOT, b"a", fragmented(rng, 60)), new_file(fs, ROOT, b"b", fragmented(rng, 60))
    ma = FileModel(bytearray(contents(fs, a)), bytearray(fs.getattr(a).size))
    mb = FileModel(bytearray(contents(fs, b)), bytearray(fs.getattr(b).size))
    t = big_tree(fs, ROOT, rng)
    inos = tree_inos(fs, t)
    fs.defer_long_ops = True
    fs.collapse(a, BLOCK, 30 * BLOCK, label="a")
    fs.insert(b, 2 * BLOCK, 10 * BLOCK, label="b")
    fs.rmtree(ROOT, b"t", label="t")
    started = fs.take_started()
    assert len(started) == 3
    fs.fsync_now()
    assert sorted((op.kind, op.label) for op in fs.long_ops()) == [("collapse", "a"), ("insert", "b"), ("rmtree", "t")]
    for kind, ino in started:  # a few steps of each, interleaved
        for _ in range(3):
            fs.op_step(kind, ino)
    fs.fsync_now()
    image = fs.engine.device.durable_image()  # the power fails here
    fs.close()
    fs = FileSystem.mount(FaultDevice(image))
    assert fs.engine.logged_ops == {} and fs.long_ops() == []
    ma.collapse(BLOCK, 30 * BLOCK)
    mb.insert(2 * BLOCK, 10 * BLOCK)
    assert contents(fs, a) == ma.data and contents(fs, b) == mb.data
    assert_gone(fs, inos)
    assert check_engine(fs.engine) == []


def test_fsck_finds_nothing_wrong_in_an_image_cut_in_the_middle_of_each_operation(fs: FileSystem) -> None:
    """A crash state is not damage: fsck -n leaves unfinished long operations (collapse, insert,
    punch, rmtree) to mount."""
    ino, _ = fragmented_file(fs, b"f", 150)
    big_tree(fs, ROOT, random.Random(4))
    fs.close()
    image = fs.engine.device.durable_image()
    eager = EngineOptions(checkpoint_fill=0.0)
    operations: dict[str, Callable[[FileSystem], object]] = {
        "collapse": lambda f: f.collapse(ino, BLOCK, 60 * BLOCK),
        "insert": lambda f: f.insert(ino, BLOCK, 60 * BLOCK),
        "punch": lambda f: f.punch(ino, 100, 100 * BLOCK),
        "rmtree": lambda f: f.rmtree(ROOT, b"t"),
    }
    for kind, op in operations.items():
        probe = FaultDevice(bytearray(image))
        op(FileSystem.mount(probe, eager))
        cut = len(probe.ops) // 2
        dev = FaultDevice(bytearray(image), cut_power_at=cut)
        with pytest.raises(PowerCut):
            op(FileSystem.mount(dev, eager))
        after = dev.durable_image()
        assert pending_ops_of(bytearray(after)), f"{kind}: the cut missed the operation"
        problems = fsck_problems(after)
        assert problems == [], f"{kind}: fsck -n of a crash image: {problems}"
