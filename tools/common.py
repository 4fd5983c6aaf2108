"""What the tools under tools/ share: paths, images, mounts, child processes, tables.

A step that fails raises `ToolError` with one line saying which; a figure
whose own check fails raises `CheckFailed` (`check`).

- Images: `mkfs` makes one with mkfs.py as a user does; `make_image` and
  `open_image` format or open a sparse image file in process through
  `FileDevice`, so engine figures include the system calls and fdatasync a
  mount pays; `fsck_device` runs fsck in process on any device.
- Mounts: `is_mountpoint` reads /proc/self/mountinfo (a killed daemon leaves
  a mount point that stat cannot answer), `wait_mounted`, `fusermount`.
- Child processes: `run_child` runs a command to its end and measures it
  (wall seconds, and its own peak RSS from wait4).  The engine tools run
  every figure in a fresh interpreter (`measure_in_child` in the parent,
  `child_main` in the child) so that `ru_maxrss`, a peak that only ever
  grows, belongs to that figure alone.
- Workloads: keys `(i,)` with values `value_of(i)` (`insert_keys`), so a
  reader can check every value it gets back; `walk_fs` and `read_fs_file`
  read a tree through the core API.
- Reporting: `table_lines` lays out a result table.

pyfs is imported inside the functions that need it: bench.py runs its
workloads on any directory, under a Python without pyfs's dependencies.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyfs.engine.engine import Engine, EngineOptions
    from pyfs.fs import FileSystem
    from pyfs.fsck.run import Result

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MKFS_PY = os.path.join(REPO, "mkfs.py")
FSCK_PY = os.path.join(REPO, "fsck.py")

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30


class ToolError(Exception):
    """A step of a tool failed (a command, a mount, a work directory); the message says which."""


class CheckFailed(ToolError):
    """A measured result is wrong, so the figure is not reported."""


def check(ok: bool, what: str) -> None:
    if not ok:
        raise CheckFailed(what)


# -- commands and work directories ------------------------------------------------------------


def run_quiet(cmd: list[str], what: str, timeout: float | None = 300, **kw) -> subprocess.CompletedProcess:
    """Run `cmd` with its output captured; ToolError with its last line if it fails or takes too long."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise ToolError(f"{what}: `{' '.join(cmd)}` took over {timeout:.0f} s") from None
    if proc.returncode != 0:
        msg = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise ToolError(f"{what}: `{' '.join(cmd)}` exited {proc.returncode}: {msg[-1] if msg else ''}")
    return proc


@contextlib.contextmanager
def scratch_dir(prefix: str, parent: str | None = None,
                keep: Callable[[str], bool] = lambda path: False) -> Iterator[str]:
    """A fresh directory under `parent` (the system temp dir if None), removed afterwards unless `keep(it)`."""
    try:
        path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    except OSError as exc:
        raise ToolError(f"cannot create a work directory in {parent}: {exc.strerror}") from None
    try:
        yield path
    finally:
        if not keep(path):
            shutil.rmtree(path, ignore_errors=True)


def add_engine_options(parser: argparse.ArgumentParser, *, json_what: str, image_what: str) -> None:
    """--json, --dir and --image-size, as the engine tools (bench_engine.py, scale.py) take them."""
    parser.add_argument("--json", action="store_true", help=f"print {json_what} as JSON instead of a table")
    parser.add_argument("--dir", help="where to put the images (default: a temp dir on the same disk)")
    parser.add_argument("--image-size", type=int, default=4 * GIB, help=f"bytes of {image_what} (default 4 GiB)")


def default_workdir_parent() -> str:
    """The system temp dir when it is on the same disk as the repository, else the repository."""
    tmp = tempfile.gettempdir()
    try:
        if os.stat(tmp).st_dev == os.stat(REPO).st_dev:
            return tmp
    except OSError:
        pass
    return REPO


# -- images -----------------------------------------------------------------------------------


