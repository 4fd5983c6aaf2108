"""The engine checker finds each kind of damage, and neither it nor open ever crashes.

Promises proven here (pyfs/engine/check.py, and DESIGN.md invariants 5 and 9):
- `check_image` returns an empty list for a healthy image, also one left by
  a crash (replayed in memory), and a `Problem` of the right kind for each
  damage a bug or a bad disk can leave: a damaged btree node ("node"), a
  wrong bucket live count ("bucket-count"), bytes referenced twice
  ("double-reference"), an extent in a btree bucket ("bucket-kind"), outside
  the bucket area or across a bucket boundary ("address"), a malformed
  logged op ("logged-op"), an undecodable key ("key").
- A damaged journal entry that a later entry proves was flushed is
  corruption: `Engine.open` refuses with `JournalCorrupt` (EIO) asking for
  fsck, and `check_image` reports it as kind "open".  A damaged entry at the
  tail, which nothing proves, is a crash: it is dropped and is no problem.
- Fuzzing: whatever bytes of the superblock, journal or btree nodes are
  flipped or zeroed, `check_image` never raises (nor catches an unexpected
  exception of its own), `Engine.open` raises only `OSError` subclasses, and
  lookups on an engine that did open raise only `OSError`.
"""

from __future__ import annotations

import errno
import logging
import random

import pytest

from pyfs.engine.node_store import Ptr
from pyfs.engine.check import Problem, check_engine, check_image
from pyfs.engine.fault_device import FaultDevice
from pyfs.engine.engine import Engine, EngineOptions
from pyfs.format.keys import encode_key
from pyfs.format.node import HEADER_SIZE as NODE_HEADER_SIZE
from pyfs.format.records import NODE_TREES, AllocInfo, Extent, LoggedOp, Tree
from pyfs.engine.journal_scan import JournalCorrupt
from pyfs.engine.journal_scan import Located, find_entries
from tools.crashsim import fresh_image

REGION = 12288


# -- building images -----------------------------------------------------------------


def write_extent(engine: Engine, key: tuple, length: int = REGION, fill: int = 0x5A) -> Extent:
    """A data region with its extent key and bucket count, committed together."""
    addr = engine.allocate_data(length)
    csum = engine.write_data(addr, bytes([fill]) * length)
    ext = Extent(length=length, region_addr=addr, region_len=length, region_csum=csum)
    with engine.transaction() as t:
        t.put(Tree.EXTENTS, key, ext.encode())
        t.adjust_bucket_usage(addr, length)
    return ext


def populate(engine: Engine, seed: int = 0) -> None:
    """Keys in every tree, a few data extents, and a logged op."""
    rng = random.Random(seed)
    for i in range(40):
        with engine.transaction() as t:
            t.put(Tree.INODES, (i,), rng.randbytes(rng.randint(20, 200)))
            t.put(Tree.DIRENTS, (1, i * 7919, f"name-{i}"), rng.randbytes(16))
            if i % 3 == 0:
                t.put(Tree.XATTRS, (i, b"user.tag"), rng.randbytes(rng.randint(0, 90)))
            if i % 5 == 0:
                t.put(Tree.MISC, ("counter", i), rng.randbytes(8))
    for i in range(4):
        write_extent(engine, (100 + i, 0), fill=i)
    with engine.transaction() as t:
        t.put(Tree.LOGGED_OPS, (1,), LoggedOp("truncate", {"ino": 101, "size": 0}, 4096).encode())


def healthy_image(seed: int = 1, size: int = 4 << 20) -> bytearray:
    """A cleanly closed image holding keys in every tree, extents and a logged op."""
    dev = FaultDevice(fresh_image(seed, size))
    engine = Engine.open(dev)
    populate(engine, seed)
    engine.close()
    return dev.durable_image()


@pytest.fixture(scope="module")
def healthy() -> bytes:
    image = bytes(healthy_image())
    assert check_image(FaultDevice(image)) == []
    return image


def damaged_by(image: bytes, change) -> bytearray:
    """The image after `change(engine)` ran as a committed bug, then a clean close."""
    dev = FaultDevice(image)
    engine = Engine.open(dev)
    change(engine)
    engine.close()
    return dev.durable_image()


def kinds(problems: list[Problem]) -> set[str]:
    return {p.kind for p in problems}


