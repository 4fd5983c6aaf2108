#!/usr/bin/env python3
"""Crash simulation of the storage engine at every write and flush.

A seeded workload of random multi-key transactions (btree keys, data regions
with their extents and bucket counts, logged-op keys, flushes and
checkpoints) runs on a `FaultDevice`.  Then, for every op index and every
crash mode, the image a power cut would leave is reopened; the engine
checker must find nothing and the visible state must equal the model after
some prefix k of the committed transactions, with k at least the number
acknowledged by the last completed flush (DESIGN.md invariants 1, 4, 6, 7).

The EIO variant fails each write and each flush in turn: the failing call
must raise, the engine must turn read-only, and reopening must lose nothing
that a flush acknowledged.

`make test` runs a short version (tests/test_crash.py); this script runs
longer ones:  python tools/crashsim.py --seeds 20 --transactions 1000
Long filesystem operations (collapse, insert, punch, zero, truncate, rmtree)
cut at every write and flush:  python -m tools.crashsim longops --exhaustive
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import logging
import os
import random
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pyfs.engine.check import check_engine  # noqa: E402
from pyfs.engine.device import SECTOR  # noqa: E402
from pyfs.engine.fault_device import MODES, DeviceOp, FaultDevice  # noqa: E402
from pyfs.engine.engine import Engine, EngineOptions  # noqa: E402
from pyfs.format.records import NODE_TREES, Extent, LoggedOp, Tree  # noqa: E402
from pyfs.format.superblock import Superblock, plan_geometry  # noqa: E402
from pyfs.fs import FileSystem, format_filesystem, logged_ops, longops  # noqa: E402
from tools.common import fsck_device, read_fs_file, walk_fs  # noqa: E402

IMAGE_SIZE = 4 << 20
KEY_TREES = (Tree.INODES, Tree.DIRENTS, Tree.XATTRS, Tree.MISC)


def small_geometry(seed: int, size: int = IMAGE_SIZE):
    return plan_geometry(
        size,
        uuid=random.Random(seed).randbytes(16),
        bucket_size=64 << 10,
        journal_size=256 << 10,
        node_size=4096,
    )


def fresh_image(seed: int, size: int = IMAGE_SIZE, *, filesystem: bool = False) -> bytearray:
    """A freshly formatted engine image (with an empty filesystem on it if asked), closed cleanly."""
    dev = FaultDevice(bytearray(size))
    engine = Engine.format(dev, small_geometry(seed, size))
    if filesystem:
        format_filesystem(engine)
    engine.close()
    return dev.durable_image()


def visible_state(engine: Engine) -> dict[tuple[int, bytes], bytes]:
    """Everything a user of the engine can see, except derived space accounting."""
    state: dict[tuple[int, bytes], bytes] = {}
    for tree in NODE_TREES:
        if tree == Tree.ALLOC:
            continue
        for k, v in engine.trees[tree].scan():
            state[(int(tree), k)] = v
    for k, v in engine.logged_ops.items():
        state[(int(Tree.LOGGED_OPS), k)] = v
    return state


def digest(state: dict[tuple[int, bytes], bytes]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for (tree, k), v in sorted(state.items()):
        h.update(tree.to_bytes(1, "little") + len(k).to_bytes(4, "little") + k + len(v).to_bytes(4, "little") + v)
    return h.digest()


@dataclass
class Run:
    """What a workload run committed and what its flushes acknowledged."""

    digests: list[bytes] = field(default_factory=list)  # digests[k]: state after k transactions
    acks: list[tuple[int, int]] = field(default_factory=list)  # (ops issued when a flush returned, k acknowledged)
    error: OSError | None = None
    error_during: str = ""

    def acked_at(self, op_count: int) -> int:
        acked = 0
        for ops, k in self.acks:
            if ops <= op_count:
                acked = max(acked, k)
        return acked


class Workload:
    """Seeded random transactions against an engine, mirrored in a dict model."""

    def __init__(self, seed: int, transactions: int) -> None:
        self.rng = random.Random(seed)
        self.transactions = transactions
        self.model: dict[tuple[int, bytes], bytes] = {}
        self.extents: dict[tuple[int, int], Extent] = {}

    def run(self, engine: Engine, device: FaultDevice) -> Run:
        run = Run()
        run.digests.append(digest(visible_state(engine)))
        rng = self.rng
        for _ in range(self.transactions):
            kind = rng.random()
            try:
                if kind < 0.55:
                    self._keys(engine)
                elif kind < 0.8:
                    self._write_extent(engine)
                elif kind < 0.9:
                    self._drop_extent(engine)
                else:
                    self._logged_op(engine)
            except OSError as exc:
                run.error, run.error_during = exc, "transaction"
                # The failed call may or may not have committed: both are valid prefixes.
                run.digests.append(digest(visible_state(engine)))
                return run
            run.digests.append(digest(visible_state(engine)))
            try:
                roll = rng.random()
                if roll < 0.12:
                    engine.flush()
                    run.acks.append((len(device.ops), len(run.digests) - 1))
                elif roll < 0.14:
                    engine.checkpoint()
            except OSError as exc:
                run.error, run.error_during = exc, "flush"
                return run
        return run

    def _keys(self, engine: Engine) -> None:
        rng = self.rng
        with engine.transaction() as t:
            for _ in range(rng.randint(1, 6)):
                tree = rng.choice(KEY_TREES)
                key = (rng.randint(0, 400), rng.choice(["a", "bb", "name-" + "x" * rng.randint(0, 40)]))
                if rng.random() < 0.3:
                    t.delete(tree, key)
                else:
                    t.put(tree, key, rng.randbytes(rng.randint(0, 300)))

    def _write_extent(self, engine: Engine) -> None:
        rng = self.rng
        length = rng.choice([512, 4096, 12288, 65536, rng.randint(1, 65536)])
        data = rng.randbytes(length)
        addr = engine.allocate_data(length)
        csum = engine.write_data(addr, data)
        key = (rng.randint(1, 30), rng.randint(0, 20) * 65536)
        ext = Extent(length=length, region_addr=addr, region_len=length, region_csum=csum, offset=0)
        with engine.transaction() as t:
            old = t.get(Tree.EXTENTS, key)
            if old is not None:
                prev = Extent.decode(old)
                if prev.inline is None:
                    t.adjust_bucket_usage(prev.addr, -prev.length)
            t.put(Tree.EXTENTS, key, ext.encode())
            t.adjust_bucket_usage(addr, length)

    def _drop_extent(self, engine: Engine) -> None:
        with engine.transaction() as t:
            found = list(t.scan(Tree.EXTENTS))
            if not found:
                return
            key, raw = self.rng.choice(found)
            ext = Extent.decode(raw)
            t.delete(Tree.EXTENTS, key)
            t.adjust_bucket_usage(ext.addr, -ext.length)

    def _logged_op(self, engine: Engine) -> None:
        rng = self.rng
        with engine.transaction() as t:
            key = (rng.randint(0, 5),)
            if rng.random() < 0.4:
                t.delete(Tree.LOGGED_OPS, key)
            else:
                op = LoggedOp("truncate", {"ino": rng.randint(1, 99)}, rng.randint(0, 1 << 30))
                t.put(Tree.LOGGED_OPS, key, op.encode())
            t.put(Tree.MISC, ("op-progress", key[0]), rng.randbytes(8))


def verify_reopened(image: bytearray, run: Run, op_count: int, label: str, reopen_twice: bool = False) -> list[str]:
    """Reopen a crash image; return the list of violations (empty if fine)."""
    dev = FaultDevice(image)
    try:
        engine = Engine.open(dev)
    except Exception as exc:  # noqa: BLE001 - any failure to mount is a violation here
        return [f"{label}: reopen failed: {exc!r}"]
    errors = [f"{label}: checker: {p}" for p in check_engine(engine)]
    state = visible_state(engine)
    d = digest(state)
    acked = run.acked_at(op_count)
    matches = [k for k, dk in enumerate(run.digests) if dk == d]
    if not matches:
        errors.append(f"{label}: state matches no prefix of the committed transactions")
    elif max(matches) < acked:
        errors.append(f"{label}: state is prefix {max(matches)} but {acked} were acknowledged")
    for (tree, k), v in state.items():
        if tree == Tree.EXTENTS:
            ext = Extent.decode(v)
            try:
                engine.read_data(ext.region_addr, ext.region_len, ext.region_csum)
            except OSError as exc:
                errors.append(f"{label}: extent data unreadable: {exc}")
    if reopen_twice and not errors:
        engine.close()
        again = Engine.open(FaultDevice(dev.durable_image()), EngineOptions(read_only=True))
        if digest(visible_state(again)) != d:
            errors.append(f"{label}: state changed across a clean close and reopen")
        if again.replayed_entries:
            errors.append(f"{label}: reopen after clean close replayed {again.replayed_entries} entries")
    return errors


def explore_power_cuts(seed: int, transactions: int, max_errors: int = 5) -> tuple[int, list[str]]:
    """Cut power at every op in every mode; returns (images checked, violations)."""
    base = fresh_image(seed)
    dev = FaultDevice(base)
    engine = Engine.open(dev)
    run = Workload(seed, transactions).run(engine, dev)
    if run.error is not None:
        return 0, [f"seed {seed}: workload failed without injected faults: {run.error!r}"]
    engine.close()
    return check_images(
        dev.crash_images(MODES, random.Random(seed ^ 0x5EED)),
        lambda op_count, mode, image: verify_reopened(
            image, run, op_count, f"seed {seed} cut at op {op_count} ({mode})", reopen_twice=(op_count % 25 == 0)),
        max_errors)


def check_images(images: Iterable[tuple[int, str, bytearray]], verify: Callable[[int, str, bytearray], list[str]],
                 max_errors: int) -> tuple[int, list[str]]:
    """`verify(op count, mode, image)` of each crash image in turn, until `max_errors` violations;
    returns (images checked, violations)."""
    errors: list[str] = []
    checked = 0
    for count, mode, image in images:
        checked += 1
        errors += verify(count, mode, image)
        if len(errors) >= max_errors:
            break
    return checked, errors


def explore_io_errors(seed: int, transactions: int, max_errors: int = 5) -> tuple[int, list[str]]:
    """Fail each write and each flush in turn; returns (runs, violations)."""
    base = fresh_image(seed)
    probe = FaultDevice(bytearray(base))
    engine = Engine.open(probe)
    Workload(seed, transactions).run(engine, probe)
    engine.close()
    writes, flushes = probe.write_count, probe.flush_count
    errors: list[str] = []
    runs = 0
    faults = [("write", i) for i in range(writes)] + [("flush", i) for i in range(flushes)]
    for what, index in faults:
        runs += 1
        kwargs = {"fail_write_at": index} if what == "write" else {"fail_flush_at": index}
        dev = FaultDevice(bytearray(base), **kwargs)
        engine = Engine.open(dev)
        run = Workload(seed, transactions).run(engine, dev)
        label = f"seed {seed} EIO at {what} {index}"
        if run.error is None:
            if dev.write_count > index if what == "write" else dev.flush_count > index:
                errors.append(f"{label}: the failure was never reported to a caller")
            continue
        if run.error.errno not in (errno.EIO, errno.EROFS):
            errors.append(f"{label}: failed with {run.error!r}, expected EIO")
        try:
            with engine.transaction() as t:
                t.put(Tree.MISC, ("after-error",), b"x")
            errors.append(f"{label}: engine still accepts transactions after an I/O error")
        except OSError as exc:
            if exc.errno != errno.EROFS:
                errors.append(f"{label}: commit after error gave {exc!r}, expected EROFS")
        try:
            engine.flush()
            errors.append(f"{label}: flush after an I/O error claimed success")
        except OSError:
            pass
        for mode in ("drop_all", "keep_all"):
            image = dev.crash_image(len(dev.ops), mode, random.Random(index))
            errors += verify_reopened(image, run, len(dev.ops), f"{label} reopened ({mode})")
        if len(errors) >= max_errors:
            break
    return runs, errors


def workload_device(seed: int, transactions: int) -> tuple[FaultDevice, Run, Superblock]:
    """A workload run on a fresh image, closed cleanly: its recording device, run and superblock."""
    dev = FaultDevice(fresh_image(seed))
    engine = Engine.open(dev)
    run = Workload(seed, transactions).run(engine, dev)
    if run.error is not None:
        raise RuntimeError(f"seed {seed}: workload failed without injected faults: {run.error!r}")
    engine.close()
    return dev, run, engine.sb


def pending_after_flush(dev: FaultDevice, op_count: int) -> list[DeviceOp]:
    """The writes among the first `op_count` ops that no flush has covered yet."""
    ops = dev.ops[:op_count]
    last_flush = max((i for i, op in enumerate(ops) if op.kind == "flush"), default=-1)
    return [op for op in ops[last_flush + 1 :] if op.kind == "write"]


def with_writes(dev: FaultDevice, op_count: int, writes: Iterable[tuple[DeviceOp, int]]) -> bytearray:
    """The durable image after `op_count` ops, plus the leading bytes given of some pending writes."""
    image = dev.crash_image(op_count, "drop_all", random.Random(0))
    for op, length in writes:
        image[op.offset : op.offset + length] = op.data[:length]
    return image


def sector_prefixes(op: DeviceOp) -> list[int]:
    """Every length a torn `op` can land with: whole sectors, short of the whole write."""
    return list(range(0, len(op.data), SECTOR))


def lost_data_images(dev: FaultDevice, sb: Superblock, rng: random.Random) -> Iterator[tuple[int, str, bytearray]]:
    """Crash images where a flush's journal writes landed but data written with them did not:
    all of the data dropped, the last data write torn, or a random part of it dropped."""
    for op_count in range(1, len(dev.ops) + 1):
        if dev.ops[op_count - 1].kind != "write":
            continue
        pending = pending_after_flush(dev, op_count)
        data = [op for op in pending if op.offset >= sb.bucket_offset]
        journal = [op for op in pending if op.offset < sb.bucket_offset]
        if not data or not journal:
            continue
        whole = [(op, len(op.data)) for op in journal]
        yield op_count, "data dropped", with_writes(dev, op_count, whole)
        last = data[-1]
        kept = [(op, len(op.data)) for op in data[:-1]]
        yield op_count, "data torn", with_writes(dev, op_count, whole + kept + [(last, rng.choice(sector_prefixes(last)))])
        some = [(op, len(op.data)) for op in data if rng.random() < 0.5]
        yield op_count, "some data dropped", with_writes(dev, op_count, whole + some)


def explore_lost_data(seed: int, transactions: int, max_errors: int = 5) -> tuple[int, list[str]]:
    """One flush per fsync (invariant 4): data lost or torn while the entries that name it landed;
    returns (images checked, violations)."""
    dev, run, sb = workload_device(seed, transactions)
    return check_images(
        lost_data_images(dev, sb, random.Random(seed ^ 0xDA7A)),
        lambda op_count, mode, image: verify_reopened(image, run, op_count, f"seed {seed} cut at op {op_count} ({mode})"),
        max_errors)


def torn_slot_images(dev: FaultDevice, sb: Superblock) -> Iterator[tuple[int, str, bytearray]]:
    """Power cut during every checkpoint-slot write: each sector prefix of it lands (the entries
    before it are durable), then again with the other slot lost too (a region scan)."""
    for index, op in enumerate(dev.ops):
        if op.kind != "write" or op.offset not in sb.slot_offsets:
            continue
        before = [(w, len(w.data)) for w in pending_after_flush(dev, index)]
        for length in sector_prefixes(op):
            yield index + 1, f"slot torn at byte {length}", with_writes(dev, index + 1, before + [(op, length)])
        other = sb.slot_offsets[1 - sb.slot_offsets.index(op.offset)]
        image = with_writes(dev, index + 1, before + [(op, SECTOR)])
        image[other : other + sb.block_size] = bytes(sb.block_size)
        yield index + 1, "slot torn, other slot lost", image


def explore_slot_tears(seed: int, transactions: int, max_errors: int = 5) -> tuple[int, list[str]]:
    """Torn checkpoint-slot writes (format v2); returns (images checked, violations)."""
    dev, run, sb = workload_device(seed, transactions)
    return check_images(
        torn_slot_images(dev, sb),
        lambda op_count, mode, image: verify_reopened(image, run, op_count, f"seed {seed} at op {op_count} ({mode})"),
        max_errors)


def report(line: str, errors: list[str]) -> bool:
    """Print a summary line and the violations under it; whether there were any."""
    print(line, flush=True)
    for e in errors:
        print("  " + e)
    return bool(errors)


def main(argv: list[str] | None = None) -> int:
    logging.disable(logging.CRITICAL)  # injected faults log an error each; the summary is what counts
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["longops"]:
        return longops_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds to explore (default 5)")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--transactions", type=int, default=400, help="transactions per workload (default 400)")
    parser.add_argument("--no-eio", action="store_true", help="skip the EIO exploration")
    args = parser.parse_args(argv)
    failures = 0
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        t0 = time.monotonic()
        checked, errors = explore_power_cuts(seed, args.transactions)
        line = f"seed {seed}: {checked} power-cut images"
        for what, explore in (("lost-data", explore_lost_data), ("torn-slot", explore_slot_tears)):
            more, more_errors = explore(seed, args.transactions)
            errors += more_errors
            line += f", {more} {what} images"
        if not args.no_eio:
            runs, eio_errors = explore_io_errors(seed, max(20, args.transactions // 4))
            errors += eio_errors
            line += f", {runs} EIO runs"
        failures += report(f"{line}, {len(errors)} violations, {time.monotonic() - t0:.1f} s", errors)
    print(f"{args.seeds - failures} passed, {failures} failed")
    return 1 if failures else 0


# -- long operations (issue #5): collapse, insert, punch, zero, truncate, rmtree ----------------
#
# `python -m tools.crashsim longops [--exhaustive]`.  A file of thousands of
# extents (or a tree of hundreds of inodes) sits on an image whose 256 KiB
# journal checkpoints while the operation runs.  The operation runs once on a
# recording FaultDevice; then power is cut at its writes and flushes (every
# one with --exhaustive, in every crash mode) and each image is mounted, which
# must finish the operation: the tree a walk from the root sees equals the
# model before the operation (allowed only if the crash came before its start
# was durable) or the model after it, never anything else; no logged op is
# left and the engine checker finds nothing (DESIGN.md invariant 7).  Then
# images cut mid-operation are mounted over a FaultDevice and power is cut at
# every write and flush of that mount's recovery: the mount after must still
# give the state after the operation.

LONGOP_KINDS = ("collapse", "insert", "punch", "zero", "truncate", "rmtree")
ROOT_INO = 1
BLOCK = 4096
Snapshot = dict[tuple[bytes, ...], tuple]


@dataclass(frozen=True)
class LongOpScenario:
    """One long operation on one freshly built image."""

    kind: str
    extents: int = 3000         # extents of the file (rmtree: of all files in the tree together)
    step: int = 256             # logged_ops.STEP_EXTENTS while the operation runs and at every mount
    image_size: int = 20 << 20  # each small write takes a 4 KiB block: 3000 extents need 12 MiB
    checkpoint_fill: float = 0.05  # of the 256 KiB journal: several checkpoints while the operation runs
    seed: int = 1

    @property
    def options(self) -> EngineOptions:
        return EngineOptions(checkpoint_fill=self.checkpoint_fill)


@dataclass
class LongOpRun:
    """The operation run once without faults, and what every crash image must show."""

    scenario: LongOpScenario
    base: bytes             # the durable image before the operation (closed cleanly)
    before: Snapshot        # the tree before the operation
    after: Snapshot         # the tree the model says the operation leaves
    device: FaultDevice     # the recording device of the run: operation, then a clean close
    durable_from: int       # op count from which the operation's start is durable
    op_end: int             # op count when the operation returned (before the close)
    checkpoints: int        # checkpoints the engine wrote while the operation ran
    problems: list[str] = field(default_factory=list)  # the fault-free run against the model


@contextlib.contextmanager
def step_extents(n: int) -> Iterator[None]:
    """Set `logged_ops.STEP_EXTENTS` for the duration of a block."""
    old = logged_ops.STEP_EXTENTS
    logged_ops.STEP_EXTENTS = n
    try:
        yield
    finally:
        logged_ops.STEP_EXTENTS = old


def _digest_bytes(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def fs_snapshot(fs: FileSystem) -> Snapshot:
    """Every path a walk from the root finds: inode, mode, owner, links, size, content and xattr digests."""

    def describe(attr) -> tuple:
        kind = stat.S_IFMT(attr.mode)
        h = hashlib.blake2b(digest_size=16)
        if kind == stat.S_IFREG:
            for piece in read_fs_file(fs, attr.ino, attr.size):
                h.update(piece)
        elif kind == stat.S_IFLNK:
            h.update(fs.readlink(attr.ino))
        xattrs = tuple(sorted((name, _digest_bytes(fs.getxattr(attr.ino, name))) for name in fs.listxattr(attr.ino)))
        size = 0 if kind == stat.S_IFDIR else attr.size
        return (attr.ino, attr.mode, attr.uid, attr.gid, attr.nlink, size, h.digest(), attr.rdev, xattrs)

    out: Snapshot = {(): describe(fs.getattr(ROOT_INO))}
    for path, attr in walk_fs(fs):
        out[path] = describe(attr)
    return out


def snapshot_difference(expected: Snapshot, actual: Snapshot) -> str:
    """The first path where two snapshots differ, for a message."""
    for path in sorted(set(expected) | set(actual)):
        if expected.get(path) != actual.get(path):
            return f"{b'/'.join(path)!r}: expected {expected.get(path)}, found {actual.get(path)}"
    return ""


def _new_file(fs: FileSystem, parent: int, name: bytes, pieces: list[tuple[int, bytes]]) -> tuple[int, bytes]:
    """A closed, forgotten file written piece by piece; returns (ino, content)."""
    fh, attr = fs.create(parent, name, 0o644, os.O_RDWR)
    content = bytearray()
    for offset, data in pieces:
        fs.write(fh, offset, data)
        if offset > len(content):
            content.extend(bytes(offset - len(content)))
        content[offset : offset + len(data)] = data
    fs.release(fh)
    fs.forget(attr.ino)
    return attr.ino, bytes(content)


def fragmented_pieces(rng: random.Random, extents: int, start: int = 0) -> list[tuple[int, bytes]]:
    """`extents` small writes, one per 4 KiB cell at a random place inside it: one extent each, holes between."""
    pieces = []
    for i in range(extents):
        offset = start + i * BLOCK + rng.randrange(0, 3000)
        pieces.append((offset, rng.randbytes(rng.randint(20, 1000))))
    return pieces


def _mkdir(fs: FileSystem, parent: int, name: bytes, mode: int = 0o755) -> int:
    attr = fs.mkdir(parent, name, mode)
    fs.forget(attr.ino)
    return attr.ino


def _lookup(fs: FileSystem, parent: int, *names: bytes) -> int:
    """The inode at `parent`/names..., each lookup forgotten again."""
    for name in names:
        parent = fs.lookup(parent, name).ino
        fs.forget(parent)
    return parent


def _file_op_args(kind: str, size: int, extents: int) -> tuple:
    """The arguments of the file operation `kind` for a fragmented file of `size` bytes."""
    tenth = BLOCK * max(1, extents // 10)
    if kind == "collapse":
        return (tenth, BLOCK * max(1, extents // 20))
    if kind == "insert":
        return (tenth, BLOCK * 37)
    if kind == "punch":
        return (tenth + 123, size // 2, True)
    if kind == "zero":
        return (5000, size, False)  # past EOF without keep_size: the file grows
    if kind == "truncate":
        return (tenth + 77,)
    raise ValueError(kind)


def file_op_model(kind: str, data: bytes, args: tuple) -> bytes:
    """The content a file operation leaves (the Linux fallocate semantics pyfs promises)."""
    if kind == "collapse":
        off, length = args
        return data[:off] + data[off + length :]
    if kind == "insert":
        off, length = args
        return data[:off] + bytes(length) + data[off:]
    if kind in ("punch", "zero"):
        off, length, keep_size = args
        size = len(data) if keep_size else max(len(data), off + length)
        out = bytearray(data[:size]) + bytes(max(0, size - len(data)))
        end = min(off + length, size)
        if off < end:
            out[off:end] = bytes(end - off)
        return bytes(out)
    if kind == "truncate":
        (size,) = args
        return data[:size] + bytes(max(0, size - len(data)))
    raise ValueError(kind)


def run_file_op(fs: FileSystem, kind: str, ino: int, args: tuple) -> None:
    if kind in ("collapse", "insert"):
        getattr(fs, kind)(ino, *args, label="f")
    elif kind in ("punch", "zero"):
        off, length, keep_size = args
        getattr(fs, kind)(ino, off, length, keep_size=keep_size, label="f")
    elif kind == "truncate":
        fs.setattr(ino, size=args[0])
    else:
        raise ValueError(kind)


def build_tree(fs: FileSystem, rng: random.Random, parent: int, extents: int) -> dict:
    """/t: 8 directories of files (inline, one region, fragmented), symlinks, fifos, xattrs,
    an empty directory, a 50-level chain, hard links inside the tree and one to /outside.
    Returns {"outside_links": names of /outside inside /t}."""
    t = _mkdir(fs, parent, b"t")
    fs.setxattr(t, b"user.tree", rng.randbytes(3000))
    per_file = max(1, extents // 80)
    for d in range(8):
        sub = _mkdir(fs, t, b"d%d" % d, 0o750 + d % 2 * 0o005)
        fs.setxattr(sub, b"user.d", b"%d" % d)
        _new_file(fs, sub, b"inline", [(0, rng.randbytes(200))])
        _new_file(fs, sub, b"region", [(0, rng.randbytes(9000))])
        for f in range(10):
            ino, _ = _new_file(fs, sub, b"frag%d" % f, fragmented_pieces(rng, per_file))
            if f == 0:
                fs.setxattr(ino, b"user.big", rng.randbytes(5000))
        fs.forget(fs.symlink(sub, b"link", b"../d0/region").ino)
        fs.forget(fs.mknod(sub, b"fifo", stat.S_IFIFO | 0o644).ino)
        _mkdir(fs, sub, b"empty")
    # Hard links: /outside and /t/d0/region are one file; /t/d1/region is also /t/d2/hl.
    fs.forget(fs.link(_lookup(fs, t, b"d0", b"region"), parent, b"outside").ino)
    fs.forget(fs.link(_lookup(fs, t, b"d1", b"region"), _lookup(fs, t, b"d2"), b"hl").ino)
    deep = _mkdir(fs, t, b"deep")
    for level in range(50):
        deep = _mkdir(fs, deep, b"l%d" % level)
        if level % 10 == 9:
            _new_file(fs, deep, b"f", [(0, rng.randbytes(3000))])
    return {"outside_links": 1}


def rmtree_model(before: Snapshot, name: bytes = b"t") -> Snapshot:
    """The tree after `rmtree(root, name)`: everything under it gone, links from outside one less."""
    gone = {p: v for p, v in before.items() if p[:1] == (name,)}
    after = {p: v for p, v in before.items() if p[:1] != (name,)}
    gone_inos = [v[0] for v in gone.values()]
    for path, v in after.items():
        if path == ():
            after[path] = v[:4] + (v[4] - 1,) + v[5:]  # one subdirectory less
        elif not stat.S_ISDIR(v[1]) and v[0] in gone_inos:
            after[path] = v[:4] + (v[4] - gone_inos.count(v[0]),) + v[5:]
    return after


_LONGOP_BASES: dict[LongOpScenario, tuple[bytes, Snapshot, Snapshot, tuple]] = {}


def longop_base(sc: LongOpScenario) -> tuple[bytes, Snapshot, Snapshot, tuple]:
    """(durable image before the operation, snapshot before, model after, what to run) for a scenario."""
    if sc in _LONGOP_BASES:
        return _LONGOP_BASES[sc]
    rng = random.Random(sc.seed)
    fs = FileSystem.mount(FaultDevice(fresh_image(sc.seed, sc.image_size, filesystem=True)), sc.options)
    _new_file(fs, ROOT_INO, b"keep", [(0, rng.randbytes(5000)), (70_000, rng.randbytes(3000))])
    if sc.kind == "rmtree":
        build_tree(fs, rng, ROOT_INO, sc.extents)
        before = fs_snapshot(fs)
        after = rmtree_model(before)
        what: tuple = ("rmtree",)
    else:
        ino, content = _new_file(fs, ROOT_INO, b"f", fragmented_pieces(rng, sc.extents))
        args = _file_op_args(sc.kind, len(content), sc.extents)
        before = fs_snapshot(fs)
        expected = file_op_model(sc.kind, content, args)
        after = dict(before)
        entry = before[(b"f",)]
        after[(b"f",)] = entry[:5] + (len(expected), _digest_bytes(expected)) + entry[7:]
        what = (sc.kind, ino, args)
    fs.close()
    result = (bytes(fs.engine.device.durable_image()), before, after, what)
    _LONGOP_BASES[sc] = result
    return result


def _run_op(fs: FileSystem, what: tuple) -> None:
    if what[0] == "rmtree":
        fs.rmtree(ROOT_INO, b"t", label="t")
    else:
        kind, ino, args = what
        run_file_op(fs, kind, ino, args)


def run_longop(sc: LongOpScenario) -> LongOpRun:
    """Run the scenario's operation once on a recording device, then close cleanly."""
    base, before, after, what = longop_base(sc)
    dev = FaultDevice(bytearray(base))
    with step_extents(sc.step):
        fs = FileSystem.mount(dev, sc.options)
        starts: list[int] = []
        original = fs.engine._commit

        def commit(updates):
            seq = original(updates)
            if not starts and any(tree == Tree.LOGGED_OPS and v is not None for tree, _, v in updates):
                starts.append(len(dev.ops))
            return seq

        fs.engine._commit = commit
        checkpoints = fs.engine.checkpoints
        _run_op(fs, what)
        checkpoints = fs.engine.checkpoints - checkpoints
        op_end = len(dev.ops)
        del fs.engine._commit
        problems = []
        if fs.engine.logged_ops or fs.long_ops():
            problems.append(f"logged ops left after the call returned: {fs.long_ops()}")
        got = fs_snapshot(fs)
        if got != after:
            problems.append(f"the operation without faults differs from the model: {snapshot_difference(after, got)}")
        problems += [f"checker after the operation: {p}" for p in check_engine(fs.engine)]
        fs.close()
    if not starts:
        problems.append("the operation never recorded a logged op")
        durable_from = op_end
    else:
        flushes = [i for i in range(starts[0], len(dev.ops)) if dev.ops[i].kind == "flush"]
        durable_from = flushes[0] + 1 if flushes else len(dev.ops) + 1
    return LongOpRun(sc, base, before, after, dev, durable_from, op_end, checkpoints, problems)


