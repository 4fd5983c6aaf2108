#!/usr/bin/env python3
"""Show that the engine's memory is bounded by its cache setting, not by the key count.

For every cache size (`--cache-nodes`, default 256 and 4096 nodes) and two
key counts (`--keys`, default 1,000,000, and `--small-keys`, default a
quarter of it), two fresh child processes run against one sparse image file:

  insert  format, insert the keys `(i,)` (60-byte values, 100 per
          transaction) with that cache size, clean close
  read    open (must replay nothing), read every key back in a scrambled
          order, each value checked, the cache never above its bound

and report their peak RSS.  Three peaks are compared, each for the large
key count against the small one, for every cache size:

  insert peak     `ru_maxrss` of the insert child
  open peak       `ru_maxrss` of the read child right after Engine.open
  read-loop peak  the peak during the read loop alone (the kernel's
                  watermark is restarted after the open, see reset_peak_rss)

Each must stay within `--limit` (default 1.5) times its small-count value;
otherwise the bound is violated and the tool exits 1.  The insert and
read-loop bounds apply only when the cache was full at the small count
(a cache the small tree fits in bounds nothing).  Dirty nodes are bounded
by the engine's dirty limit (`--dirty-limit`), checked and reported.
Inserts flush every `--flush-every` transactions, as a mount's commit
interval would.

    python tools/scale.py                              # 1M and 250k keys
    python tools/scale.py --keys 100000 --cache-nodes 64 1024

Exit codes: 0 bounded, 1 the bound was violated or a check failed (one line
each on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from array import array

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyfs.engine.engine import EngineOptions  # noqa: E402
from pyfs.format.keys import encode_key  # noqa: E402
from pyfs.format.records import Tree  # noqa: E402
from tools.common import (  # noqa: E402
    MIB, CheckFailed, Stopwatch, ToolError, add_engine_options, check, child_main, default_workdir_parent,
    insert_keys, make_image, measure_in_child, open_image, peak_rss_mib, scratch_dir, table_lines, value_of,
)

BATCH = 100


def shuffled(n: int, seed: int) -> array:
    """range(n) in a random order, as 4-byte ints (a list of a million ints
    would itself weigh ~40 MiB and blur the memory figures being measured).

    Truly shuffled, not a cheap affine scramble: a stride pattern revisits
    each btree leaf at regular long intervals, the worst case of an LRU
    cache, and would understate what a cache of a given size achieves.
    """
    order = array("I", range(n))
    random.Random(seed).shuffle(order)
    return order


def current_rss_mib() -> float:
    """Resident set of this process now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS watermark (VmHWM) at the current RSS; False if not possible.

    `ru_maxrss` cannot be reset; VmHWM can (Linux >= 4.0, "5" to clear_refs),
    which lets one phase of a process be measured apart from an earlier peak.
    Linux derives `ru_maxrss` from the same watermark, so it restarts too:
    read any earlier peak first.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_since_reset_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise OSError("no VmHWM in /proc/self/status")



def options_for(args: argparse.Namespace) -> EngineOptions:
    options = EngineOptions(cache_nodes=args.cache_nodes[0])
    if args.dirty_limit is not None:
        options.dirty_limit = args.dirty_limit
    return options


def phase_insert(args: argparse.Namespace, path: str) -> dict:
    base = peak_rss_mib()
    engine = make_image(path, args.image_size, options=options_for(args))
    limit = engine.store.cache_nodes
    most = {"cache": 0, "dirty": 0}
    n = args.keys

    def after_tx(tx: int) -> None:
        most["cache"] = max(most["cache"], len(engine.store.cache))
        most["dirty"] = max(most["dirty"], engine.store.dirty_count)
        if args.flush_every and tx % args.flush_every == 0:
            engine.flush()

    with Stopwatch() as timed:
        insert_keys(engine, n, BATCH, after_tx=after_tx)
    max_cache, max_dirty = most["cache"], most["dirty"]
    check(max_cache <= limit, f"insert: the cache held {max_cache} nodes, above its bound {limit}")
    check(max_dirty <= engine.dirty_limit,
          f"insert: {max_dirty} dirty nodes after a commit, above the dirty limit {engine.dirty_limit}")
    checkpoints = engine.checkpoints
    dirty_limit = engine.dirty_limit
    engine.close()
    return {
        "keys": n,
        **timed.rates(n, "keys"),
        "checkpoints": checkpoints,
        "max_cached_nodes": max_cache,
        "cache_full": max_cache >= limit,
        "max_dirty_nodes": max_dirty,
        "dirty_limit": dirty_limit,
        "base_rss_mib": base,
        "peak_rss_mib": peak_rss_mib(),
    }


