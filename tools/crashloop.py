#!/usr/bin/env python3
"""Kill-and-remount crash loop and power-loss replay against a real pyfs mount.

Makes an image, mounts it with FUSE (`pyfs mount --foreground`, a child
process of this one), and runs a seeded random workload through plain
system calls (tools/crashloop_workload.py) while an in-memory model
(tools/crashloop_model.py) follows every call that returned.  Every
operation, completed fsync and round event goes to `ops.jsonl` in the work
directory.  At a random moment (--kill-after A:B seconds) the daemon gets
SIGKILL; the dead mount is cleaned up (`fusermount3 -uz`), and then:

1. `fsck -n` on the unmounted image exits 0 (a crash image only has
   "pending" work, which fsck reports as notes);
2. after a remount (journal replay), everything a completed fsync (or long
   operation, or flush) made durable is there with the right content;
3. the visible tree equals the model after some prefix of the logged
   operations, at or after the last durability point (each operation
   atomic, order kept; a write(2) that reached pyfs as several FUSE
   requests may show a prefix of itself in file order: a "torn write");
4. no file holds data it was never given: file data is stamped with (file,
   generation, offset), and a stamp of another file is reported as such.

The workload then continues from the recovered state.  With --power-cut the
daemon also records every write and flush (pyfs/engine/recorder.py); after each
round crash images are rebuilt from that log (tools/crashloop_power.py) and
checks 1-4 run on each, in process.  Some rounds (--mount-kill) kill the
daemon while it mounts, so a crash during replay is covered too.

    python tools/crashloop.py --rounds 20 --power-cut --images 10 --seed 1
    python tools/crashloop.py --duration 3600 --kill-after 0.5:5

Exit status: 0 no violation, 1 violations (the work directory, with the
image, the logs and the seed, is kept and named in the report;
tools/crashloop_replay.py re-checks a kept image offline), 2 usage.
A run is reproduced by its seed up to the timing of the daemon: the
operations chosen depend only on the seed and on which prefix survived
each kill.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

from crashloop_model import (  # noqa: E402
    CHUNK, UNIT, Entry, Model, ModelError, Op, TreeState, chunk_digest, content_digest, describe_unit,
    diff_states, entry_of, file_kind, foreign_stamps,
)
from crashloop_workload import OpLog, RoundLog, Workload  # noqa: E402
from tools.common import ToolError, fsck_device, fusermount, is_mountpoint, mkfs, wait_mounted  # noqa: E402

log = logging.getLogger("crashloop")


# -- configuration and results ---------------------------------------------------------------------


@dataclass
class Config:
    seed: int = 1
    rounds: int | None = 10
    duration: float | None = None
    kill_after: tuple[float, float] = (0.3, 2.0)
    power_cut: bool = False
    images: int | None = None  # crash images per round (None: every flush boundary + as many cuts)
    long_ops: bool = True
    sabotage: str | None = None  # tests: damage the image after each kill ("drop-fsynced", "stale")
    image_size: str = "256M"
    journal_size: str | None = "1M"
    commit: float = 1.0
    mount_kill: float = 0.1  # share of rounds that kill the daemon while it mounts
    max_bytes: int = 24 << 20  # model file bytes above which the workload shrinks things
    workdir: str | None = None
    keep: bool = False
    max_violations: int = 1


@dataclass
class Violation:
    check: str  # "fsck", "durable", "prefix", "stale", "live", "mount", "recorder", "harness"
    round: int
    where: str  # "remount after kill", "crash image ...", ...
    message: str
    details: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"VIOLATION [{self.check}] round {self.round}, {self.where}: {self.message}",
                *("    " + d for d in self.details)]


@dataclass
class Summary:
    seed: int = 0
    rounds: int = 0
    kills: int = 0
    mount_kills: int = 0
    crash_images: int = 0
    operations: int = 0  # operations that returned
    operations_replayed: int = 0  # operations found applied after a crash (sum of recovered prefixes)
    operations_lost: int = 0  # returned, not made durable, and gone after a crash (allowed)
    max_lost_age: float = 0.0  # seconds between the oldest lost operation's return and the kill
    torn_writes: int = 0
    fsynced_bytes: int = 0  # file bytes a durability point covered and a check found intact, summed over checks
    failed_enospc: int = 0
    kinds: dict[str, int] = field(default_factory=dict)  # operations that returned, by kind
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    mount_seconds: float = 0.0
    image_seconds: float = 0.0
    workdir: str = ""

    def line(self) -> str:
        return (f"crashloop seed {self.seed}: {self.rounds} rounds, {self.kills} kills "
                f"({self.mount_kills} during mount), {self.crash_images} crash images checked, "
                f"{self.operations} operations run, {self.operations_replayed} replayed, "
                f"{self.operations_lost} lost uncommitted (oldest {self.max_lost_age:.2f} s before the kill), "
                f"{self.torn_writes} torn writes, {self.fsynced_bytes / 2**20:.1f} MiB of fsynced data verified, "
                f"{len(self.violations)} violations, {self.seconds:.1f} s")

    def timing(self) -> str:
        per_image = self.image_seconds / self.crash_images if self.crash_images else 0.0
        per_round = (self.seconds - self.image_seconds) / max(1, self.rounds)
        return (f"time: {per_round:.2f} s per kill round (mount, verify, workload, fsck), "
                f"{per_image * 1000:.0f} ms per crash image (fsck, mount, read, compare)")


class Abort(Exception):
    """Stop the run: enough violations, or the harness cannot go on."""


# -- mounts ---------------------------------------------------------------------------------------


class Daemon:
    """One `pyfs mount --foreground` child process; only this PID is ever signalled."""

    def __init__(self, image: str, mnt: str, workdir: str, commit: float, record: str | None) -> None:
        self.mnt = mnt
        argv = [sys.executable, "-m", "pyfs", "mount", image, mnt, "--foreground",
                "--log", os.path.join(workdir, "daemon.log"), "--commit", str(commit)]
        if record:
            argv += ["--record", record]
        self.output = open(os.path.join(workdir, "daemon.out"), "ab")
        self.proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=self.output,
                                     stderr=self.output)

    def wait_mounted(self, timeout: float = 60) -> None:
        wait_mounted(self.mnt, self.proc, timeout, what="pyfs mount", detail=lambda: " (see daemon.out / daemon.log)",
                     interval=0.005)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(60)
        self.output.close()

    def unmount_cleanly(self) -> int:
        """`fusermount3 -u`; the daemon's exit code (after its final checkpoint)."""
        result = fusermount(self.mnt)
        if result.returncode != 0:
            raise OSError(f"fusermount3 -u failed: {result.stderr.strip()}")
        code = self.proc.wait(300)
        self.output.close()
        return code