def node_ptrs(engine: Engine, tree_id: int) -> list[tuple[Ptr, int]]:
    """(pointer, level) of every node of a clean tree, root first."""
    tree = engine.trees[tree_id]
    assert isinstance(tree.root, Ptr), "the tree has unwritten changes"
    out = []
    stack = [(tree.root, tree.root_level)]
    while stack:
        ptr, level = stack.pop()
        out.append((ptr, level))
        if level:
            node = engine.store.load(ptr, tree_id, level)
            stack.extend((child, level - 1) for child in node.vals)
    return out


def journal_entries(engine: Engine, image: bytes) -> list[Located]:
    """Valid entries of the journal region, by seq."""
    sb = engine.sb
    region = bytes(image[sb.journal_offset : sb.journal_offset + sb.journal_size])
    return sorted(find_entries(region, engine.seed), key=lambda loc: loc.entry.seq)


def free_bucket_pair(engine: Engine) -> int:
    """A bucket that is empty and followed by another empty one."""
    space = engine.space
    for b in range(engine.sb.nbuckets - 1):
        pair = (b, b + 1)
        if not any(space.live[x] for x in pair) and all(ob.bucket not in pair for ob in space.open.values()):
            return b
    raise AssertionError("no two adjacent free buckets")


# -- healthy images ------------------------------------------------------------------


def test_a_healthy_cleanly_closed_image_has_no_problems(healthy):
    assert check_image(FaultDevice(healthy)) == []


def test_a_healthy_image_after_crashes_and_replays_has_no_problems(healthy):
    image = bytearray(healthy)
    rng = random.Random(7)
    for crash in range(3):
        dev = FaultDevice(image)
        engine = Engine.open(dev)
        for i in range(30):
            with engine.transaction() as t:
                t.put(Tree.INODES, (1000 * crash + i,), rng.randbytes(50))
            if i % 4 == 0:
                write_extent(engine, (200 + crash, i * REGION), length=rng.choice([512, 4096, REGION]))
            if i % 7 == 0:
                engine.flush()
        engine.flush()
        image = dev.durable_image()  # power cut: no close, no final checkpoint
        assert check_image(FaultDevice(image)) == []
    reopened = Engine.open(FaultDevice(image), EngineOptions(read_only=True))
    assert reopened.replayed_entries > 0
    assert check_engine(reopened) == []


def test_checking_an_image_writes_nothing(healthy):
    image = crashed_with_entries(healthy)[1]
    dev = FaultDevice(image)
    assert check_image(dev) == []
    assert dev.ops == [] and dev.durable_image() == image


# -- damage by a bad disk --------------------------------------------------------------


def node_length(image: bytes, addr: int) -> int:
    """Bytes of the node at `addr` that its checksum covers (header and payload)."""
    return NODE_HEADER_SIZE + int.from_bytes(image[addr + 8 : addr + 12], "little")


@pytest.mark.parametrize("tree_id", [Tree.INODES, Tree.DIRENTS, Tree.EXTENTS, Tree.MISC])
@pytest.mark.parametrize("part", ["magic", "level", "address", "checksum", "payload", "last byte"])
def test_a_flipped_byte_in_a_btree_node_is_a_node_problem(healthy, tree_id, part):
    engine = Engine.open(FaultDevice(healthy), EngineOptions(read_only=True))
    victim, _ = node_ptrs(engine, tree_id)[-1]
    length = node_length(healthy, victim.addr)
    offset = {"magic": 1, "level": 5, "address": 13, "checksum": 22, "payload": length // 2 + 12,
              "last byte": length - 1}[part]
    image = bytearray(healthy)
    image[victim.addr + offset] ^= 0x10
    problems = check_image(FaultDevice(image))
    assert "node" in kinds(problems)
    assert any(f"{victim.addr:#x}" in p.where for p in problems if p.kind == "node")


def test_a_damaged_alloc_node_refuses_open_and_is_an_open_problem_naming_the_node(healthy):
    engine = Engine.open(FaultDevice(healthy), EngineOptions(read_only=True))
    victim, _ = node_ptrs(engine, Tree.ALLOC)[-1]
    image = bytearray(healthy)
    image[victim.addr + node_length(healthy, victim.addr) - 1] ^= 0x01
    # The alloc tree is read whole at open, so the damage stops the open itself.
    problems = check_image(FaultDevice(image))
    assert [p.kind for p in problems] == ["open"]
    assert f"{victim.addr:#x}" in problems[0].message
    with pytest.raises(OSError) as info:
        Engine.open(FaultDevice(image))
    assert info.value.errno == errno.EIO