def phase_read(args: argparse.Namespace, path: str) -> dict:
    n = args.keys
    order = shuffled(n, seed=n)  # before the measurement: the workload's, not the engine's memory
    base = peak_rss_mib()
    engine = open_image(path, options_for(args))
    check(not engine.replayed_entries,
          f"read: open after a clean close replayed {engine.replayed_entries} entries")
    open_peak = peak_rss_mib()
    tree = engine.trees[Tree.INODES]
    check(tree.nkeys == n, f"read: the inodes tree counts {tree.nkeys} keys, expected {n}")
    limit = engine.store.cache_nodes
    max_cache = 0
    reads_before = engine.store.reads
    separate = reset_peak_rss()
    loop_start_rss = current_rss_mib()
    with Stopwatch() as timed:
        for count, i in enumerate(order, 1):
            if tree.get(encode_key((i,))) != value_of(i):  # not check(): no message built per key
                raise CheckFailed(f"read: key ({i},) is missing or has a wrong value")
            if count % 1024 == 0:
                max_cache = max(max_cache, len(engine.store.cache))
    loop_peak = peak_rss_since_reset_mib() if separate else None
    max_cache = max(max_cache, len(engine.store.cache))
    check(max_cache <= limit, f"read: the cache held {max_cache} nodes, above its bound {limit}")
    node_reads = engine.store.reads - reads_before
    engine.close()
    return {
        "keys": n,
        **timed.rates(n, "keys"),
        "node_reads": node_reads,
        "max_cached_nodes": max_cache,
        "cache_full": max_cache >= limit,
        "base_rss_mib": base,
        "open_peak_rss_mib": open_peak,
        "read_peak_rss_mib": loop_peak,
        # What the loop itself added (the clean-node cache, mostly) on top of
        # what the open left resident.
        "read_growth_mib": None if loop_peak is None else loop_peak - loop_start_rss,
        # Resetting VmHWM resets ru_maxrss too: the phase's peak is the larger of the two.
        "peak_rss_mib": max(open_peak, peak_rss_mib()),
    }


# ---------------------------------------------------------------------------
# the parent: run every (cache, keys) pair in fresh children, compare peaks
# ---------------------------------------------------------------------------


def child_args(args: argparse.Namespace, phase: str, path: str, keys: int, cache: int) -> list[str]:
    out = ["--phase", phase, "--image", path, "--keys", str(keys), "--cache-nodes", str(cache),
           "--image-size", str(args.image_size), "--flush-every", str(args.flush_every)]
    if args.dirty_limit is not None:
        out += ["--dirty-limit", str(args.dirty_limit)]
    return out


# (label, phase, field, whether the cache must be full at the small count for the bound to apply)
MEASURES = (
    ("insert peak", "insert", "peak_rss_mib", True),
    ("open peak", "read", "open_peak_rss_mib", False),
    ("read-loop peak", "read", "read_peak_rss_mib", True),
)


def verdicts(rows: list[dict], caches: list[int], small: int, large: int, limit: float) -> tuple[list[str], list[str]]:
    """(one line per cache size and measure, the failures among them)."""
    by = {(r["cache_nodes"], r["keys"], r["phase"]): r for r in rows}
    lines: list[str] = []
    failures: list[str] = []
    for cache in caches:
        for label, phase, field, needs_full_cache in MEASURES:
            lo_row, hi_row = by.get((cache, small, phase)), by.get((cache, large, phase))
            if lo_row is None or hi_row is None or lo_row.get(field) is None or hi_row.get(field) is None:
                continue
            what = f"cache {cache} nodes, {label}"
            if needs_full_cache and not lo_row["cache_full"]:
                lines.append(f"n/a     {what}: the cache was not full at {small:,} keys "
                             f"({lo_row['max_cached_nodes']} of {cache} nodes), so it bounds nothing there")
                continue
            lo, hi = lo_row[field], hi_row[field]
            ratio = hi / lo
            line = f"{what}: {hi:.1f} MiB at {large:,} keys, {lo:.1f} MiB at {small:,} keys: {ratio:.2f}x (limit {limit}x)"
            if ratio > limit:
                failures.append(f"scale: bound violated: {line}")
                lines.append("FAILED  " + line)
            else:
                lines.append("ok      " + line)
    return lines, failures


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} MiB"