def lazy_unmount(mnt: str) -> None:
    if is_mountpoint(mnt):
        fusermount(mnt, lazy=True)


def run_fsck(image: str) -> tuple[int, str]:
    """`fsck -n IMAGE`, in process (the same code as fsck.py): (exit code, output)."""
    from pyfs.cli import fsck as fsck_cli

    out = io.StringIO()
    code = fsck_cli.main(["-n", image], stdout=out, stderr=out)
    return code, out.getvalue()


def copy_sparse(src: str, dst: str) -> None:
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)  # the copy is a durable starting point: what the disk holds
    finally:
        os.close(fd)
    subprocess.run(["cp", "--sparse=always", src, dst], check=True)


# -- reading the mounted tree -----------------------------------------------------------------------


def read_mounted_tree(root: str) -> TreeState:
    """The tree under `root` as a TreeState, through plain system calls."""
    entries: dict[str, Entry] = {".": _mounted_entry(root)}
    stack = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as it:
            names = sorted(e.name for e in it)
        for name in names:
            full = os.path.join(directory, name)
            path = prefix + name
            entries[path] = _mounted_entry(full)
            if entries[path].kind == "dir":
                stack.append((full, path + "/"))
    return TreeState(entries)


def _mounted_entry(full: str) -> Entry:
    st = os.lstat(full)
    kind = file_kind(st.st_mode)
    xattrs = {n: os.getxattr(full, n, follow_symlinks=False) for n in os.listxattr(full, follow_symlinks=False)}
    if kind == "file":
        digests = []
        size = 0
        with open(full, "rb", buffering=0) as f:
            while chunk := f.read(CHUNK):
                digests.append(chunk_digest(chunk))
                size += len(chunk)
        # st_size, not the bytes read: a size that disagrees with the data shows as both differing.
        return entry_of(st.st_mode, st.st_mtime_ns, st.st_ino, xattrs, size=st.st_size,
                        content=content_digest(size, digests))
    return entry_of(st.st_mode, st.st_mtime_ns, st.st_ino, xattrs,
                    target=os.readlink(full) if kind == "symlink" else "")


# -- expectations and the checks ----------------------------------------------------------------------


@dataclass
class Candidate:
    prefix: int  # operations of the round applied; len(applied) + 1 for "the in-flight one too"
    digest: bytes
    inflight: bool = False


