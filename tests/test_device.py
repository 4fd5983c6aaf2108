"""The device layer keeps the promises in pyfs/engine/device.py's docstring."""

from __future__ import annotations

import errno
import itertools
import os
import random
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyfs.engine.device import SECTOR, Device, DeviceBusy, DeviceError, FileDevice
from pyfs.engine.fault_device import MODES, DeviceOp, FaultDevice, PowerCut

IMAGE_SIZE = 64 * 1024


@pytest.fixture
def image_path(tmp_path):
    path = tmp_path / "pyfs.img"
    path.write_bytes(bytes(IMAGE_SIZE))
    return path


@pytest.fixture
def device(image_path):
    dev = FileDevice.open(image_path)
    yield dev
    dev.close()


# ---------------------------------------------------------------------------
# FileDevice: reads and writes
# ---------------------------------------------------------------------------


def test_file_device_satisfies_the_device_protocol(device):
    assert isinstance(device, Device)
    assert isinstance(FaultDevice(bytes(SECTOR)), Device)


def test_file_device_size_is_the_image_length(device):
    assert device.size == IMAGE_SIZE
    assert device.read_only is False


def test_written_bytes_read_back_after_reopen(image_path):
    with FileDevice.open(image_path) as dev:
        dev.pwrite(4096, b"hello, pyfs")
        dev.pwrite(IMAGE_SIZE - 3, b"end")
        dev.flush()
    with FileDevice.open(image_path, read_only=True) as dev:
        assert dev.pread(4096, 11) == b"hello, pyfs"
        assert dev.pread(IMAGE_SIZE - 3, 3) == b"end"
        assert dev.pread(0, 16) == bytes(16)


def test_pwrite_accepts_bytearray_and_memoryview(device):
    device.pwrite(0, bytearray(b"abc"))
    device.pwrite(3, memoryview(b"def"))
    assert device.pread(0, 6) == b"abcdef"


@pytest.mark.parametrize("length", [0, 1, 511, 512, 4096, IMAGE_SIZE])
def test_pread_returns_exactly_the_requested_length(device, length):
    data = device.pread(0, length)
    assert type(data) is bytes
    assert len(data) == length


def test_pread_loops_over_short_reads(device, monkeypatch):
    pattern = bytes(range(256)) * 8
    device.pwrite(100, pattern)
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: real_pread(fd, min(n, 7), off))
    assert device.pread(100, len(pattern)) == pattern


def test_pwrite_loops_over_short_writes(device, monkeypatch):
    pattern = bytes(range(256)) * 8
    real_pwrite = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, buf, off: real_pwrite(fd, bytes(buf[:5]), off))
    device.pwrite(100, pattern)
    monkeypatch.undo()
    assert device.pread(100, len(pattern)) == pattern


def test_pread_past_the_end_fails_with_eio(device):
    with pytest.raises(OSError) as info:
        device.pread(IMAGE_SIZE - 10, 11)
    assert info.value.errno == errno.EIO


def test_pread_of_an_image_truncated_after_open_fails_with_eio(device, image_path):
    os.truncate(image_path, 1000)
    assert device.pread(0, 1000) == bytes(1000)
    with pytest.raises(OSError) as info:
        device.pread(512, 4096)
    assert info.value.errno == errno.EIO


def test_truncated_image_reports_its_real_size_and_reads_past_it_fail_with_eio(image_path):
    os.truncate(image_path, 3000)
    with FileDevice.open(image_path) as dev:
        assert dev.size == 3000
        with pytest.raises(OSError) as info:
            dev.pread(2048, 4096)
        assert info.value.errno == errno.EIO


def test_pwrite_past_the_end_fails_and_does_not_grow_the_image(device, image_path):
    with pytest.raises(OSError) as info:
        device.pwrite(IMAGE_SIZE - 2, b"xyz")
    assert info.value.errno in (errno.EIO, errno.EINVAL)
    assert os.path.getsize(image_path) == IMAGE_SIZE


def test_negative_offset_fails_with_einval(device):
    with pytest.raises(OSError) as info:
        device.pread(-1, 1)
    assert info.value.errno == errno.EINVAL


def test_pwrite_on_a_read_only_device_fails_with_erofs(image_path):
    with FileDevice.open(image_path, read_only=True) as dev:
        assert dev.read_only
        with pytest.raises(OSError) as info:
            dev.pwrite(0, b"x")
        assert info.value.errno == errno.EROFS
    assert image_path.read_bytes()[:1] == b"\0"