def sparse_file(path: str, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def mkfs(image: str, size: int | str, *, journal_size: str | None = None, python: str = sys.executable) -> None:
    """A fresh pyfs image made by mkfs.py (a sparse file of `size`: bytes, or mkfs's "256M")."""
    argv = [python, MKFS_PY, image, "--size", str(size), "-q"]
    if journal_size:
        argv += ["--journal-size", journal_size]
    run_quiet(argv, "pyfs mkfs", cwd=REPO)


def make_image(path: str, size: int, *, journal_size: int | None = None,
               options: EngineOptions | None = None) -> Engine:
    """Create a sparse image file of `size` bytes, format it and return the open engine."""
    from pyfs.engine.device import FileDevice
    from pyfs.engine.engine import Engine
    from pyfs.format.superblock import plan_geometry

    sparse_file(path, size)
    device = FileDevice.open(path)
    try:
        sb = plan_geometry(device.size, uuid=os.urandom(16), journal_size=journal_size)
        return Engine.format(device, sb, options)
    except BaseException:
        device.close()
        raise


def open_image(path: str, options: EngineOptions | None = None, *, read_only: bool = False) -> Engine:
    from pyfs.engine.device import FileDevice
    from pyfs.engine.engine import Engine

    device = FileDevice.open(path, read_only=read_only)
    try:
        return Engine.open(device, options)
    except BaseException:
        device.close()
        raise


def fsck_device(device, mode: str = "check", *, force: bool = False) -> tuple[Result, str]:
    """fsck of the image on `device`, in process: (its result, everything it printed)."""
    from pyfs.fsck import Options, Report, fsck

    out = io.StringIO()
    result = fsck(device, Options(mode=mode, force=force), Report(out, out, progress=False))
    return result, out.getvalue()


# -- mounts -----------------------------------------------------------------------------------


def is_mountpoint(path: str) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        # mountinfo writes space, tab, newline and backslash as octal escapes
        return any(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]) == target
                   for line in f)


def wait_mounted(mnt: str, proc: subprocess.Popen, timeout: float, *, what: str,
                 detail: Callable[[], str] = lambda: "", interval: float = 0.05) -> None:
    """Wait until `proc` (the daemon, `what`) has mounted `mnt`; ToolError if it exits first or takes too long."""
    deadline = time.monotonic() + timeout
    while not is_mountpoint(mnt):
        if proc.poll() is not None:
            raise ToolError(f"{what} exited {proc.returncode} before mounting{detail()}")
        if time.monotonic() > deadline:
            raise ToolError(f"{what} did not mount {mnt} within {timeout:.0f} s{detail()}")
        time.sleep(interval)


def fusermount(mnt: str, *, lazy: bool = False, timeout: float | None = 60) -> subprocess.CompletedProcess:
    """`fusermount3 -u [-z] MNT`, output captured."""
    return subprocess.run(["fusermount3", "-u", *(["-z"] if lazy else []), mnt], capture_output=True, text=True,
                          timeout=timeout)


# -- child processes --------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildRun:
    """A child process that ran to its end."""

    returncode: int
    stdout: str
    stderr: str  # "" when it went to this process's stderr
    seconds: float  # wall time from start to exit
    peak_rss_mib: float  # the child's own ru_maxrss (from wait4)
    timed_out: bool  # killed after `timeout` seconds


def run_child(argv: list[str], *, timeout: float | None = None, pass_stderr: bool = False) -> ChildRun:
    """Run `argv` to its end (killed after `timeout` s): its output, wall seconds and peak RSS."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=None if pass_stderr else err)
        fired = threading.Event()

        def kill() -> None:
            fired.set()
            proc.kill()

        killer = threading.Timer(timeout, kill) if timeout is not None else None
        if killer is not None:
            killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            if killer is not None:
                killer.cancel()
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildRun(proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                        seconds, usage.ru_maxrss / 1024, fired.is_set())


def measure_in_child(script: str, args: list[str]) -> dict:
    """Run `script ARGS` in a fresh interpreter; return the JSON object it prints last.

    A child that fails raises ToolError carrying the last line of its stderr.
    """
    run = run_child([sys.executable, script, *args])
    if run.returncode != 0:
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        raise ToolError(lines[-1] if lines else f"exit status {run.returncode}")
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    if not lines:
        raise ToolError("child printed no result")
    return json.loads(lines[-1])


def child_main(prefix: str, measure: Callable[[], dict]) -> int:
    """The child's side of `measure_in_child`: print the figure as JSON (exit 0), or why its check failed (1)."""
    try:
        result = measure()
    except CheckFailed as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