class Expectation:
    """The states a crash of a round may leave: prefixes from the durable one on (checks 2 and 3)."""

    def __init__(self, rlog: RoundLog, final: Model, kill_time: float | None = None) -> None:
        self.rlog = rlog
        self.final = final  # the model after every applied op
        self.kill_time = kill_time  # time.monotonic() of the SIGKILL that ended the round
        self.inflight_digest: bytes | None = None
        if rlog.inflight is not None:
            m = final.copy()
            try:
                m.apply(rlog.inflight)
                self.inflight_digest = m.state().digest()
            except ModelError as exc:
                log.debug("in-flight %s does not apply: %s", rlog.inflight.describe(), exc)

    def bounds(self, log_pos: int | None) -> tuple[int, int, bool]:
        """(lowest prefix, highest prefix, in-flight possible) for a crash at `log_pos` (None: the end)."""
        rlog = self.rlog
        lo = rlog.durable_prefix(log_pos)
        if log_pos is None:
            hi = len(rlog.applied)
        else:
            hi = sum(1 for p in rlog.start_pos if p <= log_pos)
        inflight = (self.inflight_digest is not None and hi == len(rlog.applied)
                    and (log_pos is None or rlog.inflight_pos <= log_pos))
        return lo, hi, inflight

    def candidates(self, log_pos: int | None) -> list[Candidate]:
        lo, hi, inflight = self.bounds(log_pos)
        out = [Candidate(k, self.rlog.digests[k]) for k in range(lo, hi + 1)]
        if inflight:
            assert self.inflight_digest is not None
            out.append(Candidate(hi + 1, self.inflight_digest, inflight=True))
        return out

    def model_at(self, prefix: int, inflight: bool = False) -> Model:
        """The model after `prefix` operations (and the in-flight one)."""
        if inflight:
            m = self.final.copy()
            assert self.rlog.inflight is not None
            m.apply(self.rlog.inflight)
        elif prefix == len(self.rlog.applied):
            m = self.final.copy()
        else:
            m = self.rlog.model_after(prefix)
        m.prune()
        return m


@dataclass
class Outcome:
    """A check's verdict: the matched prefix (and how to rebuild its model), or a violation."""

    model: Model | None  # the recovered model, when already built (torn writes)
    prefix: int = 0
    inflight: bool = False
    torn: bool = False
    violation: Violation | None = None
    torn_op: Op | None = None  # the part of a write that landed, applied after `prefix` operations

    def recovered(self, expect: "Expectation") -> Model:
        if self.model is None:
            self.model = expect.model_at(min(self.prefix, len(expect.rlog.applied)), self.inflight)
        return self.model


def check_tree(state: TreeState, expect: Expectation, log_pos: int | None, read_content, where: str,
               round_no: int) -> Outcome:
    """Checks 2-4 of a recovered tree against the states a crash may leave.

    `read_content(path) -> bytes` reads a visible file again (for torn
    writes and for the report).
    """
    cands = expect.candidates(log_pos)
    digest = state.digest()
    matches = [c for c in cands if c.digest == digest]
    if matches:
        best = max(matches, key=lambda c: c.prefix)
        return Outcome(None, best.prefix, best.inflight)
    torn = _torn_write(state, expect, log_pos, read_content)
    if torn is not None:
        return torn
    return Outcome(None, violation=_explain(state, expect, log_pos, read_content, where, round_no))


def _torn_write(state: TreeState, expect: Expectation, log_pos: int | None, read_content) -> Outcome | None:
    """The tree is state j plus a prefix of write j+1, for some write in the allowed range.

    One write(2) can reach pyfs as several FUSE WRITE requests, each its own
    transaction (the kernel ends a request at a partly written page that is
    not cached; pyfs cuts a write over more than STEP_EXTENTS extents), so a
    crash may keep a prefix of it in file order: every byte old or new.
    """
    lo, hi, inflight = expect.bounds(log_pos)
    rlog = expect.rlog
    before = rlog.model_after(lo)
    tries = [(j, rlog.applied[j], False) for j in range(lo, hi)]
    if inflight and rlog.inflight is not None:
        tries.append((hi, rlog.inflight, True))
    for j, op, is_inflight in tries:
        if op.kind == "write":
            found = _torn_at(state, before, j, op, is_inflight, read_content)
            if found is not None:
                return found
        if not is_inflight:
            before.apply(op)
    return None


def _torn_at(state: TreeState, before: Model, j: int, op: Op, is_inflight: bool, read_content) -> Outcome | None:
    fid = op.args["fid"]
    names = set(before.names_of(fid))
    if not names:
        return None  # a write to an unlinked file changes nothing visible
    expected = before.state()
    others = TreeState({p: e for p, e in expected.entries.items() if p not in names})
    if others.digest() != TreeState({p: e for p, e in state.entries.items() if p not in names}).digest():
        return None
    got = read_content(min(names))
    old = bytes(before.nodes[fid].data or b"")
    off, n = op.args["offset"], (op.args["length"] if is_inflight else op.args["written"])
    for landed in _landed_candidates(old, got, off, n):
        trial = before.copy()
        part = Op(op.index, "write", {**op.args, "written": landed})
        trial.apply(part)
        if trial.state().digest() == state.digest():
            trial.prune()
            return Outcome(trial, j, torn=True, torn_op=part)
    return None


