"""Shared pieces of the engine measurement tools (bench_engine.py, scale.py).

Images are sparse files on a real disk opened through `FileDevice`, so the
figures include the system calls and fdatasync a mount pays.  Every figure
runs in a fresh child process (`run_child`) so that `ru_maxrss`, a peak that
only ever grows, belongs to that figure alone.  Keys and values are derived
from the key number, so a reader can check every value it gets back.
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from array import array

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from pyfs.engine.device import FileDevice  # noqa: E402
from pyfs.engine.engine import Engine, EngineOptions  # noqa: E402
from pyfs.format.superblock import DEFAULT_NODE_SIZE, plan_geometry  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30


def value_of(i: int) -> bytes:
    """The 60-byte value stored under key `(i,)`."""
    return b"%010d" % i * 6


def peak_rss_mib() -> float:
    """Peak resident set of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def default_workdir_parent() -> str:
    """The system temp dir when it is on the same disk as the repository, else the repository."""
    tmp = tempfile.gettempdir()
    try:
        if os.stat(tmp).st_dev == os.stat(REPO).st_dev:
            return tmp
    except OSError:
        pass
    return REPO


def make_image(
    path: str,
    size: int,
    *,
    journal_size: int | None = None,
    node_size: int = DEFAULT_NODE_SIZE,
    options: EngineOptions | None = None,
) -> Engine:
    """Create a sparse image file of `size` bytes, format it and return the open engine."""
    with open(path, "wb") as f:
        f.truncate(size)
    device = FileDevice.open(path)
    try:
        sb = plan_geometry(device.size, uuid=os.urandom(16), journal_size=journal_size, node_size=node_size)
        return Engine.format(device, sb, options)
    except BaseException:
        device.close()
        raise


def open_image(path: str, options: EngineOptions | None = None, *, read_only: bool = False) -> Engine:
    device = FileDevice.open(path, read_only=read_only)
    try:
        return Engine.open(device, options)
    except BaseException:
        device.close()
        raise


def disk_mib(path: str) -> float:
    """Space the (sparse) image really takes on disk."""
    return os.stat(path).st_blocks * 512 / MIB


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


def run_child(script: str, args: list[str]) -> dict:
    """Run `script` with `args` in a fresh interpreter; return the JSON object it prints last.

    A child that fails raises RuntimeError carrying the last line of its stderr.
    """
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        raise RuntimeError(reason)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError("child printed no result")
    return json.loads(lines[-1])


class Stopwatch:
    """Wall and CPU seconds of a `with` block.

    Both are reported: on a loaded machine the wall time of a CPU-bound
    figure includes waiting for a core, and the CPU time shows how much.
    """

    def __enter__(self) -> "Stopwatch":
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = time.perf_counter() - self._wall
        self.cpu_seconds = time.process_time() - self._cpu
