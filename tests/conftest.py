"""Shared test set-up: the repository root is importable (for `tools.*` harnesses), real mounts, a stepping clock."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# -- real mounts ------------------------------------------------------------------------
#
# `mounted` gives a freshly formatted image mounted with FUSE by a background
# `pyfs mount` in a fresh temporary directory.  The test process makes itself
# a child subreaper, so the daemon (which outlives the `pyfs mount` that forked
# it) becomes our child: its exit code is visible to `os.waitpid`.  Every mount
# is undone in the finalizer, whatever the test did: `pyfs umount`, falling back
# to `fusermount3 -u -z`, and a daemon still alive after that is killed by PID.

import ctypes
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MKFS = str(REPO / "mkfs.py")
PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def pyfs_cli(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `python -m pyfs ARGS` and capture its output."""
    return subprocess.run([sys.executable, "-m", "pyfs", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def make_image(path: Path, size: str = "256M") -> Path:
    result = subprocess.run([sys.executable, MKFS, str(path), "--size", size, "-q"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return path


def is_mountpoint(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        # mountinfo writes space, tab, newline and backslash as octal escapes
        return any(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]) == target
                   for line in f)


def wait_for_exit(pid: int, timeout: float = 60) -> int:
    """Reap child `pid` and return its exit code (negative signal number if killed)."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} still running after {timeout:.0f} s")
        time.sleep(0.02)


class PyfsMount:
    """One image and one mount point; mounts and unmounts it through the command line."""

    def __init__(self, image: Path, mountpoint: Path, log: Path) -> None:
        self.image = image
        self.mountpoint = mountpoint
        self.log = log
        self.pid: int | None = None  # the daemon of the current mount
        self.foreground: subprocess.Popen | None = None

    def __truediv__(self, name: str) -> Path:
        return self.mountpoint / name

    def mount(self, *options: str) -> subprocess.CompletedProcess[str]:
        """Mount in the background; asserts success and finds the daemon's PID."""
        result = self.try_mount(*options)
        assert result.returncode == 0, result.stderr
        assert is_mountpoint(self.mountpoint)
        self.pid = self._find_daemon()
        return result

    def try_mount(self, *options: str) -> subprocess.CompletedProcess[str]:
        _become_subreaper()
        return pyfs_cli("mount", self.image, self.mountpoint, "--log", self.log, *options)

    def mount_foreground(self, *options: str) -> subprocess.Popen:
        """Start `pyfs mount --foreground` as our child and wait until it serves the mount point."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyfs", "mount", str(self.image), str(self.mountpoint),
             "--foreground", "--log", str(self.log), *options],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.foreground, self.pid = proc, proc.pid
        deadline = time.monotonic() + 60
        while not is_mountpoint(self.mountpoint):
            if proc.poll() is not None:
                raise AssertionError(f"foreground mount exited {proc.returncode}: {proc.stderr.read()}")
            assert time.monotonic() < deadline, "foreground mount never appeared"
            time.sleep(0.001)  # tight: tests may signal the moment it appears
        return proc

    def _find_daemon(self) -> int:
        """The PID of the daemon serving our mount point (our child through the subreaper)."""
        wanted = str(self.mountpoint).encode()
        me = os.getpid()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if wanted in argv and b"mount" in argv and ppid == me:
                return int(entry)
        raise AssertionError(f"no pyfs daemon for {self.mountpoint}")

    def wait_daemon(self, timeout: float = 60) -> int:
        """Wait for the current daemon to exit; returns its exit code."""
        assert self.pid is not None
        if self.foreground is not None:
            code = self.foreground.wait(timeout)
        else:
            code = wait_for_exit(self.pid, timeout)
        self.pid, self.foreground = None, None
        return code

    def umount(self) -> int:
        """`pyfs umount`; returns the daemon's exit code."""
        result = pyfs_cli("umount", self.mountpoint)
        assert result.returncode == 0, result.stderr
        assert not is_mountpoint(self.mountpoint)
        return self.wait_daemon()

    def fusermount_umount(self) -> int:
        """`fusermount3 -u`; returns the daemon's exit code."""
        subprocess.run(["fusermount3", "-u", str(self.mountpoint)], check=True, timeout=60)
        return self.wait_daemon()

    def cleanup(self) -> None:
        """Whatever state the test left: unmounted, daemon gone (the fixture finalizer)."""
        if is_mountpoint(self.mountpoint):
            if pyfs_cli("umount", self.mountpoint, timeout=150).returncode != 0:
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], timeout=60)
        if self.pid is not None:
            try:
                self.wait_daemon(timeout=60)
            except (TimeoutError, subprocess.TimeoutExpired):
                os.kill(self.pid, signal.SIGKILL)
                self.wait_daemon(timeout=60)


@pytest.fixture
def pyfs_mount(tmp_path):
    """A formatted, not yet mounted image with its own mount point; unmounted at the end."""
    work = tmp_path / "pyfs-mount"
    work.mkdir()
    (work / "mnt").mkdir()
    m = PyfsMount(make_image(work / "pyfs.img"), work / "mnt", work / "pyfs.log")
    yield m
    m.cleanup()


@pytest.fixture
def mounted(pyfs_mount):
    """A freshly formatted image mounted at `mounted.mountpoint` (unmounted at the end)."""
    pyfs_mount.mount()
    return pyfs_mount


# -- a clock for timestamp tests ---------------------------------------------------------


@pytest.fixture
def clock(monkeypatch):
    """A clock that moves 1001 ns per reading, so every timestamp is new and not a multiple of 1000."""
    now = [time.time_ns() // 1000 * 1000 + 7]

    def time_ns() -> int:
        now[0] += 1001
        return now[0]

    monkeypatch.setattr(time, "time_ns", time_ns)
    return now