# -- measuring --------------------------------------------------------------------------------


class Stopwatch:
    """Wall and CPU seconds of a `with` block.

    Both are reported: on a loaded machine the wall time of a CPU-bound
    figure includes waiting for a core, and the CPU time shows how much.
    """

    def __enter__(self) -> Stopwatch:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = time.perf_counter() - self._wall
        self.cpu_seconds = time.process_time() - self._cpu

    def rates(self, count: int, unit: str) -> dict[str, float]:
        """The figures of `count` `unit` done in the block: seconds, CPU seconds and `unit`_per_s."""
        return {"seconds": self.seconds, "cpu_seconds": self.cpu_seconds, f"{unit}_per_s": count / self.seconds}


def peak_rss_mib() -> float:
    """Peak resident set of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- workloads --------------------------------------------------------------------------------


def value_of(i: int) -> bytes:
    """The 60-byte value stored under key `(i,)`."""
    return b"%010d" % i * 6


def insert_keys(engine: Engine, stop: int, per_tx: int, *, start: int = 0,
                after_tx: Callable[[int], None] | None = None) -> None:
    """Keys `(start,)` .. `(stop - 1,)` into the inodes tree, `per_tx` per transaction.

    `after_tx(t)` runs after the t-th transaction (counted from 1) commits.
    """
    from pyfs.format.records import Tree

    for tx, first in enumerate(range(start, stop, per_tx), 1):
        with engine.transaction() as t:
            for i in range(first, min(stop, first + per_tx)):
                t.put(Tree.INODES, (i,), value_of(i))
        if after_tx is not None:
            after_tx(tx)


def walk_fs(fs: FileSystem) -> Iterator[tuple[tuple[bytes, ...], object]]:
    """(path, attr) of every name under the root of a mounted `FileSystem`, parents before children."""
    from pyfs.format.records import ROOT_INO

    stack: list[tuple[int, tuple[bytes, ...]]] = [(ROOT_INO, ())]
    while stack:
        ino, path = stack.pop()
        for name, attr, _cookie in list(fs.readdir(ino)):
            if name in (b".", b".."):
                continue
            yield path + (name,), attr
            if stat.S_ISDIR(attr.mode):
                stack.append((attr.ino, path + (name,)))


def read_fs_file(fs: FileSystem, ino: int, size: int, chunk: int = MIB) -> Iterator[bytes]:
    """The content of file `ino` (`size` bytes), in pieces of up to `chunk` bytes, through the core API."""
    fh = fs.open(ino, os.O_RDONLY)
    try:
        pos = 0
        while pos < size:
            piece = fs.read(fh, pos, min(chunk, size - pos))
            if not piece:
                break
            yield piece
            pos += len(piece)
    finally:
        fs.release(fh)


# -- reporting --------------------------------------------------------------------------------


def table_lines(rows: Sequence[Sequence[str]], right: Container[int] = (), *, rule: bool = False) -> list[str]:
    """`rows` (the first is the header) as aligned columns; `right`: the columns aligned right;
    `rule`: a line of dashes under the header."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    if rule:
        rows = [rows[0], ["-" * w for w in widths], *rows[1:]]
    return ["  ".join(cell.rjust(widths[c]) if c in right else cell.ljust(widths[c])
                      for c, cell in enumerate(row)).rstrip() for row in rows]
