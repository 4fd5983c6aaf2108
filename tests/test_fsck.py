"""fsck.pyfs finds and repairs every kind of damage, and leaves crash states to mount.

Promises proven here (pyfs/fsck/*, pyfs/cli/fsck.py; DESIGN.md invariants 5, 8, 9):
- For every image of the corpus (tests/fsck_corpus.py: one per problem fsck
  checks, each made the way a bug or a bad disk would): `fsck -n` exits 4
  and names the problem, `fsck -y` exits 1, a second `fsck -n` exits 0, the
  repaired image mounts, and every file the damage did not touch is there
  with its content, xattrs and link count.
- `-n` never writes a byte (the image's hash is unchanged).  A crash state
  (torn tail, replay pending, orphans, unfinished logged op) is not damage:
  `-n` exits 0 and says what mount will finish; `-y` finishes it, exit 0.
- Exit codes: clean 0; mounted (locked) 8; not pyfs 8; bad usage 16; `-p`
  on a problem needing a decision 4 (nothing written), on safe ones 1;
  interactive `q` 32 (run under a pty).
- Fuzzing: random flips and zeroed sectors in superblocks, journal and
  btree nodes never make fsck print a traceback or hang; after `-y` the
  image checks clean and mounts, or fsck exited 4 or 8 with a message.
- A power cut at every write of a `fsck -y` run leaves an image that a
  second `fsck -y` repairs to a clean one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pty
import random
import select
import signal
import subprocess
import sys
import time

import pytest

from fsck_corpus import (
    ALL,
    CASES,
    CRASH_LOST,
    CRASH_STATES,
    find_case,
    healthy_image,
    snapshot,
)
from pyfs.engine.device import FileDevice
from pyfs.engine.fault_device import FaultDevice, PowerCut
from pyfs.engine.engine import EngineOptions
from pyfs.fs import FileSystem
from pyfs.fsck import Options, Report, fsck
from pyfs.cli.fsck import main
from tools import fuzz_fsck

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FSCK = os.path.join(REPO, "fsck.py")


def run_fsck(path, *args: str) -> tuple[int, str]:
    """fsck in-process through its command line; returns (exit code, everything printed)."""
    out, err = io.StringIO(), io.StringIO()
    code = main([*args, str(path)], stdin=io.StringIO(), stdout=out, stderr=err)
    text = out.getvalue() + err.getvalue()
    assert "Traceback" not in text and "internal error" not in text, text
    return code, text


def digest(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write(path, image: bytes):
    with open(path, "wb") as f:
        f.write(image)
    return path


def intact(before: dict, after: dict, lost) -> list[str]:
    """Paths of `before` that the damage did not touch but that differ in `after`."""
    if lost == ALL:
        return []
    return [p for p, v in before.items()
            if not any(p == q or p.startswith(q + "/") for q in lost) and after.get(p) != v]


@pytest.fixture(scope="module")
def healthy() -> bytes:
    return healthy_image()


@pytest.fixture(scope="module")
def healthy_view(healthy) -> dict:
    return snapshot(healthy)


# -- the corpus ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fsck_finds_repairs_and_then_passes_each_damaged_image(case, healthy, healthy_view, tmp_path):
    image = write(tmp_path / "damaged.img", case.build(healthy))
    before = digest(image)

    code, text = run_fsck(image, "-n", "-f")
    assert code == 4, text
    for kind in case.kinds:
        assert f"[{kind}]" in text, (kind, text)
    assert digest(image) == before, "fsck -n wrote to the image"

    code, text = run_fsck(image, "-y", "-f")
    assert code == 1, text
    assert "NOT FIXED" not in text, text

    code, text = run_fsck(image, "-n", "-f")
    assert code == 0, text
    code, _ = run_fsck(image, "-n")
    assert code == 0

    repaired = open(image, "rb").read()
    after = snapshot(repaired)  # mounts through FileSystem and reads every file
    assert intact(healthy_view, after, case.lost) == []
    fs = FileSystem.mount(FaultDevice(repaired))  # a writable mount works too
    fs.close()


def test_files_cut_off_by_a_damaged_dirents_leaf_come_back_in_lost_and_found(healthy, healthy_view, tmp_path):
    image = write(tmp_path / "d.img", find_case("dirents leaf flipped").build(healthy))
    assert run_fsck(image, "-y", "-f")[0] == 1
    after = snapshot(open(image, "rb").read())
    found = {v[1] for p, v in after.items() if p.startswith("lost+found/#")}
    missing = {v[1] for p, v in healthy_view.items() if p.startswith("bulk/") and p not in after}
    assert missing and missing <= found


def test_a_directory_cycle_is_broken_and_its_files_are_kept(healthy, healthy_view, tmp_path):
    image = write(tmp_path / "c.img", find_case("directory cycle").build(healthy))
    assert run_fsck(image, "-y", "-f")[0] == 1
    after = snapshot(open(image, "rb").read())
    moved = [p for p in after if p.startswith("lost+found/#") and p.endswith("/file.txt")]
    assert len(moved) == 1
    assert after[moved[0]] == healthy_view["cyc/a/b/file.txt"]


# -- healthy images and crash states -------------------------------------------------------------


def test_a_clean_image_passes_the_quick_and_the_full_check(healthy, tmp_path):
    image = write(tmp_path / "h.img", healthy)
    code, text = run_fsck(image, "-n")
    assert code == 0 and "quick check" in text
    assert run_fsck(image, "-n", "-f")[0] == 0
    assert run_fsck(image, "-p")[0] == 0
    assert run_fsck(image, "-y", "-f")[0] == 0
    assert digest(image) == hashlib.sha256(healthy).hexdigest(), "nothing to repair, nothing written"


@pytest.mark.parametrize("state", list(CRASH_STATES))
def test_a_crash_state_is_not_damage_and_check_only_says_what_mount_will_finish(state, healthy_view, tmp_path):
    image = write(tmp_path / "crash.img", CRASH_STATES[state]())
    before = digest(image)
    code, text = run_fsck(image, "-n")
    assert code == 0, text
    assert digest(image) == before
    expected = {"torn tail": "torn entry", "replay pending": "to replay", "orphan": "mount will delete",
                "unfinished logged op": "mount will finish the interrupted truncate"}[state]
    assert expected in text, text

    code, text = run_fsck(image, "-y")
    assert code == 0, text
    assert run_fsck(image, "-n", "-f")[0] == 0
    after = snapshot(open(image, "rb").read())
    assert intact(healthy_view, after, CRASH_LOST if state == "unfinished logged op" else ()) == []
    if state == "unfinished logged op":
        assert after["docs/sub/big.bin"][1] == b""


def test_check_only_never_writes_to_a_damaged_image_either(healthy, tmp_path):
    for name in ("dirents leaf flipped", "journal entry proven flushed is damaged", "two files share bytes"):
        image = write(tmp_path / "x.img", find_case(name).build(healthy))
        before = digest(image)
        assert run_fsck(image, "-n", "-f", "--verify-data")[0] == 4
        assert run_fsck(image, "-f")[0] == 4  # no terminal: acts as -n
        assert digest(image) == before


def test_without_a_terminal_and_without_a_mode_fsck_only_checks_and_says_so(healthy, tmp_path):
    image = write(tmp_path / "x.img", find_case("hard link count wrong").build(healthy))
    code, text = run_fsck(image, "-f")
    assert code == 4 and "no terminal" in text


def test_verify_data_finds_a_flipped_data_byte_and_cannot_repair_it(healthy, tmp_path):
    fs = FileSystem.mount(FaultDevice(healthy), EngineOptions(read_only=True))
    attr = fs.lookup(fs.lookup(1, b"src").ino, b"data.bin")
    with fs.engine.transaction() as t:
        from pyfs.format.records import Extent, Tree
        (_, raw), = list(t.scan(Tree.EXTENTS, prefix=(attr.ino,)))
        ext = Extent.decode(raw)
    image = bytearray(healthy)
    image[ext.addr + 100] ^= 1
    path = write(tmp_path / "data.img", bytes(image))
    assert run_fsck(path, "-n", "-f")[0] == 0, "metadata is fine"
    code, text = run_fsck(path, "-n", "-f", "--verify-data")
    assert code == 4 and "[data]" in text and "/src/data.bin" in text
    code, text = run_fsck(path, "-y", "-f", "--verify-data")
    assert code == 4 and "NOT FIXED" in text


# -- modes and exit codes ---------------------------------------------------------------------------


def test_preen_stops_without_writing_on_a_problem_that_needs_a_decision(healthy, tmp_path):
    image = write(tmp_path / "x.img", find_case("dirent naming a missing inode").build(healthy))
    before = digest(image)
    code, text = run_fsck(image, "-p", "-f")
    assert code == 4 and "needs a decision" in text
    assert digest(image) == before


def test_preen_repairs_safe_problems_without_asking(healthy, tmp_path):
    image = write(tmp_path / "x.img", find_case("hard link count wrong").build(healthy))
    assert run_fsck(image, "-p", "-f")[0] == 1
    assert run_fsck(image, "-n", "-f")[0] == 0


def test_every_safe_case_is_preened_and_every_other_case_needs_a_decision(healthy):
    for case in CASES:
        dev = FaultDevice(case.build(healthy))
        result = fsck(dev, Options("check", force=True), Report(io.StringIO(), io.StringIO()))
        assert result.exit_code == 4, case.name
        needs = any(not f.safe for f in result.findings)
        assert needs == case.decision, (case.name, [(f.kind, f.safe) for f in result.findings])


def test_json_report_lists_every_problem_with_its_fix_status(healthy, tmp_path):
    image = write(tmp_path / "x.img", find_case("data_bytes wrong").build(healthy))
    out = io.StringIO()
    assert main(["-n", "-f", "--json", str(image)], stdin=io.StringIO(), stdout=out, stderr=io.StringIO()) == 4
    report = json.loads(out.getvalue())
    assert report["exit_code"] == 4 and report["mode"] == "check"
    assert [(p["kind"], p["fixed"]) for p in report["problems"]] == [("data-bytes", False)]
    assert report["summary"]["files"] > 300
    out = io.StringIO()
    assert main(["-y", "-f", "--json", str(image)], stdin=io.StringIO(), stdout=out, stderr=io.StringIO()) == 1
    report = json.loads(out.getvalue())
    assert [(p["kind"], p["fixed"]) for p in report["problems"]] == [("data-bytes", True)]


def test_an_image_that_is_not_pyfs_is_an_operational_error(tmp_path):
    junk = write(tmp_path / "junk.img", random.Random(1).randbytes(1 << 20))
    code, text = run_fsck(junk, "-n")
    assert code == 8 and "not a pyfs image" in text
    assert run_fsck(tmp_path / "missing.img", "-n")[0] == 8
    assert run_fsck(tmp_path, "-n")[0] == 8  # a directory


def test_a_mounted_image_is_refused(healthy, tmp_path):
    image = write(tmp_path / "busy.img", healthy)
    with FileDevice.open(image):  # what a mount holds: the exclusive lock
        for mode in ("-n", "-y", "-p"):
            code, text = run_fsck(image, mode)
            assert code == 8 and "in use" in text


def test_the_wrapper_script_refuses_bad_usage_and_busy_images(healthy, tmp_path):
    image = write(tmp_path / "h.img", healthy)
    for argv in ([], ["-n", "-y", str(image)], ["--bogus", str(image)], [str(image), "extra"]):
        proc = subprocess.run([sys.executable, FSCK, *argv], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 16, (argv, proc.stderr)
        assert "usage" in proc.stderr and "Traceback" not in proc.stderr
    with FileDevice.open(image):
        proc = subprocess.run([sys.executable, FSCK, "-y", str(image)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 8 and "in use" in proc.stderr and "Traceback" not in proc.stderr


def _interactive(image, answers: list[bytes], timeout: float = 60) -> tuple[int, str]:
    """Run fsck.py without a mode under a pty, answering each question in turn."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin, stdout and stderr are the pty
        os.execv(sys.executable, [sys.executable, FSCK, "-f", str(image)])
    output = b""
    deadline = time.monotonic() + timeout
    pending = list(answers)
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the pty
                break
            if not chunk:
                break
            output += chunk
            while pending and output.count(b"[y/n/a/q]") > len(answers) - len(pending):
                os.write(fd, pending.pop(0) + b"\n")
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_interactive_mode_asks_before_each_repair_and_q_cancels_with_32(healthy, tmp_path):
    image = write(tmp_path / "x.img", find_case("hard link count wrong").build(healthy))
    before = digest(image)
    code, text = _interactive(image, [b"q"])
    assert code == 32, text
    assert "set it to 2? [y/n/a/q]" in text
    assert digest(image) == before, "nothing was accepted, nothing was written"

    code, text = _interactive(image, [b"y"])
    assert code == 1, text
    assert run_fsck(image, "-n", "-f")[0] == 0


