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
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import logging
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass, field

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pyfs.check import check_engine  # noqa: E402
from pyfs.device import MODES, FaultDevice  # noqa: E402
from pyfs.engine import Engine, EngineOptions  # noqa: E402
from pyfs.format.records import NODE_TREES, Extent, LoggedOp, Tree  # noqa: E402
from pyfs.format.superblock import plan_geometry  # noqa: E402

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


def fresh_image(seed: int, size: int = IMAGE_SIZE) -> bytearray:
    dev = FaultDevice(bytearray(size))
    Engine.format(dev, small_geometry(seed, size)).close()
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
    rng = random.Random(seed ^ 0x5EED)
    errors: list[str] = []
    checked = 0
    for op_count, mode, image in dev.crash_images(MODES, rng):
        checked += 1
        errors += verify_reopened(image, run, op_count, f"seed {seed} cut at op {op_count} ({mode})",
                                  reopen_twice=(op_count % 25 == 0))
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
        ops_at_start = len(dev.ops)
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
        del ops_at_start
        for mode in ("drop_all", "keep_all"):
            image = dev.crash_image(len(dev.ops), mode, random.Random(index))
            errors += verify_reopened(image, run, len(dev.ops), f"{label} reopened ({mode})")
        if len(errors) >= max_errors:
            break
    return runs, errors


def main(argv: list[str] | None = None) -> int:
    logging.disable(logging.CRITICAL)  # injected faults log an error each; the summary is what counts
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
        if not args.no_eio:
            runs, eio_errors = explore_io_errors(seed, max(20, args.transactions // 4))
            errors += eio_errors
            line += f", {runs} EIO runs"
        print(f"{line}, {len(errors)} violations, {time.monotonic() - t0:.1f} s", flush=True)
        for e in errors:
            print("  " + e)
        failures += bool(errors)
    print(f"{args.seeds - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