def test_closed_device_refuses_io_with_ebadf(image_path):
    dev = FileDevice.open(image_path)
    dev.close()
    dev.close()  # harmless
    for call in (lambda: dev.pread(0, 1), lambda: dev.pwrite(0, b"x"), dev.flush):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EBADF


def test_open_refuses_a_directory_with_einval(tmp_path):
    with pytest.raises(OSError) as info:
        FileDevice.open(tmp_path)
    assert info.value.errno == errno.EINVAL


def test_open_of_a_missing_image_fails_with_enoent(tmp_path):
    with pytest.raises(OSError) as info:
        FileDevice.open(tmp_path / "nope.img")
    assert info.value.errno == errno.ENOENT


def test_write_and_flush_counts_are_kept(device):
    device.pwrite(0, b"a")
    device.pwrite(1, b"b")
    device.flush()
    assert (device.write_count, device.flush_count) == (2, 1)


# ---------------------------------------------------------------------------
# FileDevice: locking (invariant 8)
# ---------------------------------------------------------------------------


def test_second_read_write_open_is_refused_as_busy(device, image_path):
    with pytest.raises(DeviceBusy) as info:
        FileDevice.open(image_path)
    assert info.value.errno == errno.EBUSY
    assert str(image_path) in str(info.value)
    assert "in use" in str(info.value)
    assert isinstance(info.value, DeviceError)


def test_read_only_open_while_a_writer_holds_the_image_is_refused_as_busy(device, image_path):
    with pytest.raises(DeviceBusy):
        FileDevice.open(image_path, read_only=True)


def test_writer_open_while_a_reader_holds_the_image_is_refused_as_busy(image_path):
    with FileDevice.open(image_path, read_only=True):
        with pytest.raises(DeviceBusy):
            FileDevice.open(image_path)


def test_two_read_only_opens_share_the_image(image_path):
    with FileDevice.open(image_path, read_only=True), FileDevice.open(image_path, read_only=True):
        pass


def test_close_releases_the_lock(image_path):
    FileDevice.open(image_path).close()
    with FileDevice.open(image_path):
        pass


def test_open_without_lock_ignores_a_holder(device, image_path):
    with FileDevice.open(image_path, read_only=True, lock=False) as reader:
        assert reader.pread(0, 4) == bytes(4)