def test_a_zeroed_btree_node_is_a_node_problem(healthy):
    engine = Engine.open(FaultDevice(healthy), EngineOptions(read_only=True))
    victim, _ = node_ptrs(engine, Tree.XATTRS)[0]
    image = bytearray(healthy)
    image[victim.addr : victim.addr + engine.sb.node_size] = bytes(engine.sb.node_size)
    assert "node" in kinds(check_image(FaultDevice(image)))


# -- damage by a bug ---------------------------------------------------------------------


def test_an_alloc_key_with_a_wrong_live_count_is_a_bucket_count_problem(healthy):
    def miscount(engine: Engine) -> None:
        with engine.transaction() as t:
            ext = Extent.decode(t.get(Tree.EXTENTS, (101, 0)))
            bucket = engine.sb.bucket_of(ext.addr)
            info = AllocInfo.decode(t.get(Tree.ALLOC, (bucket,)))
            t.put(Tree.ALLOC, (bucket,), AllocInfo(info.live_bytes + 4096, info.kind, info.gen).encode())

    problems = check_image(FaultDevice(damaged_by(healthy, miscount)))
    assert kinds(problems) == {"bucket-count"}


def test_two_extents_pointing_at_the_same_bytes_are_a_double_reference(healthy):
    def share(engine: Engine) -> None:
        with engine.transaction() as t:
            raw = t.get(Tree.EXTENTS, (102, 0))
            ext = Extent.decode(raw)
            t.put(Tree.EXTENTS, (555, 0), raw)  # counted, so only the sharing is wrong
            t.adjust_bucket_usage(ext.addr, ext.length)

    problems = check_image(FaultDevice(damaged_by(healthy, share)))
    assert kinds(problems) == {"double-reference"}


def test_an_extent_overlapping_part_of_another_is_a_double_reference(healthy):
    def overlap(engine: Engine) -> None:
        with engine.transaction() as t:
            ext = Extent.decode(t.get(Tree.EXTENTS, (103, 0)))
            tail = Extent(4096, ext.region_addr, ext.region_len, ext.region_csum, offset=ext.length - 4096)
            t.put(Tree.EXTENTS, (556, 0), tail.encode())
            t.adjust_bucket_usage(tail.addr, tail.length)

    assert "double-reference" in kinds(check_image(FaultDevice(damaged_by(healthy, overlap))))


def test_an_extent_pointing_into_a_btree_bucket_is_a_bucket_kind_problem(healthy):
    def into_btree(engine: Engine) -> None:
        node, _ = node_ptrs(engine, Tree.INODES)[0]
        with engine.transaction() as t:
            t.put(Tree.EXTENTS, (557, 0), Extent(4096, node.addr, 4096, 0).encode())
            # adjust_bucket_usage would refuse (the bucket holds btree nodes): a bug skipped it

    problems = check_image(FaultDevice(damaged_by(healthy, into_btree)))
    assert "bucket-kind" in kinds(problems)
    assert any("both data and btree" in p.message for p in problems if p.kind == "bucket-kind")


@pytest.mark.parametrize("where", ["superblock", "journal", "past the last bucket", "negative"])
def test_an_extent_pointing_outside_the_bucket_area_is_an_address_problem(healthy, where):
    def outside(engine: Engine) -> None:
        sb = engine.sb
        addr = {
            "superblock": 0,
            "journal": sb.journal_offset + 8192,
            "past the last bucket": sb.bucket_start(sb.nbuckets),
            "negative": -(1 << 20),
        }[where]
        with engine.transaction() as t:
            t.put(Tree.EXTENTS, (558, 0), Extent(4096, addr, 4096, 0).encode())

    problems = check_image(FaultDevice(damaged_by(healthy, outside)))
    assert any(p.kind == "address" and "outside the bucket area" in p.message for p in problems), problems


def test_an_extent_crossing_a_bucket_boundary_is_an_address_problem(healthy):
    def crossing(engine: Engine) -> None:
        b = free_bucket_pair(engine)
        addr = engine.sb.bucket_start(b + 1) - 2048
        with engine.transaction() as t:
            t.put(Tree.EXTENTS, (559, 0), Extent(4096, addr, 4096, 0).encode())
            t.adjust_bucket_usage(addr, 4096)

    problems = check_image(FaultDevice(damaged_by(healthy, crossing)))
    assert kinds(problems) == {"address"}
    assert "crosses a bucket boundary" in problems[0].message


def test_a_malformed_logged_op_is_a_logged_op_problem(healthy):
    def malformed(engine: Engine) -> None:
        with engine.transaction() as t:
            t.put(Tree.LOGGED_OPS, (9,), b"\x01")

    damaged = damaged_by(healthy, malformed)
    problems = check_image(FaultDevice(damaged))
    assert kinds(problems) == {"logged-op"}
    assert repr(encode_key((9,))) in problems[0].where