def print_table(rows: list[dict], lines: list[str]) -> None:
    head = ("cache", "keys", "phase", "keys/s", "CPU s", "node reads", "max cached", "max dirty",
            "peak RSS", "open peak", "read-loop peak", "read-loop growth")
    table = [head]
    for r in rows:
        table.append((
            f"{r['cache_nodes']} nodes",
            f"{r['keys']:,}",
            r["phase"],
            f"{r['keys_per_s']:,.0f}",
            f"{r['cpu_seconds']:.1f}",
            f"{r['node_reads']:,}" if "node_reads" in r else "-",
            f"{r['max_cached_nodes']}",
            f"{r['max_dirty_nodes']} (limit {r['dirty_limit']})" if "max_dirty_nodes" in r else "-",
            _mib(r["peak_rss_mib"]),
            _mib(r.get("open_peak_rss_mib")),
            _mib(r.get("read_peak_rss_mib")),
            _mib(r.get("read_growth_mib")),
        ))
    print("\n".join([*table_lines(table, right={1, 3, 4, 5, 6}), "", *lines]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="the large key count (default 1,000,000)")
    parser.add_argument("--small-keys", type=int, help="the small key count (default a quarter of --keys)")
    parser.add_argument("--cache-nodes", type=int, nargs="+", default=[256, 4096],
                        help="clean-node cache sizes to compare (default 256 4096)")
    parser.add_argument("--dirty-limit", type=int, help="EngineOptions.dirty_limit (default the engine's)")
    parser.add_argument("--flush-every", type=int, default=1000, metavar="TX",
                        help="flush after every TX transactions while inserting, like a mount's commit "
                             "interval (default 1000; 0: never, the journal buffers until a checkpoint)")
    parser.add_argument("--limit", type=float, default=1.5,
                        help="largest allowed ratio of peak RSS, large over small key count (default 1.5)")
    add_engine_options(parser, json_what="the rows", image_what="the sparse image")
    parser.add_argument("--phase", choices=("insert", "read"), help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.keys < 1 or any(c < 1 for c in args.cache_nodes) or args.flush_every < 0:
        parser.error("--keys and --cache-nodes must be positive, --flush-every not negative")

    if args.phase:  # one phase in this fresh process
        return child_main("scale", lambda: (phase_insert if args.phase == "insert" else phase_read)(args, args.image))

    large = args.keys
    small = args.small_keys if args.small_keys is not None else max(1, large // 4)
    rows: list[dict] = []
    failures: list[str] = []
    script = os.path.abspath(__file__)
    try:
        with scratch_dir("pyfs-scale-", args.dir or default_workdir_parent()) as workdir:
            for cache in args.cache_nodes:
                for keys in (small, large):
                    path = os.path.join(workdir, f"scale-{cache}-{keys}.img")
                    for phase in ("insert", "read"):
                        try:
                            result = measure_in_child(script, child_args(args, phase, path, keys, cache))
                        except ToolError as exc:
                            failures.append(f"scale: cache {cache}, {keys:,} keys, {phase}: {exc}")
                            break
                        rows.append({"cache_nodes": cache, "phase": phase} | result)
                    os.unlink(path)
    except ToolError as exc:  # no work directory
        print(f"scale: {exc}", file=sys.stderr)
        return 1

    lines, violated = verdicts(rows, args.cache_nodes, small, large, args.limit)
    failures += violated
    if args.json:
        print(json.dumps({"small_keys": small, "large_keys": large, "limit": args.limit, "rows": rows,
                          "verdicts": lines, "failures": failures}, indent=2))
    else:
        print_table(rows, lines)
    for line in failures:
        print(line, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