def verify_longop_image(run: LongOpRun, image: bytearray, must_finish: bool, label: str) -> list[str]:
    """Mount a crash image: the state must be before (only if allowed) or after the operation."""
    sc = run.scenario
    with step_extents(sc.step):
        try:
            fs = FileSystem.mount(FaultDevice(image), sc.options)
        except Exception as exc:  # noqa: BLE001 - any failure to mount is a violation here
            return [f"{label}: mount failed: {exc!r}"]
        errors = []
        if fs.engine.logged_ops:
            errors.append(f"{label}: logged ops left after mount: {longops.pending(fs.engine)}")
        try:
            got = fs_snapshot(fs)
        except Exception as exc:  # noqa: BLE001
            return errors + [f"{label}: walking the tree failed: {exc!r}"]
        if got == run.before:
            if must_finish:
                errors.append(f"{label}: the operation was lost although its start was durable")
        elif got != run.after:
            errors.append(f"{label}: neither before nor after the operation: {snapshot_difference(run.after, got)}")
        errors += [f"{label}: checker: {p}" for p in check_engine(fs.engine)]
    return errors


def pending_writes(dev: FaultDevice, op_count: int) -> int:
    """Writes among the first `op_count` ops issued after the last flush among them."""
    n = 0
    for op in reversed(dev.ops[:op_count]):
        if op.kind == "flush":
            break
        n += 1
    return n