def _landed_candidates(old: bytes, got: bytes, off: int, n: int) -> list[int]:
    """How many bytes of a write at `off` may have landed, judging by the visible content."""
    if len(got) > len(old):
        c = len(got) - off
        return [c] if 0 < c < n else []
    # Same size: the new data runs from `off` up to the first byte that is old again.
    end = min(len(got), off + n)
    c = off
    step = 4096
    while c < end:  # skip whole pages that differ from the old content
        hi = min(end, c + step)
        if got[c:hi] == old[c:hi]:
            break
        c = hi
    while c > off and got[c - 1] == old[c - 1]:
        c -= 1
    while c < end and got[c] != old[c]:
        c += 1
    return [c - off - d for d in range(0, 64) if 0 < c - off - d < n]


def _explain(state: TreeState, expect: Expectation, log_pos: int | None, read_content, where: str,
             round_no: int) -> Violation:
    """No candidate matches: name the first divergence from the closest one, and check 2 and 4 findings."""
    lo, hi, inflight = expect.bounds(log_pos)
    rlog = expect.rlog
    m = rlog.model_after(lo)
    durable = m.state()
    # Paths whose file and content stay the same in every allowed state: what fsync promised (check 2).
    steady = {p: e for p, e in durable.entries.items()}
    best: tuple[int, list[tuple[str, str]]] | None = None
    for k in range(lo, hi + 1):
        if k > lo:
            m.apply(rlog.applied[k - 1])
        st = m.state()
        for p in list(steady):
            e = st.entries.get(p)
            if e is None or (e.ino, e.kind, e.content, e.target) != (steady[p].ino, steady[p].kind,
                                                                   steady[p].content, steady[p].target):
                del steady[p]
        d = diff_states(st, state, limit=1000)
        if best is None or len(d) <= len(best[1]):
            best = (k, d)
    if inflight and rlog.inflight is not None:
        try:
            trial = m.copy()
            trial.apply(rlog.inflight)
            st = trial.state()
            for p in list(steady):
                e = st.entries.get(p)
                if e is None or e.content != steady[p].content or e.ino != steady[p].ino:
                    del steady[p]
        except ModelError:
            pass
    assert best is not None
    k, diffs = best
    closest = expect.model_at(k)
    extra = f" (+ the in-flight {rlog.inflight.describe()})" if inflight and rlog.inflight else ""
    details = [f"allowed: prefixes {lo}..{hi} of round {rlog.number}'s {len(rlog.applied)} operations{extra}; "
               f"closest is {k} with {len(diffs)} differing paths"]
    check = "prefix"
    lost = [p for p, e in steady.items() if p != "." and (state.entries.get(p) is None or
            (state.entries[p].kind, state.entries[p].content, state.entries[p].target) != (e.kind, e.content, e.target))]
    if lost and lo > 0:
        check = "durable"
        details.append(f"made durable by {rlog.applied[lo - 1].describe()} and unchanged since, but missing "
                       f"or different: {', '.join(lost[:8])}")
    for path, what in diffs[:10]:
        details.append(f"{path}: {what}; last named by {_last_op(expect, k, path)}")
    # Check 4: stamps of other files, or old data, where the closest state has different bytes.
    for path, _what in diffs[:10]:
        e = closest.lookup(path)
        a = state.entries.get(path)
        if e is None or e.kind != "file" or a is None or a.kind != "file":
            continue
        try:
            got = read_content(path)
        except OSError as exc:
            details.append(f"{path}: cannot read: {exc}")
            continue
        foreign = foreign_stamps(got, e.fid)
        if foreign:
            check = "stale"
            details.append(f"{path} (file {e.fid}) holds data of file(s) {sorted(foreign)[:5]} (check 4)")
        want = bytes(e.data or b"")
        at = next((i for i in range(0, min(len(got), len(want)), UNIT) if got[i : i + UNIT] != want[i : i + UNIT]),
                  None)
        if at is not None:
            details.append(f"{path}: first differing unit at byte {at}: found {describe_unit(got[at:at + UNIT])}, "
                           f"expected {describe_unit(want[at:at + UNIT])}")
    first = diffs[0] if diffs else ("?", "digest differs")
    return Violation(check, round_no, where, f"recovered tree matches no allowed prefix; first divergence: "
                     f"{first[0]}: {first[1]}", details)


def _last_op(expect: Expectation, k: int, path: str) -> str:
    for op in reversed(expect.rlog.applied[:k + 1]):
        if path in json.dumps(op.args):
            return op.describe()
    return "an earlier round"


