#!/usr/bin/env python3
"""Measure the storage engine on a real image file.

Figures (each one runs in a fresh child process, so its peak RSS is its own,
and each one checks its own result before it is reported):

  tx_nosync    single-key transactions per second, no flush
               (check: every key readable after a clean close and reopen)
  tx_flush     single-key transactions per second, `engine.flush()` after each
               (check: every key survives a simulated crash)
  bulk_batch   bulk insert of --keys keys `(i,)` into the inodes tree, 60-byte
               values, 100 keys per transaction: keys/s and peak RSS
               (check: reopen replays nothing, a full scan returns every value)
  bulk_single  the same with 1 key per transaction (--keys / 5 keys)
  replay       the journal filled to just under the checkpoint threshold
               (no checkpoint may happen), then a crash: time of Engine.open,
               read-only (scan + replay) and read-write (+ its checkpoint)
               (check: every committed key is back)
  open_clean   Engine.open of the bulk_batch image after its clean close
               (check: no entry replayed, the key count and sampled values)

    python tools/bench_engine.py                 # the full figures (~1M keys)
    python tools/bench_engine.py --quick --json  # a smoke run in seconds

Exit codes: 0 every figure ran and checked, 1 a figure failed (one line
each on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from dataclasses import asdict, dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyfs.engine.engine import Engine, EngineOptions  # noqa: E402
from pyfs.engine.journal_scan import scan_journal  # noqa: E402
from pyfs.format.checksum import seed_from_uuid  # noqa: E402
from pyfs.format.keys import encode_key  # noqa: E402
from pyfs.format.records import Tree  # noqa: E402
from tools.common import (  # noqa: E402
    GIB, MIB, Stopwatch, ToolError, add_engine_options, check, child_main, default_workdir_parent,
    insert_keys, make_image, measure_in_child, open_image, peak_rss_mib, scratch_dir, table_lines, value_of,
)

FIGURES = ("tx_nosync", "tx_flush", "bulk_batch", "bulk_single", "replay", "open_clean")
BATCH = 100  # keys per transaction of the bulk and replay figures


@dataclass(frozen=True)
class Plan:
    """The sizes of every figure; derived from the command line, identical in every child."""

    keys: int
    image_size: int
    nosync_tx: int
    flush_tx: int
    single_keys: int
    replay_journal: int | None  # bytes; None: the default journal of the image size
    replay_fill: float = 0.99

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Plan":
        keys = args.keys if args.keys is not None else (50_000 if args.quick else 1_000_000)
        if args.quick:
            return cls(keys, args.image_size, 2000, 100, max(1, keys // 5), 4 * MIB)
        return cls(keys, args.image_size, 20_000, 2000, max(1, keys // 5), None)


def image_path(workdir: str, figure: str) -> str:
    return os.path.join(workdir, f"{figure}.img")


# ---------------------------------------------------------------------------
# checks shared by the figures
# ---------------------------------------------------------------------------


def check_all_keys(engine: Engine, n: int) -> None:
    """Exactly keys (0,)..(n-1,) are in the inodes tree, each with its value (one scan)."""
    tree = engine.trees[Tree.INODES]
    check(tree.nkeys == n, f"inodes tree counts {tree.nkeys} keys, expected {n}")
    expect = 0
    for key, value in tree.scan():
        check(key == encode_key((expect,)), f"key #{expect} is {key!r}")
        check(value == value_of(expect), f"key ({expect},) has a wrong value")
        expect += 1
    check(expect == n, f"scan returned {expect} keys, expected {n}")


def check_sample(engine: Engine, n: int, count: int = 2000) -> None:
    rng = random.Random(n)
    tree = engine.trees[Tree.INODES]
    for i in [0, n - 1, *(rng.randrange(n) for _ in range(count))]:
        check(tree.get(encode_key((i,))) == value_of(i), f"key ({i},) is missing or wrong")


def reopen_and_scan(path: str, n: int) -> float:
    """Reopen after a clean close: nothing replayed, every key back; the seconds of the scan."""
    engine = open_image(path)
    check(engine.replayed_entries == 0, f"reopen after a clean close replayed {engine.replayed_entries} entries")
    with Stopwatch() as scan:
        check_all_keys(engine, n)
    engine.close()
    return scan.seconds


def crash(engine: Engine) -> None:
    """Power cut after the last flush: the device goes away without a checkpoint."""
    engine.device.close()
    engine.closed = True


# ---------------------------------------------------------------------------
# the figures (each runs in its own child process)
# ---------------------------------------------------------------------------


def fig_tx_nosync(plan: Plan, workdir: str) -> dict:
    path = image_path(workdir, "tx_nosync")
    engine = make_image(path, plan.image_size)
    n = plan.nosync_tx
    with Stopwatch() as timed:
        insert_keys(engine, n, 1)
    rss = peak_rss_mib()
    engine.close()
    reopen_and_scan(path, n)
    return {"transactions": n, **timed.rates(n, "tx"), "peak_rss_mib": rss}


def fig_tx_flush(plan: Plan, workdir: str) -> dict:
    path = image_path(workdir, "tx_flush")
    engine = make_image(path, plan.image_size)
    n = plan.flush_tx
    with Stopwatch() as timed:
        insert_keys(engine, n, 1, after_tx=lambda tx: engine.flush())
    rss = peak_rss_mib()
    check(engine.journal.durable_seq == engine.journal.last_committed_seq, "flush left entries non-durable")
    crash(engine)
    engine = open_image(path)
    check(engine.replayed_entries >= n, f"crash reopen replayed {engine.replayed_entries} entries, expected {n}+")
    check_all_keys(engine, n)
    engine.close()
    return {"transactions": n, **timed.rates(n, "tx"), "peak_rss_mib": rss}


def _bulk(plan: Plan, workdir: str, figure: str, n: int, per_tx: int) -> dict:
    path = image_path(workdir, figure)
    base_rss = peak_rss_mib()
    engine = make_image(path, plan.image_size)
    checkpoints = engine.checkpoints  # format wrote one
    with Stopwatch() as timed:
        insert_keys(engine, n, per_tx)
    checkpoints = engine.checkpoints - checkpoints
    with Stopwatch() as close:
        engine.close()
    rss = peak_rss_mib()
    verify_seconds = reopen_and_scan(path, n)
    return {
        "keys": n,
        "keys_per_tx": per_tx,
        **timed.rates(n, "keys"),
        "close_seconds": close.seconds,
        "checkpoints": checkpoints,
        "peak_rss_mib": rss,
        "base_rss_mib": base_rss,
        "image_disk_mib": os.stat(path).st_blocks * 512 / MIB,  # what the sparse image takes
        "scan_keys_per_s": n / verify_seconds,
    }


def fig_bulk_batch(plan: Plan, workdir: str) -> dict:
    return _bulk(plan, workdir, "bulk_batch", plan.keys, BATCH)


def fig_bulk_single(plan: Plan, workdir: str) -> dict:
    result = _bulk(plan, workdir, "bulk_single", plan.single_keys, 1)
    os.unlink(image_path(workdir, "bulk_single"))
    return result


def fig_replay(plan: Plan, workdir: str) -> dict:
    path = image_path(workdir, "replay")
    # Room for every dirty node of a full journal: the dirty limit is capped by
    # the node reserve, and no checkpoint may happen while the journal fills.
    options = EngineOptions(checkpoint_fill=plan.replay_fill, dirty_limit=10**9, reserve_buckets=1024)
    engine = make_image(path, plan.image_size, journal_size=plan.replay_journal, options=options)
    journal = engine.journal
    checkpoints = engine.checkpoints
    first_seq = journal.next_seq
    # The journal checkpoints at `checkpoint_fill`, or earlier when an entry
    # would eat into the space it keeps back for the checkpoint entry.
    target = min(plan.replay_fill, (journal.region_size - journal.reserve) / journal.region_size)
    n = 0
    entry_bytes = 0
    while journal.fill + 2 * entry_bytes / journal.region_size < target:
        used = journal.used
        insert_keys(engine, n + BATCH, BATCH, start=n)
        n += BATCH
        entry_bytes = max(entry_bytes, journal.used - used)
        check(engine.checkpoints == checkpoints, f"a checkpoint happened at journal fill {journal.fill:.3f}")
        if (n // BATCH) % 1000 == 0:
            engine.flush()  # a commit interval's worth
    engine.flush()
    check(engine.checkpoints == checkpoints, "a checkpoint happened at the final flush")
    entries = journal.last_committed_seq - first_seq + 1
    fill = journal.fill
    journal_mib = journal.used / MIB
    crash(engine)
    rss_before_open = peak_rss_mib()

    # Read-only: scan and replay only (a read-only open writes no checkpoint).
    with Stopwatch() as ro_timed:
        ro = open_image(path, EngineOptions(read_only=True), read_only=True)
    check(ro.replayed_entries == entries, f"read-only open replayed {ro.replayed_entries} entries, expected {entries}")
    with Stopwatch() as scan:
        scan_journal(ro.device, ro.sb, seed_from_uuid(ro.sb.uuid))
    ro.device.close()
    del ro

    with Stopwatch() as timed:
        engine = open_image(path)
    rss = peak_rss_mib()
    check(engine.replayed_entries == entries, f"open replayed {engine.replayed_entries} entries, expected {entries}")
    check_all_keys(engine, n)
    engine.close()
    return {
        "entries": entries,
        "keys": n,
        "journal_mib": journal_mib,
        "journal_fill": fill,
        "seconds": timed.seconds,
        "cpu_seconds": timed.cpu_seconds,
        "replay_only_seconds": ro_timed.seconds,
        "replay_only_cpu_seconds": ro_timed.cpu_seconds,
        "scan_seconds": scan.seconds,
        "entries_per_s": entries / timed.seconds,
        "peak_rss_mib": rss,
        "rss_before_open_mib": rss_before_open,
    }


def fig_open_clean(plan: Plan, workdir: str) -> dict:
    path = image_path(workdir, "bulk_batch")
    check(os.path.exists(path), "the bulk_batch image is missing (run that figure first)")
    with Stopwatch() as timed:
        engine = open_image(path)
    replayed = engine.replayed_entries
    check(replayed == 0, f"open after a clean close replayed {replayed} entries")
    check(engine.trees[Tree.INODES].nkeys == plan.keys, "key count changed")
    check_sample(engine, plan.keys)
    engine.close()
    return {"keys": plan.keys, "seconds": timed.seconds, "cpu_seconds": timed.cpu_seconds,
            "replayed_entries": replayed, "peak_rss_mib": peak_rss_mib()}


RUNNERS = {
    "tx_nosync": fig_tx_nosync,
    "tx_flush": fig_tx_flush,
    "bulk_batch": fig_bulk_batch,
    "bulk_single": fig_bulk_single,
    "replay": fig_replay,
    "open_clean": fig_open_clean,
}


# ---------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------


def describe(name: str, r: dict) -> tuple[str, str]:
    """(workload, result) columns of the human table."""
    times = f"{r['seconds']:.2f} s, CPU {r['cpu_seconds']:.2f} s"
    if name in ("tx_nosync", "tx_flush"):
        how = "no flush" if name == "tx_nosync" else "flush after each"
        return f"{r['transactions']:,} single-key tx, {how}", f"{r['tx_per_s']:,.0f} tx/s ({times})"
    if name.startswith("bulk"):
        return (
            f"{r['keys']:,} keys, {r['keys_per_tx']} per tx, {r['checkpoints']} checkpoint(s)",
            f"{r['keys_per_s']:,.0f} keys/s ({times}; close {r['close_seconds']:.2f} s)",
        )
    if name == "replay":
        return (
            f"{r['entries']:,} entries, {r['keys']:,} keys, {r['journal_mib']:.1f} MiB journal",
            f"open {times} (read-only {r['replay_only_seconds']:.2f} s, scan {r['scan_seconds']:.2f} s)",
        )
    if name == "open_clean":
        return f"{r['keys']:,}-key image, {r['replayed_entries']} entries replayed", f"open {times}"
    return "", ""


def print_table(plan: Plan, results: dict[str, dict], workdir: str) -> None:
    print(f"pyfs engine benchmark: {plan.image_size / GIB:g} GiB sparse image in {workdir}")
    rows = [("figure", "workload", "result", "peak RSS")]
    for name, r in results.items():
        rows.append((name, *describe(name, r), f"{r['peak_rss_mib']:.1f} MiB"))
    print("\n".join(table_lines(rows)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, help="keys of the bulk figures (default 1,000,000; 50,000 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few keys, small N, small replay journal")
    add_engine_options(parser, json_what="the figures", image_what="each sparse image")
    parser.add_argument("--figure", choices=FIGURES, action="append",
                        help="run only this figure (repeatable); open_clean needs bulk_batch")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.keys is not None and args.keys < 1:
        parser.error("--keys must be positive")
    plan = Plan.from_args(args)

    if args.child:  # one figure, in this fresh process, into an existing --dir
        (name,) = args.figure
        return child_main(f"bench_engine: {name}: check failed", lambda: RUNNERS[name](plan, args.dir))

    figures = [f for f in FIGURES if not args.figure or f in args.figure]
    if "open_clean" in figures and "bulk_batch" not in figures:
        parser.error("open_clean needs the bulk_batch figure in the same run")
    parent = args.dir or default_workdir_parent()
    results: dict[str, dict] = {}
    failed = 0
    try:
        with scratch_dir("pyfs-bench-", parent) as workdir:
            for name in figures:
                child_args = ["--child", "--figure", name, "--dir", workdir, "--image-size", str(plan.image_size),
                              "--keys", str(plan.keys)] + (["--quick"] if args.quick else [])
                try:
                    results[name] = measure_in_child(os.path.abspath(__file__), child_args)
                except ToolError as exc:
                    print(f"bench_engine: {name} failed: {exc}", file=sys.stderr)
                    failed += 1
    except ToolError as exc:  # no work directory
        print(f"bench_engine: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"plan": asdict(plan), "figures": results}, indent=2))
    else:
        print_table(plan, results, parent)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