def crash_points(dev: FaultDevice, counts: Iterable[int], modes: tuple[str, ...]) -> list[tuple[int, str]]:
    """(op count, mode) pairs, without modes that equal drop_all because nothing is pending."""
    out = []
    for count in counts:
        for mode in modes:
            if mode != modes[0] and pending_writes(dev, count) == 0:
                continue
            out.append((count, mode))
    return out


def cut_images(dev: FaultDevice, counts: Iterable[int], modes: tuple[str, ...],
               rng: random.Random) -> Iterator[tuple[int, str, bytearray]]:
    """(op count, mode, crash image) at each of `crash_points`, built one at a time."""
    for count, mode in crash_points(dev, counts, modes):
        yield count, mode, dev.crash_image(count, mode, rng)


def pending_ops_of(image: bytearray) -> list[tuple[str, int]]:
    """The logged ops a mount of `image` would finish (read-only open, nothing written)."""
    engine = Engine.open(FaultDevice(image), EngineOptions(read_only=True))
    return longops.pending(engine)


def fsck_problems(image: bytes | bytearray) -> list[str]:
    """`fsck -n -f` of an image (nothing written): one line per problem, empty when clean."""
    result, _ = fsck_device(FaultDevice(bytearray(image)), force=True)
    return [f.line() for f in result.findings]