# -- the loop --------------------------------------------------------------------------------------------


class CrashLoop:
    """One run: rounds of workload, kill, checks (see the module docstring)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.summary = Summary(seed=cfg.seed)
        self.rng = random.Random(f"crashloop-harness-{cfg.seed}")
        self.image_rng = random.Random(f"crashloop-images-{cfg.seed}")
        self.own_workdir = cfg.workdir is None
        self.workdir = cfg.workdir or tempfile.mkdtemp(prefix="crashloop-")
        os.makedirs(self.workdir, exist_ok=True)
        self.summary.workdir = self.workdir
        self.image = os.path.join(self.workdir, "pyfs.img")
        self.mnt = os.path.join(self.workdir, "mnt")
        os.makedirs(self.mnt, exist_ok=True)
        self.oplog = OpLog(os.path.join(self.workdir, "ops.jsonl"))
        umask = os.umask(0o022)
        os.umask(umask)
        self.umask = umask
        self.daemon: Daemon | None = None
        self.workload: Workload | None = None
        self.long_ops = cfg.long_ops and self._client_available()

    def _client_available(self) -> bool:
        try:
            import pyfs.client.commands  # noqa: F401
        except ImportError as exc:
            self.summary.notes.append(f"long operations off: pyfs.client cannot be imported ({exc})")
            return False
        return True

    # -- bookkeeping -----------------------------------------------------------------------------------

    def violation(self, v: Violation) -> None:
        self.summary.violations.append(v)
        for line in v.lines():
            print(line, flush=True)
        self.oplog.event("violation", **asdict(v))
        if len(self.summary.violations) >= self.cfg.max_violations:
            raise Abort()

    def run(self) -> Summary:
        cfg = self.cfg
        start = time.monotonic()
        self.oplog.event("run", config=asdict(cfg), workdir=self.workdir)
        try:
            mkfs(self.image, cfg.image_size, journal_size=cfg.journal_size)
            model = Model(self.umask)
            rlog0 = RoundLog(0, model.copy())
            rlog0.begin()
            expect = Expectation(rlog0, model)
            workload = Workload(model, random.Random(f"crashloop-workload-{cfg.seed}"), self.mnt, self.oplog,
                                long_ops=self.long_ops, max_bytes=cfg.max_bytes, next_index=1, next_fid=2)
            self.workload = workload
            number = 0
            while True:
                if cfg.rounds is not None and number >= cfg.rounds:
                    break
                if cfg.duration is not None and time.monotonic() - start >= cfg.duration:
                    break
                number += 1
                expect = self._round(number, expect, workload)
                self.summary.rounds = number
            self._final(expect, workload)
        except Abort:
            pass
        finally:
            self._cleanup()
            self.summary.seconds = time.monotonic() - start
            if self.workload is not None:
                self.summary.notes.extend(self.workload.notes)
            if self.summary.max_lost_age > cfg.commit + 0.5:
                self.summary.notes.append(
                    f"an operation was lost {self.summary.max_lost_age:.2f} s after it returned: more than the "
                    f"commit interval ({cfg.commit:g} s; DESIGN.md invariant 6) plus 0.5 s")
            self.oplog.event("summary", **{k: v for k, v in asdict(self.summary).items() if k != "violations"})
            self.oplog.close()
        if not self.summary.violations and self.own_workdir and not cfg.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return self.summary

    def _cleanup(self) -> None:
        if self.daemon is not None and self.daemon.proc.poll() is None:
            self.daemon.kill()
        with contextlib.suppress(Exception):
            lazy_unmount(self.mnt)

    # -- one round --------------------------------------------------------------------------------------

    def _start(self, number: int) -> str | None:
        """Copy the image (the base of this round's power-cut images, and the evidence); start the daemon."""
        copy_sparse(self.image, os.path.join(self.workdir, "pre-mount.img"))
        record = os.path.join(self.workdir, "record.log") if self.cfg.power_cut else None
        self.oplog.event("mount", round=number)
        self.daemon = Daemon(self.image, self.mnt, self.workdir, self.cfg.commit, record)
        return record

    def _after_kill(self, number: int, record: str | None, expect: Expectation, positions: bool = True) -> None:
        """The daemon is dead: clean up the mount, fsck -n (check 1), power-cut images.

        `positions`: the recording log positions of `expect` belong to this
        round's log (False after a kill during mount: any state the previous
        round may have left is allowed at every cut).
        """
        lazy_unmount(self.mnt)
        if is_mountpoint(self.mnt):
            self.violation(Violation("harness", number, "after SIGKILL", "fusermount3 -u -z left the mount"))
            raise Abort()
        self._fsck(number, "image after SIGKILL", log_code=True)
        if record is not None:
            self._power_cut(number, record, expect, positions)
        if self.cfg.sabotage and positions:
            self._sabotage(number, expect)

    def _sabotage(self, number: int, expect: Expectation) -> None:
        """Tests only: damage what fsync promised, consistently, so that only checks 2-4 can see it.

        "drop-fsynced" unlinks a file that the last durability point covered
        and nothing changed since; "stale" overwrites its first bytes with
        another file's stamps.  Both go through the core API, so fsck stays
        happy and the next remount must report the violation.
        """
        from pyfs.engine.device import FileDevice
        from pyfs.format.records import ROOT_INO
        from pyfs.fs import FileSystem

        from crashloop_model import pattern

        durable = expect.model_at(expect.rlog.durable_prefix())
        final = expect.final
        targets = []
        for path, node in durable.walk():
            now = final.lookup(path)
            if node.kind == "file" and node.size >= UNIT and now is not None and now.fid == node.fid \
                    and now.data == node.data and (expect.rlog.inflight is None
                                                   or path not in json.dumps(expect.rlog.inflight.args)):
                targets.append((path, node))
        if not targets:
            return
        path, node = min(targets, key=lambda t: t[0])
        device = FileDevice.open(self.image)
        fs = FileSystem.mount(device)
        try:
            parent, ino = ROOT_INO, ROOT_INO
            *dirs, name = path.split("/")
            for part in dirs:
                parent = fs.lookup(parent, part.encode()).ino
            ino = fs.lookup(parent, name.encode()).ino
            if self.cfg.sabotage == "drop-fsynced":
                fs.unlink(parent, name.encode())
            else:
                fh = fs.open(ino, os.O_RDWR)
                fs.write(fh, 0, pattern(node.fid + 1, 1, 0, min(4096, node.size)))
                fs.release(fh)
        finally:
            fs.close()
            device.close()
        self.oplog.event("sabotage", round=number, how=self.cfg.sabotage, path=path)

    def _round(self, number: int, expect: Expectation, workload: Workload) -> Expectation:
        cfg = self.cfg
        record = self._start(number)
        assert self.daemon is not None
        if self.rng.random() < cfg.mount_kill:
            time.sleep(self.rng.uniform(0.0, 0.8))
            self.oplog.event("kill", round=number, during="mount")
            self.daemon.kill()
            self.summary.kills += 1
            self.summary.mount_kills += 1
            self._after_kill(number, record, expect, positions=False)
            return expect  # nothing was verified: the same states are still allowed
        t0 = time.monotonic()
        images_before, image_time_before = self.summary.crash_images, self.summary.image_seconds
        self._wait_mounted(number, "remount")
        model = self._verify_mounted(number, expect)
        self.summary.mount_seconds += time.monotonic() - t0
        rlog = RoundLog(number, model.copy())
        workload.model = model
        workload.killed.clear()
        workload.stop.clear()
        if record is not None:
            workload.log_pos = lambda path=record: os.stat(path).st_size
        else:
            workload.log_pos = lambda: 0
        thread = threading.Thread(target=workload.run_round, args=(rlog,), name=f"workload-{number}", daemon=True)
        kill_after = self.rng.uniform(*cfg.kill_after)
        thread.start()
        thread.join(kill_after)
        workload.killed.set()
        alive = self.daemon.proc.poll() is None
        self.oplog.event("kill", round=number, after=kill_after, ops=len(rlog.applied))
        kill_time = time.monotonic()
        self.daemon.kill()
        self.summary.kills += 1
        thread.join(60)
        if thread.is_alive():
            workload.stop.set()
            self.violation(Violation("harness", number, "after SIGKILL", "the workload is stuck in a system call"))
            raise Abort()
        self.summary.operations += len(rlog.applied)
        for op in rlog.applied:
            self.summary.kinds[op.kind] = self.summary.kinds.get(op.kind, 0) + 1
        self.summary.failed_enospc += rlog.failed
        if rlog.divergence is not None:
            why = rlog.divergence if alive else f"the daemon died by itself: {rlog.divergence}"
            self.violation(Violation("live", number, "while mounted", why, self._daemon_tail()))
        new_expect = Expectation(rlog, workload.model, kill_time)
        self._after_kill(number, record, new_expect)
        log.info("round %d: %d ops, kill after %.2f s; %.1f s in all, %d crash images in %.1f s", number,
                 len(rlog.applied), kill_after, time.monotonic() - t0, self.summary.crash_images - images_before,
                 self.summary.image_seconds - image_time_before)
        return new_expect

    def _daemon_tail(self) -> list[str]:
        lines: list[str] = []
        for name in ("daemon.out", "daemon.log"):
            with contextlib.suppress(OSError), open(os.path.join(self.workdir, name), errors="replace") as f:
                lines += [f"{name}: {ln.rstrip()}" for ln in f.readlines()[-8:]]
        return lines

    def _verify_mounted(self, number: int, expect: Expectation) -> Model:
        """Checks 2-4 on the remounted tree; returns the recovered model."""
        state = read_mounted_tree(self.mnt)

        def read_content(path: str) -> bytes:
            with open(os.path.join(self.mnt, path), "rb") as f:
                return f.read()

        outcome = check_tree(state, expect, None, read_content, "remount after SIGKILL", number)
        if outcome.violation is not None:
            self.violation(outcome.violation)
            raise Abort()
        self._account(expect, outcome, None, remount=True)
        self.oplog.event("recovered", round=number, ops_round=expect.rlog.number, prefix=outcome.prefix,
                         of=len(expect.rlog.applied), inflight=outcome.inflight,
                         torn_op=asdict(outcome.torn_op) if outcome.torn_op else None)
        return outcome.recovered(expect)

    def _account(self, expect: Expectation, outcome: Outcome, log_pos: int | None, remount: bool) -> None:
        lo, hi, _ = expect.bounds(log_pos)
        rlog = expect.rlog
        if remount:
            self.summary.operations_replayed += min(outcome.prefix, len(rlog.applied))
            lost = len(rlog.applied) - min(outcome.prefix, len(rlog.applied))
            self.summary.operations_lost += lost
            if lost and expect.kill_time is not None:
                self.summary.max_lost_age = max(self.summary.max_lost_age,
                                                expect.kill_time - rlog.done_at[outcome.prefix])
        self.summary.fsynced_bytes += rlog.file_bytes[lo] if lo else 0
        self.summary.torn_writes += int(outcome.torn)

    def _final(self, expect: Expectation, workload: Workload) -> None:
        """Mount once more, verify, unmount cleanly, fsck -n."""
        number = self.summary.rounds + 1
        self._start(number)
        self._wait_mounted(number, "final mount")
        self._verify_mounted(number, expect)
        assert self.daemon is not None
        try:
            code = self.daemon.unmount_cleanly()
        except OSError as exc:
            self.violation(Violation("mount", number, "final unmount", str(exc), self._daemon_tail()))
            raise Abort() from None
        if code != 0:
            self.violation(Violation("mount", number, "final unmount", f"the daemon exited {code}",
                                     self._daemon_tail()))
        self._fsck(number, "image after a clean unmount")

    def _fsck(self, number: int, where: str, log_code: bool = False) -> None:
        """Check 1: `fsck -n` of the unmounted image exits 0 (`log_code`: its exit code goes to the ops log)."""
        code, out = run_fsck(self.image)
        if log_code:
            self.oplog.event("fsck", round=number, code=code)
        if code != 0:
            self.violation(Violation("fsck", number, where, f"fsck -n exited {code}",
                                     out.strip().splitlines()[-20:]))

    def _wait_mounted(self, number: int, where: str) -> None:
        """The daemon mounted, or a "mount" violation ends the run."""
        assert self.daemon is not None
        try:
            self.daemon.wait_mounted()
        except ToolError as exc:
            self.violation(Violation("mount", number, where, str(exc), self._daemon_tail()))
            raise Abort() from None

    # -- power cuts ----------------------------------------------------------------------------------------

    def _power_cut(self, number: int, record: str, expect: Expectation, positions: bool) -> None:
        """Checks 1-4 on crash images rebuilt from this round's recording log."""
        from crashloop_power import CrashPlanner, OverlayDevice, read_tree, replay_all, unfaithful_pages

        from pyfs.engine.recorder import FILE_HEADER, read_log
        from pyfs.fs import FileSystem

        t0 = time.monotonic()
        base_path = os.path.join(self.workdir, "pre-mount.img")
        if os.path.getsize(record) < FILE_HEADER.size:
            # Killed before the recorder wrote its header: nothing reached the image.
            size, records = os.path.getsize(base_path), []
        else:
            size, records = read_log(record)
        base_fd = os.open(base_path, os.O_RDONLY)
        real_fd = os.open(self.image, os.O_RDONLY)
        try:
            bad = unfaithful_pages(replay_all(base_fd, size, records), real_fd, records)
            if bad:
                self.violation(Violation("recorder", number, "recording log", f"the image differs from "
                                         f"base + log at {len(bad)} pages", [f"pages {bad[:20]}"]))
            planner = CrashPlanner(base_fd, size, records)
            for img in planner.images(self.image_rng, self.cfg.images):
                self.summary.crash_images += 1
                where = f"crash image {img.describe()}"
                result, out = fsck_device(OverlayDevice(img.image, read_only=True))
                if result.exit_code != 0:
                    self._keep_image(number, img)
                    self.violation(Violation("fsck", number, where, f"fsck -n exited {result.exit_code}",
                                             out.strip().splitlines()[-20:]))
                    continue
                try:
                    fs = FileSystem.mount(OverlayDevice(img.image))
                    state, _ = read_tree(fs)
                except Exception as exc:  # noqa: BLE001 - any failure to mount is the finding
                    self._keep_image(number, img)
                    self.violation(Violation("mount", number, where, f"mount failed: {exc!r}"))
                    continue

                def read_content(path: str, fs=fs) -> bytes:
                    _, contents = read_tree(fs, keep_content=True)
                    return contents[path]

                log_pos = img.log_pos if positions else None
                outcome = check_tree(state, expect, log_pos, read_content, where, number)
                if outcome.violation is not None:
                    self._keep_image(number, img)
                    self.violation(outcome.violation)
                    continue
                self._account(expect, outcome, log_pos, remount=False)
        finally:
            os.close(base_fd)
            os.close(real_fd)
            self.summary.image_seconds += time.monotonic() - t0

    def _keep_image(self, number: int, img) -> None:
        path = os.path.join(self.workdir, f"crash-r{number}-cut{img.cut}.img")
        img.image.save(path)
        shutil.copy(os.path.join(self.workdir, "record.log"), os.path.join(self.workdir, f"record-r{number}.log"))
        shutil.copy(os.path.join(self.workdir, "pre-mount.img"), os.path.join(self.workdir, f"base-r{number}.img"))
        self.oplog.event("kept", round=number, image=path, cut=img.cut)


# -- command line ------------------------------------------------------------------------------------------


def _range(text: str) -> tuple[float, float]:
    try:
        a, _, b = text.partition(":")
        lo, hi = float(a), float(b or a)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A:B seconds, got {text!r}") from None
    if lo < 0 or hi < lo:
        raise argparse.ArgumentTypeError(f"expected 0 <= A <= B, got {text!r}")
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Exit status: 0 no violation, 1 violations, 2 usage error.")
    p.add_argument("--seed", type=int, default=1, help="seed of the workload, kill times and crash images")
    p.add_argument("--rounds", type=int, help="kill rounds (default 10, or unlimited with --duration)")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="run rounds until this much time passed")
    p.add_argument("--kill-after", type=_range, default=(0.3, 2.0), metavar="A:B",
                   help="SIGKILL the daemon after a random time in [A, B] seconds (default 0.3:2)")
    p.add_argument("--power-cut", action="store_true",
                   help="record the device and check crash images rebuilt from the record")
    p.add_argument("--images", type=int, metavar="N",
                   help="crash images per round (default: every flush boundary plus as many random cuts)")
    p.add_argument("--no-long-ops", action="store_true", help="leave out collapse/insert/punch/zero/rmtree/flush")
    p.add_argument("--image-size", default="256M")
    p.add_argument("--journal-size", default="1M",
                   help="journal size of the image (default 1M: checkpoints and wrap-around come often, "
                        "and crash images scan fast)")
    p.add_argument("--commit", type=float, default=1.0, help="the daemon's commit interval (default 1 s)")
    p.add_argument("--mount-kill", type=float, default=0.1, metavar="P",
                   help="share of rounds that kill the daemon while it mounts (default 0.1)")
    p.add_argument("--max-violations", type=int, default=1, help="stop after this many (default 1)")
    p.add_argument("--workdir", help="work directory (default: a fresh one under $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the work directory even without violations")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--sabotage", choices=["drop-fsynced", "stale"], help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true", help="a line per round")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    logging.getLogger("pyfs").setLevel(logging.CRITICAL)  # crash images log their replays
    rounds = args.rounds if args.rounds is not None else (None if args.duration else 10)
    cfg = Config(seed=args.seed, rounds=rounds, duration=args.duration, kill_after=args.kill_after,
                 power_cut=args.power_cut, images=args.images, long_ops=not args.no_long_ops,
                 sabotage=args.sabotage,
                 image_size=args.image_size, journal_size=args.journal_size or None, commit=args.commit,
                 mount_kill=args.mount_kill, workdir=args.workdir, keep=args.keep,
                 max_violations=args.max_violations)
    summary = CrashLoop(cfg).run()
    if args.json:
        print(json.dumps(asdict(summary), indent=2, default=str))
    else:
        for note in summary.notes:
            print(f"note: {note}")
        print(summary.line())
        if args.verbose:
            print(summary.timing())
            print("operations: " + ", ".join(f"{k} {n}" for k, n in sorted(summary.kinds.items())))
        if summary.violations:
            print(f"kept for reproduction: {summary.workdir} (seed {summary.seed}; ops.jsonl, pyfs.img, "
                  f"pre-mount.img, daemon.log)")
    return 1 if summary.violations else 0


if __name__ == "__main__":
    sys.exit(main())