def test_interactive_no_leaves_the_problem_and_exits_4(healthy, tmp_path):
    image = write(tmp_path / "x.img", find_case("dirent naming a missing inode").build(healthy))
    code, text = _interactive(image, [b"n"])
    assert code == 4, text
    assert run_fsck(image, "-n", "-f")[0] == 4


# -- fuzzing ------------------------------------------------------------------------------------------


def test_random_damage_to_metadata_never_crashes_or_hangs_fsck_and_y_repairs_or_says_why():
    outcomes, failures = fuzz_fsck.run(200, seed=0xF5C, timeout=60)
    assert failures == [], "\n\n".join(failures)
    assert outcomes["repaired"] > 100, outcomes


# -- a power cut during a repair ------------------------------------------------------------------------


POWER_CUT_CASES = ["dirents leaf flipped", "journal entry proven flushed is damaged", "two files share bytes"]


@pytest.mark.parametrize("name", POWER_CUT_CASES)
def test_a_power_cut_at_every_write_of_a_repair_leaves_an_image_a_second_repair_finishes(name, healthy, healthy_view):
    case = find_case(name)
    damaged = case.build(healthy)
    quiet = lambda: Report(io.StringIO(), io.StringIO())  # noqa: E731
    probe = FaultDevice(damaged)
    assert fsck(probe, Options("yes", force=True), quiet()).exit_code == 1
    total = len(probe.ops)
    assert total > 10
    rng = random.Random(5)
    for cut in range(total + 1):
        dev = FaultDevice(damaged, cut_power_at=cut)
        with contextlib.suppress(PowerCut):
            fsck(dev, Options("yes", force=True), quiet())
        modes = ["drop_all"] + (["tear_last"] if cut % 3 == 0 else []) + (["keep_some"] if cut % 5 == 0 else [])
        for mode in modes:
            fixed = FaultDevice(dev.crash_image(len(dev.ops), mode, rng))
            second = fsck(fixed, Options("yes", force=True), quiet())
            assert second.exit_code in (0, 1), (cut, mode, [f.line() for f in second.findings])
            final = bytes(fixed.durable_image())
            third = fsck(FaultDevice(final), Options("check", force=True), quiet())
            assert third.exit_code == 0, (cut, mode, [f.line() for f in third.findings])
            if mode == "drop_all" and cut % 3 == 0:
                assert intact(healthy_view, snapshot(final), case.lost) == [], (cut, mode)


