"""fsck as a whole: check; then, when asked, repair and check again.

Promises (DESIGN.md invariants 7 and 9; proven by tests/test_fsck.py):
- `fsck` in mode "check" never writes (the CLI opens the image read-only as
  well).  It checks the filesystem as mount would see it after replay and
  reports what mount would finish (replay, torn tail, logged operations,
  orphans) as notes, not problems.
- A clean image (newest checkpoint CLEAN, nothing to replay) gets the quick
  check (superblocks, journal chain, root nodes) unless `force`.
- Mode "preen" repairs only when every problem found is safe to repair
  without a decision; otherwise it writes nothing and exits 4.  Modes "yes"
  and "ask" repair what they may (ask: what the user accepts).
- A repair ends with mount's recovery, a recount of every bucket, and a
  full re-check that must find nothing; only then is the image closed with
  the CLEAN flag.  Anything left makes the exit code 4.
- Exit codes are fsck(8)'s: 0 clean, 1 repaired, 4 problems left, 8 cannot
  check, 32 cancelled (16, usage, is the CLI's).
"""

from __future__ import annotations

import stat
import time
from dataclasses import dataclass, field

from ..engine.device import Device
from ..format.records import Tree
from .checks import PASSES, Context, check_space, region_bytes, verify_data
from .findings import Finding
from .repair import DataLost, Repairer, reconcile_space
from .report import Report
from .scan import ImageRead, TreesRead, Unusable, check_roots, read_image, read_trees, tree_total
from .state import State

EXIT_OK = 0
EXIT_FIXED = 1
EXIT_UNFIXED = 4
EXIT_ERROR = 8
EXIT_USAGE = 16
EXIT_CANCELLED = 32

MODES = ("check", "preen", "yes", "ask")
CONNECTIVITY_ROUNDS = 50


@dataclass
class Options:
    mode: str = "check"
    force: bool = False
    verify_data: bool = False


@dataclass
class Result:
    exit_code: int = EXIT_OK
    mode: str = "check"
    full: bool = True
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def as_json(self, image: str) -> dict:
        return {
            "image": image,
            "mode": self.mode,
            "full_check": self.full,
            "exit_code": self.exit_code,
            "error": self.error,
            "problems": [f.as_json() for f in self.findings],
            "notes": self.notes,
            "summary": {
                **self.stats,
                "problems": len(self.findings),
                "fixed": sum(1 for f in self.findings if f.fixed),
                "seconds": round(self.seconds, 3),
            },
        }


class Cancelled(Exception):
    """The user answered q."""


@dataclass
class Analysis:
    img: ImageRead
    full: bool = True
    trees: TreesRead | None = None
    ctx: Context | None = None
    open_findings: list[Finding] = field(default_factory=list)
    passes: list[tuple[str, list[Finding]]] = field(default_factory=list)
    data_findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pending: bool = False  # mount would have work to do (replay, orphans, logged ops...)
    stats: dict = field(default_factory=dict)

    @property
    def findings(self) -> list[Finding]:
        return self.open_findings + [f for _, fs in self.passes for f in fs] + self.data_findings


def plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def stats_of(state: State) -> dict:
    files = dirs = data = 0
    for inode in state.inodes.values():
        if stat.S_ISDIR(inode.mode):
            dirs += 1
        else:
            files += 1
        data += max(0, inode.data_bytes)
    used = sum(max(0, info.live_bytes) for info in state.alloc.values())
    return {"files": files, "directories": dirs, "bytes_used": used, "data_bytes": data}