def test_a_malformed_logged_op_still_in_the_journal_is_a_logged_op_problem(healthy):
    dev = FaultDevice(healthy)
    engine = Engine.open(dev)
    with engine.transaction() as t:
        t.put(Tree.LOGGED_OPS, (9,), b"\x01")
    engine.flush()  # crash: the op lives only in an entry to replay
    assert kinds(check_image(FaultDevice(dev.durable_image()))) == {"logged-op"}


def test_an_undecodable_key_is_a_key_problem(healthy):
    def junk(engine: Engine) -> None:
        with engine.transaction() as t:
            t.put_raw(Tree.MISC, b"\x99junk", b"")

    problems = check_image(FaultDevice(damaged_by(healthy, junk)))
    assert kinds(problems) == {"key"}
    assert "misc" in problems[0].where


def test_an_undecodable_extent_value_is_a_value_problem(healthy):
    def junk(engine: Engine) -> None:
        with engine.transaction() as t:
            t.put_raw(Tree.EXTENTS, encode_key((560, 0)), b"\xc1")  # 0xc1: never valid msgpack

    problems = check_image(FaultDevice(damaged_by(healthy, junk)))
    assert kinds(problems) == {"value"}


# -- the journal ---------------------------------------------------------------------------


def crashed_with_entries(healthy: bytes, batches: int = 5) -> tuple[Engine, bytearray]:
    """An image after `batches` commit+flush rounds and a power cut (no close)."""
    dev = FaultDevice(healthy)
    engine = Engine.open(dev)
    for i in range(batches):
        with engine.transaction() as t:
            t.put(Tree.INODES, (5000 + i,), b"entry %d" % i)
        engine.flush()
    return engine, dev.durable_image()