def explore_longop(run: LongOpRun, counts: Iterable[int], modes: tuple[str, ...] = MODES,
                   seed: int = 0, max_errors: int = 5) -> tuple[int, list[str]]:
    """Cut power after each of `counts` ops in each mode; returns (images checked, violations)."""
    return check_images(
        cut_images(run.device, counts, modes, random.Random(seed)),
        lambda count, mode, image: verify_longop_image(run, image, count >= run.durable_from,
                                                       f"{run.scenario.kind}: cut at op {count} ({mode})"),
        max_errors)


def mid_op_images(run: LongOpRun, wanted: int, seed: int = 0) -> list[tuple[int, bytearray]]:
    """Up to `wanted` drop_all crash images, spread over the operation, that hold an unfinished logged op."""
    rng = random.Random(seed)
    span = range(run.durable_from, run.op_end + 1)
    if not span:
        return []
    candidates = sorted({span[int(i * (len(span) - 1) / max(1, wanted * 3 - 1))] for i in range(wanted * 3)})
    found = []
    for count in candidates:
        image = run.device.crash_image(count, "drop_all", rng)
        if pending_ops_of(bytearray(image)):
            found.append((count, image))
    if len(found) > wanted:
        found = [found[int(i * (len(found) - 1) / max(1, wanted - 1))] for i in range(wanted)]
    return found