# -- progress ----------------------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_appear_only_on_a_terminal_and_only_for_big_passes():
    err = _Terminal()
    with Report(io.StringIO(), err).bar("reading btrees", 50_000) as bar:
        bar.advance(50_000)
    assert "reading btrees" in err.getvalue() and "100%" in err.getvalue()
    assert err.getvalue().endswith("\r"), "the bar is cleared when the pass ends"
    for stream, total in ((io.StringIO(), 50_000), (_Terminal(), 10)):
        with Report(io.StringIO(), stream).bar("checking", total) as bar:
            bar.advance(total)
        assert stream.getvalue() == ""


# -- the engine hooks fsck uses -------------------------------------------------------------------------------


def test_salvage_mode_replays_up_to_a_damaged_entry_that_normal_open_refuses(healthy):
    from pyfs.engine.engine import Engine
    from pyfs.engine.journal_scan import JournalCorrupt

    image = find_case("journal entry proven flushed is damaged").build(healthy)
    with pytest.raises(JournalCorrupt):
        Engine.open(FaultDevice(image), EngineOptions(read_only=True))
    engine = Engine.open(FaultDevice(image), EngineOptions(read_only=True, salvage_journal=True))
    scan = engine.journal_scan
    assert scan.corruption is not None and "proves it was written" in scan.corruption
    assert scan.dropped and scan.torn_at == scan.last_seq + 1
    assert engine.replayed_entries == len(scan.chain) - 1 > 0


def test_close_without_the_clean_flag_makes_the_next_fsck_check_in_full(healthy, tmp_path):
    from pyfs.engine.engine import Engine

    dev = FaultDevice(healthy)
    Engine.open(dev).close(clean=False)
    image = write(tmp_path / "x.img", bytes(dev.durable_image()))
    code, text = run_fsck(image, "-n")
    assert code == 0 and "quick check" not in text and "not closed cleanly" in text