def test_a_damaged_entry_proven_flushed_by_a_later_one_refuses_open_and_asks_for_fsck(healthy):
    engine, image = crashed_with_entries(healthy)
    entries = journal_entries(engine, image)
    checkpoint = max(loc.entry.seq for loc in entries if loc.entry.is_checkpoint)
    after = [loc for loc in entries if loc.entry.seq > checkpoint]
    assert len(after) == 5
    victim = after[1]
    image[engine.sb.journal_offset + victim.offset + victim.length // 2] ^= 0x01

    problems = check_image(FaultDevice(image))
    assert [p.kind for p in problems] == ["open"]
    assert "fsck" in problems[0].message
    with pytest.raises(JournalCorrupt) as info:
        Engine.open(FaultDevice(image))
    assert info.value.errno == errno.EIO
    assert isinstance(info.value, OSError)
    message = str(info.value)
    assert f"entry {victim.entry.seq}" in message and "fsck" in message
    with pytest.raises(JournalCorrupt):
        Engine.open(FaultDevice(image), EngineOptions(read_only=True))


def test_a_damaged_last_entry_is_a_torn_tail_dropped_without_a_problem(healthy):
    engine, image = crashed_with_entries(healthy)
    last = journal_entries(engine, image)[-1]
    assert last.keys() == [(Tree.INODES, encode_key((5004,)), b"entry 4")]
    image[engine.sb.journal_offset + last.offset + last.length - 3] ^= 0x80

    assert check_image(FaultDevice(image)) == []
    dev = FaultDevice(image)
    reopened = Engine.open(dev)
    assert reopened.journal_scan.last_seq == last.entry.seq - 1
    with reopened.transaction() as t:
        assert t.get(Tree.INODES, (5003,)) == b"entry 3"
        assert t.get(Tree.INODES, (5004,)) is None
    reopened.close()
    after = dev.durable_image()
    assert check_image(FaultDevice(after)) == []
    again = Engine.open(FaultDevice(after), EngineOptions(read_only=True))
    assert again.trees[Tree.INODES].get(encode_key((5004,))) is None


def test_a_torn_tail_with_unproven_entries_after_it_is_dropped_with_a_note_and_is_no_problem(healthy):
    dev = FaultDevice(healthy)
    engine = Engine.open(dev)
    with engine.transaction() as t:
        t.put(Tree.INODES, (6000,), b"acknowledged")
    engine.flush()
    for i in range(1, 4):  # one flush writes three entries; none proves the others
        with engine.transaction() as t:
            t.put(Tree.INODES, (6000 + i,), b"lost")
    engine.flush()
    image = dev.durable_image()
    batch = journal_entries(engine, image)[-3:]
    image[engine.sb.journal_offset + batch[0].offset + 20] ^= 0x04

    reopened = Engine.open(FaultDevice(image))
    assert reopened.journal_scan.dropped == [loc.entry.seq for loc in batch[1:]]
    assert any("torn tail" in note for note in reopened.notes)
    with reopened.transaction() as t:
        assert t.get(Tree.INODES, (6000,)) == b"acknowledged"
        assert t.get(Tree.INODES, (6003,)) is None
    # A torn tail is what a crash leaves: a healthy image, not damage.
    assert check_image(FaultDevice(image)) == []


# -- fuzzing --------------------------------------------------------------------------------


def fuzz_base() -> tuple[bytes, list[tuple[int, int]]]:
    """A small crashed image (replay pending) and the byte ranges holding its metadata."""
    dev = FaultDevice(fresh_image(9, 2 << 20))
    engine = Engine.open(dev)
    populate(engine, 9)
    engine.checkpoint()
    sb = engine.sb
    # Mostly the bytes that matter (so most damage is real damage), and once
    # the whole journal region and each whole node slot.
    ranges = [(0, sb.block_size), (sb.backup_offset, sb.size)]
    ranges.append((sb.journal_offset, sb.journal_offset + sb.journal_size))
    for tree_id in NODE_TREES:
        for ptr, _ in node_ptrs(engine, tree_id):
            ranges.append((ptr.addr, ptr.addr + node_length(dev.durable_image(), ptr.addr)))
            ranges.append((ptr.addr, ptr.addr + sb.node_size))
    checkpoints = engine.checkpoints
    for i in range(12):
        with engine.transaction() as t:
            t.put(Tree.INODES, (i,), b"rewritten %d" % i)
            t.delete(Tree.DIRENTS, (1, i * 7919, f"name-{i}"))
            if i % 4 == 0:
                t.put(Tree.LOGGED_OPS, (50 + i,), LoggedOp("rmtree", {"ino": i}).encode())
        if i % 3 == 2:
            engine.flush()
    assert engine.checkpoints == checkpoints, "the nodes found above are the ones replay starts from"
    image = bytes(dev.durable_image())
    ranges += [(sb.journal_offset + loc.offset, sb.journal_offset + loc.offset + loc.length)
               for loc in journal_entries(engine, image)]
    probe = Engine.open(FaultDevice(image), EngineOptions(read_only=True))
    assert probe.replayed_entries > 0 and check_engine(probe) == []
    return image, ranges


def exercise(engine: Engine) -> None:
    """Lookups of every kind on an opened, possibly damaged engine."""
    for tree_id in NODE_TREES:
        try:
            list(engine.trees[tree_id].scan())
        except OSError:
            pass
        try:
            list(engine.trees[tree_id].scan(reverse=True))
        except OSError:
            pass
        for key in ((0,), (7,), (1, 0, "name-0"), ("counter", 5), (101, 0)):
            try:
                engine.trees[tree_id].get(encode_key(key))
            except OSError:
                pass
    try:
        with engine.transaction() as t:
            list(t.scan(Tree.LOGGED_OPS))
            list(t.scan(Tree.INODES, prefix=(3,)))
    except OSError:
        pass
    engine.stats()


def test_random_damage_to_metadata_never_crashes_the_checker_or_open():
    image, ranges = fuzz_base()
    rng = random.Random(0xF0221)
    outcomes = {"opened": 0, "refused": 0, "problems": 0}
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # every damaged node logs an error
    try:
        for iteration in range(300):
            damaged = bytearray(image)
            for _ in range(rng.choice([1, 1, 2, 3])):
                lo, hi = rng.choice(ranges)
                pos = rng.randrange(lo, hi)
                if rng.random() < 0.7:
                    damaged[pos] ^= 1 << rng.randrange(8)
                else:
                    sector = pos - pos % 512
                    damaged[sector : sector + 512] = bytes(512)
            label = f"iteration {iteration}"

            problems = check_image(FaultDevice(damaged))
            assert not [p for p in problems if p.kind == "internal" or "unexpected" in p.message], label
            outcomes["problems"] += bool(problems)

            for options in (EngineOptions(read_only=True), EngineOptions()):
                try:
                    engine = Engine.open(FaultDevice(damaged), options)
                except OSError as exc:
                    assert exc.errno is not None, label
                    outcomes["refused"] += 1
                    continue
                outcomes["opened"] += 1
                exercise(engine)
    finally:
        logging.disable(previous)
    assert outcomes["opened"] > 60 and outcomes["refused"] > 60, outcomes
    assert outcomes["problems"] > 100, outcomes
