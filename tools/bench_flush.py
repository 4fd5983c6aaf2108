#!/usr/bin/env python3
"""Measure fsync cost on a real image file: one flush per fsync, and group commit of concurrent fsyncs.

Each writer is a trio task that, --fsyncs times, writes a 4 KiB data
region, commits a transaction naming it, and waits for durability with
`Engine.flush_async` (what an fsync through the mount does).  Cases:

  v1-serial-1   format v1 (data flushed, then the entry: two device flushes), 1 writer
  v2-serial-1   format v2 (data and entry under one flush), 1 writer
  v2-group-4    format v2, 4 writers at once: fsyncs that arrive during a flush share the next
  v2-nogroup-4  format v2, 4 writers, each fsync flushed on its own (`Engine.flush`, no sharing)

For each: fsyncs per second, device flushes per fsync, mean fsync latency.
Every case checks that all its keys are back after a crash image
(the device closed without a checkpoint) is reopened.

    python tools/bench_flush.py                # 200 fsyncs per writer
    python tools/bench_flush.py --fsyncs 50 --json
    python tools/bench_flush.py --flush-ms 2     # as on a disk whose flush takes 2 ms more

Exit codes: 0 every case ran and checked, 1 a check failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyfs.engine.device import FileDevice  # noqa: E402
from pyfs.engine.engine import Engine  # noqa: E402
from pyfs.format.records import Tree  # noqa: E402
from pyfs.format.superblock import plan_geometry  # noqa: E402
from tools.common import default_workdir_parent, scratch_dir, sparse_file, table_lines  # noqa: E402

IMAGE_SIZE = 256 << 20


class CountingDevice:
    """A device that counts its flushes and passes everything else on."""

    def __init__(self, inner: FileDevice, flush_delay: float = 0.0) -> None:
        self.inner = inner
        self.flush_delay = flush_delay
        self.size = inner.size
        self.read_only = inner.read_only
        self.flushes = 0

    def pread(self, offset: int, length: int) -> bytes:
        return self.inner.pread(offset, length)

    def pwrite(self, offset: int, data: bytes) -> None:
        self.inner.pwrite(offset, data)

    def flush(self) -> None:
        self.flushes += 1
        self.inner.flush()
        if self.flush_delay:
            time.sleep(self.flush_delay)  # a disk whose cache flush takes this long

    def close(self) -> None:
        self.inner.close()


async def writer(engine: Engine, first_key: int, fsyncs: int, share: bool, latencies: list[float]) -> None:
    for i in range(fsyncs):
        t0 = time.perf_counter()
        addr = engine.allocate_data(4096)
        engine.write_data(addr, os.urandom(16) * 256)
        with engine.transaction() as t:
            t.put(Tree.INODES, (first_key + i,), b"x" * 40)
        if share:
            await engine.flush_async()
        else:
            engine.flush()
            await trio.sleep(0)  # let the other writers in, as a request would
        latencies.append(time.perf_counter() - t0)


def run_case(workdir: str, name: str, version: int, writers: int, share: bool, fsyncs: int,
             flush_delay: float) -> dict:
    path = os.path.join(workdir, f"{name}.img")
    sparse_file(path, IMAGE_SIZE)
    device = CountingDevice(FileDevice.open(path), flush_delay)
    engine = Engine.format(device, plan_geometry(IMAGE_SIZE, uuid=os.urandom(16), version=version))
    latencies: list[float] = []
    before = device.flushes

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for w in range(writers):
                nursery.start_soon(writer, engine, w * 1_000_000, fsyncs, share, latencies)

    t0 = time.perf_counter()
    trio.run(main)
    seconds = time.perf_counter() - t0
    flushes = device.flushes - before
    total = writers * fsyncs
    device.close()  # no checkpoint: the reopen below replays, like after a crash
    again = Engine.open(FileDevice.open(path, read_only=True))
    missing = sum(1 for w in range(writers) for i in range(fsyncs)
                  if again.read(Tree.INODES, _key(w * 1_000_000 + i)) is None)
    again.device.close()
    os.unlink(path)
    return {
        "case": name, "writers": writers, "fsyncs": total, "seconds": seconds,
        "fsyncs_per_s": total / seconds, "device_flushes": flushes, "flushes_per_fsync": flushes / total,
        "mean_latency_ms": 1000 * sum(latencies) / len(latencies), "missing_after_crash": missing,
    }


def _key(ino: int) -> bytes:
    from pyfs.format.keys import encode_key

    return encode_key((ino,))


CASES = (("v1-serial-1", 1, 1, True), ("v2-serial-1", 2, 1, True),
         ("v2-group-4", 2, 4, True), ("v2-nogroup-4", 2, 4, False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fsyncs", type=int, default=200, help="fsyncs per writer (default 200)")
    parser.add_argument("--flush-ms", type=float, default=0.0,
                        help="add this many ms to every device flush, as a disk slower than this one (default 0)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--dir", help="where to put the images (default: a temp dir on the same disk)")
    args = parser.parse_args(argv)
    if args.fsyncs < 1:
        parser.error("--fsyncs must be at least 1")
    results = []
    with scratch_dir("pyfs-bench-flush-", args.dir or default_workdir_parent()) as workdir:
        for name, version, writers, share in CASES:
            results.append(run_case(workdir, name, version, writers, share, args.fsyncs, args.flush_ms / 1000))
    failed = [r for r in results if r["missing_after_crash"]]
    for r in failed:
        print(f"bench_flush: {r['case']}: {r['missing_after_crash']} fsynced keys missing after a crash", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        rows = [["case", "writers", "fsyncs", "fsyncs/s", "flushes/fsync", "latency ms"]]
        rows += [[r["case"], str(r["writers"]), str(r["fsyncs"]), f"{r['fsyncs_per_s']:.0f}",
                  f"{r['flushes_per_fsync']:.2f}", f"{r['mean_latency_ms']:.2f}"] for r in results]
        print("\n".join(table_lines(rows, right={1, 2, 3, 4, 5}, rule=True)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