def test_lock_held_by_another_process_is_refused_as_busy(image_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import sys
                from pyfs.engine.device import FileDevice
                dev = FileDevice.open(sys.argv[1])
                print("locked", flush=True)
                sys.stdin.read()
                """
            ),
            str(image_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DeviceBusy):
            FileDevice.open(image_path, read_only=True)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    with FileDevice.open(image_path):
        pass


# ---------------------------------------------------------------------------
# FileDevice: flush failures are final (invariant 4)
# ---------------------------------------------------------------------------


def test_failed_flush_makes_every_later_flush_fail_with_eio(device, monkeypatch):
    calls = []

    def failing_once(fd):
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(errno.EIO, "simulated writeback error")

    monkeypatch.setattr(os, "fdatasync", failing_once)
    device.pwrite(0, b"data")
    with pytest.raises(OSError) as first:
        device.flush()
    assert first.value.errno == errno.EIO
    for _ in range(3):
        with pytest.raises(OSError) as later:
            device.flush()
        assert later.value.errno == errno.EIO
    assert len(calls) == 1, "a failed flush must not be retried and reported as success"
    assert device.flush_count == 0


def test_failed_flush_with_enospc_is_reported_as_eio_and_sticks(device, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, "no space")

    monkeypatch.setattr(os, "fdatasync", no_space)
    with pytest.raises(OSError) as info:
        device.flush()
    assert info.value.errno == errno.EIO
    monkeypatch.undo()
    with pytest.raises(OSError):
        device.flush()


# ---------------------------------------------------------------------------
# FaultDevice: live behaviour
# ---------------------------------------------------------------------------


def sectors(*fills: bytes) -> bytes:
    return b"".join(fill * SECTOR for fill in fills)


def test_fault_device_reads_see_unflushed_writes():
    dev = FaultDevice(bytes(4 * SECTOR))
    dev.pwrite(SECTOR, b"volatile")
    assert dev.pread(SECTOR, 8) == b"volatile"
    assert dev.durable_image() == bytes(4 * SECTOR)
    assert dev.ops == [DeviceOp("write", SECTOR, b"volatile")]


def test_durable_image_holds_exactly_the_flushed_writes():
    dev = FaultDevice(bytes(4 * SECTOR))
    dev.pwrite(0, b"A" * SECTOR)
    dev.flush()
    dev.pwrite(SECTOR, b"B" * SECTOR)
    assert dev.durable_image() == sectors(b"A", b"\0", b"\0", b"\0")
    dev.flush()
    assert dev.durable_image() == sectors(b"A", b"B", b"\0", b"\0")
    assert [op.kind for op in dev.ops] == ["write", "flush", "write", "flush"]


def test_fault_device_size_is_the_image_length_and_reads_past_it_fail_with_eio():
    dev = FaultDevice(bytearray(3 * SECTOR))
    assert dev.size == 3 * SECTOR
    with pytest.raises(OSError) as info:
        dev.pread(2 * SECTOR, SECTOR + 1)
    assert info.value.errno == errno.EIO
    with pytest.raises(OSError):
        dev.pwrite(3 * SECTOR, b"x")


def test_fault_device_keeps_its_own_copy_of_written_buffers():
    dev = FaultDevice(bytes(SECTOR))
    buf = bytearray(b"abcd")
    dev.pwrite(0, buf)
    buf[:] = b"zzzz"
    assert dev.pread(0, 4) == b"abcd"
    assert dev.ops[0].data == b"abcd"


def test_read_only_fault_device_refuses_writes_with_erofs():
    dev = FaultDevice(bytes(SECTOR), read_only=True)
    with pytest.raises(OSError) as info:
        dev.pwrite(0, b"x")
    assert info.value.errno == errno.EROFS
    assert dev.ops == []


def test_fail_write_at_fails_that_write_with_eio_and_leaves_it_unapplied():
    dev = FaultDevice(bytes(4 * SECTOR), fail_write_at=1)
    dev.pwrite(0, b"first")
    with pytest.raises(OSError) as info:
        dev.pwrite(SECTOR, b"second")
    assert info.value.errno == errno.EIO
    assert dev.pread(SECTOR, 6) == bytes(6)
    dev.pwrite(2 * SECTOR, b"third")
    dev.flush()
    assert dev.pread(2 * SECTOR, 5) == b"third"
    assert [op.data for op in dev.ops if op.kind == "write"] == [b"first", b"third"]
    image = dev.durable_image()
    assert image[SECTOR : SECTOR + 6] == bytes(6)


def test_fail_flush_at_fails_that_flush_with_eio_and_keeps_writes_unflushed():
    dev = FaultDevice(bytes(2 * SECTOR), fail_flush_at=0)
    dev.pwrite(0, b"pending")
    with pytest.raises(OSError) as info:
        dev.flush()
    assert info.value.errno == errno.EIO
    assert dev.durable_image() == bytes(2 * SECTOR)
    assert dev.pread(0, 7) == b"pending"
    assert [op.kind for op in dev.ops] == ["write"]
    assert dev.crash_image(len(dev.ops), "drop_all", random.Random(0)) == bytes(2 * SECTOR)
    dev.flush()  # the device is not sticky: the engine must stop on its own
    assert dev.durable_image()[:7] == b"pending"


def test_cut_power_at_raises_power_cut_before_that_op_runs():
    dev = FaultDevice(bytes(2 * SECTOR), cut_power_at=2)
    dev.pwrite(0, b"one")
    dev.flush()
    with pytest.raises(PowerCut):
        dev.pwrite(SECTOR, b"two")
    assert len(dev.ops) == 2
    assert not dev.powered
    assert dev.durable_image()[:3] == b"one"


def test_cut_power_at_counts_writes_and_flushes_together():
    dev = FaultDevice(bytes(SECTOR), cut_power_at=1)
    dev.pwrite(0, b"x")
    with pytest.raises(PowerCut):
        dev.flush()
    assert dev.ops == [DeviceOp("write", 0, b"x")]
    assert dev.durable_image() == bytes(SECTOR)


def test_after_a_power_cut_every_device_method_raises_power_cut():
    dev = FaultDevice(bytes(SECTOR), cut_power_at=0)
    with pytest.raises(PowerCut):
        dev.flush()
    for call in (
        lambda: dev.pread(0, 1),
        lambda: dev.pwrite(0, b"x"),
        dev.flush,
        dev.close,
    ):
        with pytest.raises(PowerCut):
            call()
    assert dev.ops == []


# ---------------------------------------------------------------------------
# FaultDevice: crash images
# ---------------------------------------------------------------------------


def three_writes_after_a_flush() -> FaultDevice:
    """A flushed, then B over sectors 1-2, then C over sectors 2-4 (unflushed)."""
    dev = FaultDevice(bytes(6 * SECTOR))
    dev.pwrite(0, b"A" * SECTOR)
    dev.flush()
    dev.pwrite(SECTOR, b"B" * 2 * SECTOR)
    dev.pwrite(2 * SECTOR, b"C" * 3 * SECTOR)
    return dev


def test_crash_image_drop_all_keeps_only_writes_before_the_last_flush():
    dev = three_writes_after_a_flush()
    image = dev.crash_image(4, "drop_all", random.Random(0))
    assert image == sectors(b"A", b"\0", b"\0", b"\0", b"\0", b"\0")


def test_crash_image_keep_all_applies_every_unflushed_write_in_order():
    dev = three_writes_after_a_flush()
    image = dev.crash_image(4, "keep_all", random.Random(0))
    assert image == sectors(b"A", b"B", b"C", b"C", b"C", b"\0")


def test_crash_image_counts_only_the_first_op_count_ops():
    dev = three_writes_after_a_flush()
    rng = random.Random(0)
    assert dev.crash_image(0, "keep_all", rng) == bytes(6 * SECTOR)
    assert dev.crash_image(1, "drop_all", rng) == bytes(6 * SECTOR)
    assert dev.crash_image(1, "keep_all", rng) == sectors(b"A", b"\0", b"\0", b"\0", b"\0", b"\0")
    assert dev.crash_image(3, "keep_all", rng) == sectors(b"A", b"B", b"B", b"\0", b"\0", b"\0")


def test_crash_image_keep_some_yields_every_subset_applied_in_order_and_nothing_else():
    dev = three_writes_after_a_flush()
    rng = random.Random(1)
    seen = {bytes(dev.crash_image(4, "keep_some", rng)) for _ in range(200)}
    assert seen == {
        sectors(b"A", b"\0", b"\0", b"\0", b"\0", b"\0"),  # neither
        sectors(b"A", b"B", b"B", b"\0", b"\0", b"\0"),  # B only
        sectors(b"A", b"\0", b"C", b"C", b"C", b"\0"),  # C only
        sectors(b"A", b"B", b"C", b"C", b"C", b"\0"),  # both, C after B
    }


def test_crash_image_tear_last_lands_whole_sector_strict_prefixes_of_the_last_write():
    dev = three_writes_after_a_flush()
    rng = random.Random(2)
    seen = {bytes(dev.crash_image(4, "tear_last", rng)) for _ in range(200)}
    assert seen == {
        sectors(b"A", b"B", b"B", b"\0", b"\0", b"\0"),  # no sector of C
        sectors(b"A", b"B", b"C", b"\0", b"\0", b"\0"),  # one sector
        sectors(b"A", b"B", b"C", b"C", b"\0", b"\0"),  # two sectors
    }


def test_crash_image_tear_last_cuts_an_unaligned_write_at_device_sector_boundaries():
    dev = FaultDevice(bytes(4 * SECTOR))
    dev.pwrite(SECTOR - 100, b"x" * (SECTOR + 200))  # ends 100 bytes into sector 2
    rng = random.Random(3)
    seen = {bytes(dev.crash_image(1, "tear_last", rng)) for _ in range(100)}
    nothing = bytes(4 * SECTOR)
    up_to_sector_1 = bytes(SECTOR - 100) + b"x" * 100 + bytes(3 * SECTOR)
    up_to_sector_2 = bytes(SECTOR - 100) + b"x" * (SECTOR + 100) + bytes(2 * SECTOR)
    assert seen == {nothing, up_to_sector_1, up_to_sector_2}


def test_crash_image_tear_last_without_unflushed_writes_is_drop_all():
    dev = three_writes_after_a_flush()
    assert dev.crash_image(2, "tear_last", random.Random(0)) == dev.crash_image(2, "drop_all", random.Random(0))


def test_crash_image_rejects_an_unknown_mode_or_op_count():
    dev = three_writes_after_a_flush()
    with pytest.raises(ValueError):
        dev.crash_image(1, "reorder", random.Random(0))
    with pytest.raises(ValueError):
        dev.crash_image(5, "drop_all", random.Random(0))
    with pytest.raises(ValueError):
        list(dev.crash_images(["nope"], random.Random(0)))


def test_crash_images_yields_every_op_count_and_mode_when_not_skipping():
    dev = three_writes_after_a_flush()
    points = list(dev.crash_images(MODES, random.Random(0), skip_duplicates=False))
    assert [(k, mode) for k, mode, _ in points] == [(k, mode) for k in range(5) for mode in MODES]
    for k, mode, image in points:
        if mode in ("drop_all", "keep_all"):
            assert image == dev.crash_image(k, mode, random.Random(0))


def test_crash_images_are_fresh_copies_the_caller_may_keep():
    dev = three_writes_after_a_flush()
    images = [image for _, _, image in dev.crash_images(["keep_all"], random.Random(0))]
    for image in images:
        image[:] = b"\xff" * len(image)
    assert dev.crash_image(4, "keep_all", random.Random(0))[SECTOR] == ord("B")
    again = [image for _, _, image in dev.crash_images(["keep_all"], random.Random(0))]
    assert again[4] == sectors(b"A", b"B", b"C", b"C", b"C", b"\0")


def test_crash_images_skips_modes_that_choose_the_same_writes_for_an_op_count():
    dev = three_writes_after_a_flush()
    points = list(dev.crash_images(MODES, random.Random(0)))
    by_count: dict[int, list[str]] = {}
    for k, mode, _ in points:
        by_count.setdefault(k, []).append(mode)
    assert by_count[0] == ["drop_all"]  # nothing unflushed: every mode is drop_all
    assert by_count[2] == ["drop_all"]  # right after the flush
    assert by_count[1][:2] == ["drop_all", "keep_all"]
    assert set(by_count) == set(range(5))


# -- the property: a crash image is the durable base plus a subset of the
# -- unflushed writes, applied in order, of which only the last may be torn.

IMAGE_SECTORS = 8

op_strategy = st.one_of(
    st.just(("flush",)),
    st.tuples(
        st.just("write"),
        st.integers(0, IMAGE_SECTORS * SECTOR - 1),
        st.integers(0, 3 * SECTOR),
        st.integers(1, 255),
    ),
)


def issue(ops) -> FaultDevice:
    dev = FaultDevice(bytes(IMAGE_SECTORS * SECTOR))
    for op in ops:
        if op[0] == "flush":
            dev.flush()
        else:
            _, offset, length, fill = op
            length = min(length, dev.size - offset)
            dev.pwrite(offset, bytes([fill]) * length)
    return dev


def model(dev: FaultDevice, op_count: int) -> tuple[bytearray, list[DeviceOp]]:
    """Durable base and unflushed writes after op_count ops, replayed from scratch."""
    base = bytearray(dev.size)
    pending: list[DeviceOp] = []
    for op in dev.ops[:op_count]:
        if op.kind == "flush":
            for write in pending:
                base[write.offset : write.offset + len(write.data)] = write.data
            pending = []
        else:
            pending.append(op)
    return base, pending


def with_writes(base: bytearray, writes) -> bytes:
    image = bytearray(base)
    for write in writes:
        image[write.offset : write.offset + len(write.data)] = write.data
    return bytes(image)


def torn_versions(write: DeviceOp) -> list[DeviceOp]:
    """Every strict prefix of write that ends on a device sector boundary."""
    end = write.offset + len(write.data)
    cuts = [write.offset, *(c for c in range(write.offset + 1, end) if c % SECTOR == 0)]
    return [DeviceOp("write", write.offset, write.data[: cut - write.offset]) for cut in cuts]


def allowed_images(dev: FaultDevice, op_count: int, mode: str) -> set[bytes]:
    base, pending = model(dev, op_count)
    if mode == "drop_all" or (mode == "tear_last" and not pending):
        return {bytes(base)}
    if mode == "keep_all":
        return {with_writes(base, pending)}
    if mode == "keep_some":
        return {
            with_writes(base, [w for w, keep in zip(pending, mask) if keep])
            for mask in itertools.product([False, True], repeat=len(pending))
        }
    assert mode == "tear_last"
    return {with_writes(base, [*pending[:-1], torn]) for torn in torn_versions(pending[-1])}


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(op_strategy, max_size=12), seed=st.integers(0, 2**32 - 1))
def test_every_crash_image_is_the_durable_base_plus_an_ordered_subset_of_unflushed_writes(ops, seed):
    dev = issue(ops)
    seen = set()
    for op_count, mode, image in dev.crash_images(MODES, random.Random(seed), skip_duplicates=False):
        seen.add((op_count, mode))
        assert len(image) == dev.size
        assert bytes(image) in allowed_images(dev, op_count, mode), (op_count, mode)
    assert seen == {(k, mode) for k in range(len(dev.ops) + 1) for mode in MODES}


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(op_strategy, max_size=12), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_crash_image_at_any_point_is_an_allowed_image(ops, seed, data):
    dev = issue(ops)
    op_count = data.draw(st.integers(0, len(dev.ops)))
    mode = data.draw(st.sampled_from(MODES))
    image = dev.crash_image(op_count, mode, random.Random(seed))
    assert bytes(image) in allowed_images(dev, op_count, mode)


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(op_strategy, max_size=12))
def test_durable_image_equals_the_drop_all_crash_image_of_all_ops(ops):
    dev = issue(ops)
    assert dev.durable_image() == dev.crash_image(len(dev.ops), "drop_all", random.Random(0))