def explore_recovery(run: LongOpRun, image: bytearray, label: str, sample: int | None,
                     modes: tuple[str, ...] = MODES, seed: int = 0, max_errors: int = 5) -> tuple[int, list[str]]:
    """Mount a mid-operation image over a recording device, then cut power at every
    write and flush of that mount's recovery (and close): the next mount must finish."""
    sc = run.scenario
    rec = FaultDevice(bytearray(image))
    with step_extents(sc.step):
        fs = FileSystem.mount(rec, sc.options)
        fs.close()
    counts: Iterable[int] = range(len(rec.ops) + 1)
    if sample is not None and sample < len(rec.ops) + 1:
        counts = sorted(random.Random(seed).sample(range(len(rec.ops) + 1), sample))
    return check_images(
        cut_images(rec, counts, modes, random.Random(seed ^ 0x5EED)),
        lambda count, mode, image: verify_longop_image(
            run, image, True, f"{label}, recovery cut at op {count}/{len(rec.ops)} ({mode})"),
        max_errors)


def longops_main(argv: list[str]) -> int:
    """`crashsim longops`: power cuts during long operations and during their recovery at mount."""
    parser = argparse.ArgumentParser(prog="crashsim longops", description=longops_main.__doc__)
    parser.add_argument("--exhaustive", action="store_true",
                        help="every write and flush in every mode (default: --sample points)")
    parser.add_argument("--kinds", default=",".join(LONGOP_KINDS), help="comma-separated operations")
    parser.add_argument("--extents", type=int, default=3000, help="extents of the file or tree (default 3000)")
    parser.add_argument("--step", type=int, default=None,
                        help="logged_ops.STEP_EXTENTS (default 256; rmtree 32, as its tree has a few hundred inodes)")
    parser.add_argument("--checkpoint-fill", type=float, default=0.05,
                        help="journal fill that triggers a checkpoint (default 0.05: several per operation)")
    parser.add_argument("--sample", type=int, default=60, help="crash points per operation without --exhaustive")
    parser.add_argument("--recovery-images", type=int, default=2,
                        help="mid-operation images whose recovery is cut in turn (default 2)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    failures = 0
    kinds = [k for k in args.kinds.split(",") if k]
    for kind in kinds:
        if kind not in LONGOP_KINDS:
            parser.error(f"unknown operation {kind!r}; expected some of {','.join(LONGOP_KINDS)}")
    total_start = time.monotonic()
    for kind in kinds:
        t0 = time.monotonic()
        step = args.step if args.step is not None else 32 if kind == "rmtree" else 256
        sc = LongOpScenario(kind, extents=args.extents, step=step, checkpoint_fill=args.checkpoint_fill,
                            seed=args.seed)
        run = run_longop(sc)
        errors = list(run.problems)
        ops = len(run.device.ops)
        if args.exhaustive:
            counts: Iterable[int] = range(ops + 1)
        else:
            counts = sorted(random.Random(args.seed).sample(range(ops + 1), min(args.sample, ops + 1)))
        checked, found = explore_longop(run, counts, seed=args.seed)
        errors += found
        rec_checked = 0
        mids = mid_op_images(run, args.recovery_images, seed=args.seed)
        for count, image in mids:
            n, found = explore_recovery(run, image, f"{kind}: cut at op {count}",
                                        None if args.exhaustive else args.sample, seed=args.seed)
            rec_checked += n
            errors += found
        failures += report(f"{kind}: {args.extents} extents, step {step}, {ops} device ops (start durable at op "
                           f"{run.durable_from}, {run.checkpoints} checkpoints during the operation), {checked} "
                           f"crash images, {rec_checked} recovery crash images from {len(mids)} mid-operation "
                           f"images, {len(errors)} violations, {time.monotonic() - t0:.1f} s", errors)
    print(f"{len(kinds) - failures} passed, {failures} failed, {time.monotonic() - total_start:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