def analyse(device: Device, opts: Options, report: Report) -> Analysis:
    """Read and check the image without writing; Unusable if it cannot be checked."""
    img = read_image(device)
    a = Analysis(img, notes=list(img.notes))
    if not opts.force and img.clean and not img.findings:
        damage = check_roots(img)
        if not damage:
            a.full = False
            roots = img.checkpoint.roots or {}
            a.stats = {"inodes": roots[int(Tree.INODES)].nkeys if int(Tree.INODES) in roots else 0}
            a.notes.append("closed cleanly: quick check only (superblocks, journal, btree roots); -f checks in full")
            return a
        a.notes.append(f"quick check of a clean image found damage ({damage[0]}): checking in full")
    with report.bar("reading btrees", tree_total(img)) as bar:
        trees = read_trees(img, bar.advance)
    state = State(img.sb)
    state.load(trees.raw)
    ctx = Context(img.sb, state, trees.node_addrs)
    a.trees, a.ctx = trees, ctx
    a.open_findings = img.findings + trees.findings + check_space(ctx)
    for name, check in PASSES:
        with report.bar(f"checking {name}", len(state.inodes)) as bar:
            a.passes.append((name, check(ctx)))
            bar.advance(len(state.inodes))
    if opts.verify_data:
        with report.bar("verifying data", region_bytes(ctx) // 4096) as bar:
            a.data_findings = verify_data(ctx, device, img.seed, lambda n: bar.advance(n // 4096))
    a.notes += _pending_notes(img, trees, state)
    a.pending = bool(trees.replayed or img.journal.dropped or not img.clean or state.logged_ops or state.orphans)
    a.stats = stats_of(state)
    return a


def _pending_notes(img: ImageRead, trees: TreesRead, state: State) -> list[str]:
    notes = []
    if trees.replayed:
        chain = img.journal.chain
        notes.append(f"journal: {plural(trees.replayed, 'entry', 'entries')} after checkpoint {chain[0].entry.seq} "
                     f"to replay (seq {chain[1].entry.seq}..{chain[trees.replayed].entry.seq}); mount replays them")
    elif not img.clean and img.journal.corruption is None:
        notes.append("the image was not closed cleanly (nothing to replay)")
    for key, op in sorted(state.logged_ops.items()):
        notes.append(f"mount will finish the interrupted {_describe_op(op)}")
    deletes, _, _ = state.pending_ops()
    orphans = sorted(state.orphans - deletes)
    if orphans:
        shown = ", ".join(map(str, orphans[:20])) + (", ..." if len(orphans) > 20 else "")
        notes.append(f"mount will delete {plural(len(orphans), 'unlinked inode')} still open at the crash: {shown}")
    return notes


def _describe_op(op) -> str:
    ino = op.args["ino"]
    if op.kind == "truncate":
        return f"truncate of inode {ino} to {op.args['size']} bytes"
    if op.kind == "delete":
        return f"deletion of inode {ino}"
    if op.kind == "rmtree":
        return f"removal of the directory tree of inode {ino}"
    if op.kind in ("collapse", "insert"):
        return f"{op.kind} of {op.args['length']} bytes at {op.args['offset']} in inode {ino}"
    return f"{op.kind} of bytes {op.args['start']}..{op.args['end']} of inode {ino}"


class _Decider:
    """Whether to make a repair: always (-y), if safe (-p), or as the user answers."""

    def __init__(self, mode: str, report: Report) -> None:
        self.mode = mode
        self.report = report
        self.all = mode == "yes"

    def __call__(self, f: Finding) -> bool:
        if self.all:
            return True
        if self.mode == "preen":
            return f.safe
        f.asked = True
        answer = self.report.ask(f)
        if answer == "q":
            raise Cancelled()
        if answer == "a":
            self.all = True
        return answer in ("y", "a")


def fsck(device: Device, opts: Options, report: Report) -> Result:
    """Check (and, by `opts.mode`, repair) the image on `device`; the caller closes the device."""
    start = time.monotonic()
    result = Result(mode=opts.mode)
    try:
        a = analyse(device, opts, report)
        result.full, result.notes, result.stats = a.full, a.notes, a.stats
        for note in a.notes:
            report.note(note)
        findings = a.findings
        if opts.mode == "check" or not (findings or a.pending):
            for f in findings:
                report.problem(f, "found")
            result.findings = findings
            result.exit_code = EXIT_UNFIXED if findings else EXIT_OK
        elif opts.mode == "preen" and any(not f.safe for f in findings):
            for f in findings:
                f.error = "needs a decision" if not f.safe else "left for the run that repairs the rest"
                report.problem(f, "not fixed")
            report.note("UNEXPECTED INCONSISTENCY: nothing was changed; run fsck.pyfs -y (or without -p, "
                        "to be asked) to repair")
            result.findings = findings
            result.exit_code = EXIT_UNFIXED
        else:
            _repair(device, a, opts, report, result)
    except Unusable as exc:
        result.error = str(exc)
        report.error(str(exc))
        result.exit_code = EXIT_ERROR
    except Cancelled:
        report.note("cancelled: the repairs made so far are kept (each is a complete transaction)")
        result.exit_code = EXIT_CANCELLED
    result.seconds = time.monotonic() - start
    return result


def _repair(device: Device, a: Analysis, opts: Options, report: Report, result: Result) -> None:
    assert a.trees is not None and a.ctx is not None
    decide = _Decider(opts.mode, report)
    rep = Repairer(device, a.img.journal, a.trees, a.ctx)
    findings: list[Finding] = []
    result.findings = findings

    def settle(f: Finding) -> None:
        findings.append(f)
        report.problem(f, "fixed" if f.fixed else "not fixed")

    try:
        # 1. Repairs the open makes: all of them, or nothing is written.
        planned: list[Finding] = []
        blocked = False
        for f in a.open_findings:
            if not f.fixable:
                settle(f)
            elif decide(f):
                assert f.action is not None
                f.action(rep)
                planned.append(f)
            else:
                f.error = "declined"
                settle(f)
                blocked |= f.kind != "superblock"
        if blocked:
            _report_rest(a, report, findings, "not repaired: a repair it depends on was declined")
            result.exit_code = EXIT_UNFIXED
            return
        try:
            if planned or a.pending:
                rep.open()
        except (OSError, ValueError) as exc:
            result.error = f"cannot open the image for repair: {exc}"
            report.error(result.error)
            for f in planned:
                f.error = "the open for repair failed"
                settle(f)
            _report_rest(a, report, findings, "not repaired: the image could not be opened for repair")
            result.exit_code = EXIT_UNFIXED
            return
        for f in planned:
            f.fixed = True
            settle(f)

        # 2. Every pass again, on the state the repairs before it left.
        for name, check in PASSES:
            for _ in range(CONNECTIVITY_ROUNDS if name == "connectivity" else 1):
                progress = False
                for f in check(rep.ctx):
                    if not f.fixable:
                        settle(f)
                        continue
                    if not decide(f):
                        f.error = "declined"
                        settle(f)
                        continue
                    assert f.action is not None
                    try:
                        f.action(rep)
                        f.fixed = progress = True
                    except DataLost as exc:
                        f.fixed = progress = True
                        f.error = str(exc)
                    except (OSError, ValueError) as exc:
                        if rep.engine is None or rep.engine.failed is not None:
                            raise
                        f.error = f"repair failed: {exc}"
                    settle(f)
                if not progress:
                    break
        for f in a.data_findings:
            settle(f)

        if rep.engine is None:  # every repair declined or impossible: nothing was written
            result.exit_code = EXIT_UNFIXED if any(not f.fixed for f in findings) else EXIT_OK
            return
        engine = rep.engine

        # 3. What mount would do, a recount of every bucket, and a checkpoint.
        try:
            resumed, orphans = rep.recover()
        except (ValueError, KeyError, TypeError) as exc:  # left-over damage the user chose to keep
            report.error(f"finishing logged operations and orphans failed: {exc!r}")
            resumed = orphans = 0
        if resumed or orphans:
            report.note(f"finished {plural(resumed, 'interrupted operation')} and deleted "
                        f"{plural(orphans, 'orphaned inode')}, as mount does")
        rewritten = reconcile_space(engine)
        if rewritten:
            report.info(f"recounted {rewritten} buckets after the repairs (nodes of rebuilt btrees released)")
        engine.checkpoint()
    except Cancelled:
        if rep.engine is not None:
            rep.engine.close(clean=False)
        raise
    except OSError as exc:
        result.error = f"repair stopped by an I/O error: {exc}"
        report.error(result.error)
        if rep.engine is not None:
            rep.engine.close(clean=False)
        result.exit_code = EXIT_ERROR
        return

    # 4. The proof: a full check of what is on the disk now.
    report.quiet = True
    try:
        again = analyse(device, Options(force=True), report)
    finally:
        report.quiet = False
    known = {(f.kind, f.where) for f in findings if not f.fixed}
    for f in again.findings:
        if (f.kind, f.where) not in known:
            f.error = "still there after the repair"
            settle(f)
    engine.close(clean=not again.findings)
    result.stats = again.stats
    if any(not f.fixed for f in findings):
        result.exit_code = EXIT_UNFIXED
    else:
        result.exit_code = EXIT_FIXED if findings else EXIT_OK


def _report_rest(a: Analysis, report: Report, findings: list[Finding], why: str) -> None:
    for _, fs in a.passes:
        for f in fs:
            f.error = why
            findings.append(f)
            report.problem(f, "not fixed")
    for f in a.data_findings:
        findings.append(f)
        report.problem(f, "not fixed")
