#!/usr/bin/env python3
"""Fuzzing fsck: seeded random damage to the metadata of healthy and crashed images.

Each iteration flips bits or zeroes 512-byte sectors in the bytes that
matter (superblock records, journal entries from the newest checkpoint on,
checksummed btree node bytes; sometimes anywhere in the superblock blocks or
the journal region) of a healthy image or of one left by a crash, then runs
`fsck -n`, `fsck -y` and `fsck -n` again.  The promises checked (DESIGN.md
invariant 9):

- fsck never raises (in-process) or prints a traceback (`--cli`), and never
  hangs (each run has `--timeout` seconds);
- `-n` writes nothing;
- after `-y` either the image checks clean with `-n` and mounts through
  `FileSystem.mount`, or `-y` exited 4 or 8 with a message.

`make test` runs 200 iterations (tests/test_fsck.py); longer runs:

    python tools/fuzz_fsck.py --iterations 5000 [--seed N] [--cli]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (REPO, os.path.join(REPO, "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)

from fsck_corpus import crashed_image, healthy_image, healthy_metadata_ranges  # noqa: E402
from pyfs.engine.fault_device import FaultDevice  # noqa: E402
from pyfs.fs import FileSystem  # noqa: E402
from tools.common import FSCK_PY, fsck_device  # noqa: E402


class Hang(BaseException):
    """A run took longer than its time limit (BaseException: no `except OSError` swallows it)."""


class Broken(AssertionError):
    """fsck broke one of its promises; the message says which and how to reproduce it."""


@contextmanager
def time_limit(seconds: float):
    def alarm(signum, frame):
        raise Hang(f"no answer after {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def bases(bulk: int = 100) -> list[tuple[str, bytes, list[tuple[int, int]]]]:
    """(name, image, ranges that matter) of the images the fuzzer damages."""
    healthy = healthy_image(bulk=bulk)
    crashed = crashed_image(healthy)
    return [(name, image, healthy_metadata_ranges(image)) for name, image in (("healthy", healthy), ("crashed", crashed))]


def damage(image: bytes, ranges: list[tuple[int, int]], rng: random.Random) -> tuple[bytes, list[str]]:
    out = bytearray(image)
    what = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        lo, hi = rng.choice(ranges)
        pos = rng.randrange(lo, hi)
        if rng.random() < 0.7:
            bit = 1 << rng.randrange(8)
            out[pos] ^= bit
            what.append(f"flip {bit:#x} at {pos:#x}")
        else:
            sector = pos - pos % 512
            out[sector : sector + 512] = bytes(512)
            what.append(f"zero sector {sector:#x}")
    return bytes(out), what


def _in_process(image: bytes, mode: str, timeout: float) -> tuple[int, str, bytes, bool]:
    """(exit code, output, image after, whether anything was written)."""
    dev = FaultDevice(image)
    with time_limit(timeout):
        result, text = fsck_device(dev, mode, force=True)
    wrote = any(op.kind == "write" for op in dev.ops)
    return result.exit_code, text, bytes(dev.durable_image()) if wrote else image, wrote


def _cli(image: bytes, mode: str, timeout: float) -> tuple[int, str, bytes, bool]:
    flag = {"check": "-n", "yes": "-y"}[mode]
    with tempfile.NamedTemporaryFile(suffix=".img") as f:
        f.write(image)
        f.flush()
        try:
            proc = subprocess.run([sys.executable, FSCK_PY, flag, "-f", f.name], capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Hang(f"no answer after {timeout} s") from None
        with open(f.name, "rb") as g:
            after = g.read()
    return proc.returncode, proc.stdout + proc.stderr, after, after != image


def fuzz_one(image: bytes, ranges: list[tuple[int, int]], rng: random.Random, *, cli: bool = False,
             timeout: float = 60) -> str:
    """One damaged image through -n, -y, -n; returns the outcome or raises Broken."""
    damaged, what = damage(image, ranges, rng)
    run = _cli if cli else _in_process

    def fail(message: str, text: str) -> Broken:
        return Broken(f"{message} after {', '.join(what)}:\n{text[-3000:]}")

    code, text, after, wrote = run(damaged, "check", timeout)
    if "Traceback" in text or code not in (0, 4, 8):
        raise fail(f"fsck -n exited {code}", text)
    if wrote:
        raise fail("fsck -n wrote to the image", text)
    code, text, repaired, _ = run(damaged, "yes", timeout)
    if "Traceback" in text or code not in (0, 1, 4, 8):
        raise fail(f"fsck -y exited {code}", text)
    if code in (4, 8):
        if "NOT FIXED" not in text and "fsck.pyfs:" not in text:
            raise fail(f"fsck -y exited {code} without saying why", text)
        return f"exit {code}"
    again, text2, _, _ = run(repaired, "check", timeout)
    if again != 0:
        raise fail(f"fsck -n after a successful -y exited {again}", text + "\n--- then -n:\n" + text2)
    try:
        FileSystem.mount(FaultDevice(repaired)).close()
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        raise fail(f"the repaired image does not mount: {exc!r}", text) from None
    return "repaired" if code == 1 else "clean"


def run(iterations: int, seed: int, *, cli: bool = False, timeout: float = 60, report=None) -> tuple[Counter, list[str]]:
    rng = random.Random(seed)
    images = bases()
    outcomes: Counter = Counter()
    failures: list[str] = []
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # every damaged node logs an error
    try:
        for i in range(iterations):
            name, image, ranges = images[i % len(images)]
            try:
                outcomes[fuzz_one(image, ranges, rng, cli=cli, timeout=timeout)] += 1
            except (Broken, Hang) as exc:
                outcomes["BROKEN"] += 1
                failures.append(f"iteration {i} ({name} image, seed {seed}): {exc}")
            if report is not None:
                report(i + 1, outcomes)
    finally:
        logging.disable(previous)
    return outcomes, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--timeout", type=float, default=60, help="seconds per fsck run before it counts as a hang")
    parser.add_argument("--cli", action="store_true", help="run fsck.py as a subprocess on image files")
    args = parser.parse_args(argv)
    start = time.monotonic()

    def progress(done: int, outcomes: Counter) -> None:
        if done % 50 == 0 or done == args.iterations:
            print(f"{done}/{args.iterations} images, {time.monotonic() - start:.0f} s: {dict(outcomes)}", flush=True)

    outcomes, failures = run(args.iterations, args.seed, cli=args.cli, timeout=args.timeout, report=progress)
    for failure in failures:
        print(failure)
    print(f"seed {args.seed}: {args.iterations} images, {len(failures)} broken promises, "
          f"{time.monotonic() - start:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
