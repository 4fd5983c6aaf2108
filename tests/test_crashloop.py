"""tools/crashloop.py and pyfs/engine/recorder.py: the kill-and-remount loop and power-loss replay.

- The recording device logs writes before they reach the image and flushes
  only after they succeeded; a flush covers the writes completed when it
  began; a record cut short by a kill is dropped (pyfs/engine/recorder.py).
- Crash images rebuilt from a log hold exactly the writes a flush covered,
  plus a subset of the pending ones (tools/crashloop_power.py).
- The checker accepts every state a crash may leave and rejects a lost
  fsynced file and another file's data (tools/crashloop.py).
- The short loop of issue #6 (20 kills, 200 power-loss images) finds no
  violation, and a deliberately damaged image after a kill makes it fail.
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import REPO, make_image
from pyfs.engine.device import FileDevice
from pyfs.format.records import ROOT_INO
from pyfs.fs import FileSystem
from pyfs.engine.recorder import FAILED, FLUSH, WRITE, RecordingDevice, read_log

sys.path.insert(0, str(REPO / "tools"))

from crashloop import Expectation, check_tree  # noqa: E402
from crashloop_model import Model, Op, _pattern_slow, foreign_stamps, pattern  # noqa: E402
from crashloop_power import CrashPlanner, OverlayDevice, PageImage, read_tree  # noqa: E402
from crashloop_workload import Durable, RoundLog  # noqa: E402

CRASHLOOP = str(REPO / "tools" / "crashloop.py")
needs_fuse = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")


# -- the recording device ---------------------------------------------------------------------


class SlowDevice:
    """A device whose pwrite waits for `release` (to have a write in flight during a flush)."""

    def __init__(self, size: int = 1 << 20) -> None:
        self.size = size
        self.read_only = False
        self.data = bytearray(size)
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.fail_flush = False

    def pread(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset : offset + length])

    def pwrite(self, offset: int, data: bytes) -> None:
        self.entered.set()
        self.release.wait(10)
        self.data[offset : offset + len(data)] = data

    def flush(self) -> None:
        if self.fail_flush:
            raise OSError(errno.EIO, "flush failed")

    def close(self) -> None:
        pass


def test_the_recorder_logs_each_write_and_each_successful_flush_in_order(tmp_path):
    inner = SlowDevice()
    dev = RecordingDevice(inner, tmp_path / "rec")
    dev.pwrite(0, b"a" * 600)
    dev.flush()
    dev.pwrite(4096, b"b" * 10)
    inner.fail_flush = True
    with pytest.raises(OSError):
        dev.flush()
    dev.close()
    size, records = read_log(tmp_path / "rec")
    assert size == inner.size
    assert [(r.kind, r.seq, r.arg) for r in records] == [(WRITE, 0, 0), (FLUSH, 0, 1), (WRITE, 1, 4096)]
    assert records[0].payload == b"a" * 600 and records[2].payload == b"b" * 10
    assert inner.data[:600] == b"a" * 600


def test_a_flush_does_not_cover_a_write_still_in_flight_when_it_began(tmp_path):
    inner = SlowDevice()
    dev = RecordingDevice(inner, tmp_path / "rec")
    inner.release.clear()
    writer = threading.Thread(target=dev.pwrite, args=(0, b"x" * 512))
    writer.start()
    assert inner.entered.wait(10)
    dev.flush()  # the write is logged but has not returned
    inner.release.set()
    writer.join(10)
    dev.close()
    _, records = read_log(tmp_path / "rec")
    flush = next(r for r in records if r.kind == FLUSH)
    assert flush.arg == 1 and flush.in_flight == (0,)


def test_a_failed_write_is_recorded_and_a_record_cut_short_is_dropped(tmp_path):
    class Failing(SlowDevice):
        def pwrite(self, offset, data):
            raise OSError(errno.EIO, "write failed")

    dev = RecordingDevice(Failing(), tmp_path / "rec")
    with pytest.raises(OSError):
        dev.pwrite(0, b"y" * 100)
    dev.close()
    _, records = read_log(tmp_path / "rec")
    assert [(r.kind, r.seq, r.arg) for r in records] == [(WRITE, 0, 0), (FAILED, 0, errno.EIO)]
    whole = (tmp_path / "rec").read_bytes()
    (tmp_path / "cut").write_bytes(whole[:-5])  # a kill in the middle of the last record
    _, records = read_log(tmp_path / "cut")
    assert [r.kind for r in records] == [WRITE]


def test_crash_images_hold_the_flushed_writes_and_a_subset_of_the_pending_ones(tmp_path):
    base = tmp_path / "base"
    base.write_bytes(bytes(64 * 1024))
    dev = RecordingDevice(FileDevice.open(base), tmp_path / "rec")
    dev.pwrite(0, b"A" * 4096)
    dev.flush()
    dev.pwrite(8192, b"B" * 4096)
    dev.pwrite(16384, b"C" * 4096)
    dev.close()
    base.write_bytes(bytes(64 * 1024))  # the harness keeps the image as it was at mount
    size, records = read_log(tmp_path / "rec")
    fd = os.open(base, os.O_RDONLY)
    try:
        images = list(CrashPlanner(fd, size, records).images(random.Random(1), None))
        for img in images:
            a_block = img.image.read(0, 4096)
            b_block, c_block = img.image.read(8192, 4096), img.image.read(16384, 4096)
            if img.cut >= 2:  # after the flush: A is durable
                assert a_block == b"A" * 4096
            elif img.mode == "flush" or img.cut == 0:
                assert a_block == bytes(4096)
            if img.mode == "flush":
                assert b_block == c_block == bytes(4096)
            for block, byte in ((a_block, b"A"), (b_block, b"B"), (c_block, b"C")):
                landed = len(block) - len(block.lstrip(byte))
                assert block[landed:] == bytes(4096 - landed)  # nothing, all, or a prefix of the write
            if img.torn is not None:
                # The last pending write lands as a strict prefix of whole sectors.
                assert img.torn[1] % 512 == 0 and 0 < img.torn[1] < 4096
        assert any(i.mode == "flush" for i in images) and any(i.mode == "cut" for i in images)
    finally:
        os.close(fd)


# -- the checker ------------------------------------------------------------------------------------


def test_file_data_is_stamped_with_file_generation_and_offset_so_foreign_blocks_are_found():
    rng = random.Random(3)
    for _ in range(50):
        offset, length = rng.randint(0, 1 << 22), rng.randint(1, 300_000)
        assert pattern(7, 9, offset, length) == _pattern_slow(7, 9, offset, length)
    assert pattern(7, 9, 64, 32) == b"@0000007.00000009.0000000000002\n"
    mixed = pattern(7, 9, 0, 8192) + pattern(8, 1, 8192, 4096) + bytes(4096) + pattern(7, 12, 16384 + 5, 100)
    assert foreign_stamps(mixed, 7) == {8}
    assert foreign_stamps(pattern(7, 9, 0, 8192) + pattern(7, 10, 8192 + 3, 5000), 7) == set()



def _round_on_core(tmp_path: Path):
    """A round run on the filesystem core over a recording device: create, write, fsync, write."""
    image = make_image(tmp_path / "img", "64M")
    base = tmp_path / "base"
    base.write_bytes(image.read_bytes())
    rec = tmp_path / "rec"
    device = RecordingDevice(FileDevice.open(image), rec)
    fs = FileSystem.mount(device)
    model = Model(umask=0)
    rlog = RoundLog(1, model.copy())
    state = model.state()
    rlog.digests.append(state.digest())
    rlog.file_bytes.append(state.file_bytes())

    def done(op: Op) -> None:
        pos = os.stat(rec).st_size
        model.apply(op)
        st = model.state()
        rlog.applied.append(op)
        rlog.start_pos.append(pos)
        rlog.done_at.append(0.0)
        rlog.digests.append(st.digest())
        rlog.file_bytes.append(st.file_bytes())
        if op.durable:
            rlog.durables.append(Durable(len(rlog.applied), os.stat(rec).st_size, 0.0))

    fhs = {}
    for i, name in enumerate(["a", "b"]):
        fid = 2 + i
        fh, _ = fs.create(ROOT_INO, name.encode(), 0o644)
        fhs[fid] = fh
        done(Op(10 * i + 1, "create", {"path": name, "fid": fid, "mode": 0o644}))
        data = pattern(fid, 10 * i + 2, 0, 40000)
        fs.write(fh, 0, data)
        done(Op(10 * i + 2, "write", {"fid": fid, "offset": 0, "length": 40000, "gen": 10 * i + 2,
                                      "written": 40000}))
    fs.fsync_now()
    done(Op(30, "fsync", {"path": "a"}, durable=True))
    fs.write(fhs[2], 100, pattern(2, 31, 100, 5000))
    done(Op(31, "write", {"fid": 2, "offset": 100, "length": 5000, "gen": 31, "written": 5000}))
    fs.close()
    device.close()
    return base, rec, Expectation(rlog, model)


def _image_tree(base: Path, rec: Path, upto: int | None = None, drop: int | None = None):
    """The tree of the image base + the logged writes up to log offset `upto`, without record `drop`."""
    size, records = read_log(rec)
    fd = os.open(base, os.O_RDONLY)
    image = PageImage(fd, size)
    for i, r in enumerate(records):
        if upto is not None and r.pos > upto:
            break
        if r.kind == WRITE and i != drop:
            image.write(r.offset, r.payload)
    fs = FileSystem.mount(OverlayDevice(image))
    state, contents = read_tree(fs, keep_content=True)
    return state, contents


def test_the_checker_accepts_the_tree_a_clean_close_leaves(tmp_path):
    base, rec, expect = _round_on_core(tmp_path)
    state, contents = _image_tree(base, rec)
    outcome = check_tree(state, expect, os.stat(rec).st_size, contents.__getitem__, "test", 1)
    assert outcome.violation is None
    assert outcome.prefix == len(expect.rlog.applied)


def test_the_checker_reports_a_lost_fsynced_file_as_a_durability_violation(tmp_path):
    base, rec, expect = _round_on_core(tmp_path)
    state, contents = _image_tree(base, rec)
    del state.entries["b"]  # as if the fsynced create and write of b had vanished
    outcome = check_tree(state, expect, os.stat(rec).st_size, contents.__getitem__, "test", 1)
    assert outcome.violation is not None
    assert outcome.violation.check == "durable"
    assert "b" in " ".join(outcome.violation.details)


def test_the_checker_names_the_file_whose_data_turns_up_in_another(tmp_path):
    base, rec, expect = _round_on_core(tmp_path)
    state, contents = _image_tree(base, rec)
    contents["a"] = pattern(3, 12, 0, 4096) + contents["a"][4096:]  # b's first block inside a
    e = state.entries["a"]
    state.entries["a"] = type(e)(e.kind, e.mode, e.mtime, e.size, b"changed", e.target, e.xattrs, e.ino)
    outcome = check_tree(state, expect, os.stat(rec).st_size, contents.__getitem__, "test", 1)
    assert outcome.violation is not None and outcome.violation.check == "stale"
    assert "holds data of file(s) [3]" in " ".join(outcome.violation.details)


def test_the_checker_accepts_a_write_of_which_only_a_prefix_landed(tmp_path):
    base, rec, expect = _round_on_core(tmp_path)
    rlog = expect.rlog
    last = rlog.applied[-1]
    assert last.kind == "write"
    model = expect.model_at(len(rlog.applied) - 1)
    model.apply(Op(last.index, "write", {**last.args, "written": 1000}))  # the first FUSE request only
    content = bytes(model.lookup("a").data)
    outcome = check_tree(model.state(), expect, None, lambda path: content, "test", 1)
    assert outcome.violation is None and outcome.torn
    # Bytes the old and the new stamp share cannot tell where the prefix ends; the content is the same.
    assert outcome.torn_op is not None and 950 <= outcome.torn_op.args["written"] <= 1000
    assert bytes(outcome.recovered(expect).lookup("a").data) == content


def test_a_crash_image_of_a_disk_that_lost_the_fsynced_journal_write_is_a_violation(tmp_path):
    base, rec, expect = _round_on_core(tmp_path)
    _, records = read_log(rec)
    durable_at = expect.rlog.durables[0].log_pos
    # The journal write the fsync's last flush covered: a lying disk drops it.
    flush = max(i for i, r in enumerate(records) if r.kind == FLUSH and r.pos <= durable_at)
    journal = max(i for i in range(flush) if records[i].kind == WRITE)
    state, contents = _image_tree(base, rec, upto=durable_at, drop=journal)
    outcome = check_tree(state, expect, durable_at, contents.__getitem__, "test", 1)
    assert outcome.violation is not None and outcome.violation.check == "durable"
    # The same cut with the write kept is fine.
    state, contents = _image_tree(base, rec, upto=durable_at)
    assert check_tree(state, expect, durable_at, contents.__getitem__, "test", 1).violation is None


# -- the loop against real mounts --------------------------------------------------------------------


def run_crashloop(*args: str, timeout: float = 600) -> tuple[int, dict, str]:
    result = subprocess.run([sys.executable, CRASHLOOP, "--json", *args], capture_output=True, text=True,
                            timeout=timeout, cwd=REPO)
    out = result.stdout
    start = out.rfind("\n{")
    summary = json.loads(out[start + 1 if start >= 0 else out.find("{"):])
    return result.returncode, summary, result.stdout + result.stderr


@pytest.mark.slow
@needs_fuse
def test_twenty_kill_rounds_and_two_hundred_power_loss_images_find_no_violation():
    code, summary, out = run_crashloop("--seed", "1", "--rounds", "20", "--kill-after", "0.3:1.2",
                                       "--power-cut", "--images", "10")
    assert summary["violations"] == [], out
    assert code == 0, out
    assert summary["kills"] == 20
    assert summary["crash_images"] == 200
    assert summary["operations_replayed"] > 0 and summary["fsynced_bytes"] > 0


@pytest.mark.slow
@needs_fuse
@pytest.mark.parametrize("how, check", [("drop-fsynced", "durable"), ("stale", "stale")])
def test_an_image_damaged_after_the_kill_fails_the_loop_and_is_kept(how, check, tmp_path):
    work = tmp_path / "work"
    code, summary, out = run_crashloop("--seed", "7", "--rounds", "3", "--kill-after", "1:1", "--mount-kill", "0",
                                       "--no-long-ops", "--sabotage", how, "--workdir", str(work))
    assert code == 1, out
    assert summary["violations"][0]["check"] == check, out
    assert (work / "ops.jsonl").exists() and (work / "pyfs.img").exists()
