"""The `pyfs` command: mount and unmount images, and run long operations on a mount.

    pyfs mount IMAGE MOUNTPOINT [-o OPTS] [--foreground] [--commit SECONDS] [--log FILE] [-v]
    pyfs umount MOUNTPOINT
    pyfs collapse FILE OFFSET LENGTH
    pyfs insert FILE OFFSET LENGTH
    pyfs punch FILE OFFSET LENGTH [--no-keep-size]
    pyfs zero FILE OFFSET LENGTH [-n|--keep-size]
    pyfs rmtree DIR
    pyfs ops MOUNTPOINT [--json]
    pyfs stat MOUNTPOINT [--json]
    pyfs flush MOUNTPOINT

The control commands (collapse ... flush) live in pyfs/tool_cli.py over
pyfs/client.py; sizes take suffixes k, M, G, T (powers of 1024).

Promises:
- `mount` without `--foreground` returns only when the filesystem is mounted
  (exit 0) or has failed (exit 1, with the reason on one line); the daemon
  stays in the background, in "/", holding none of the caller's stdin,
  stdout or stderr (a caller capturing the output gets end of file).  An
  image in use, not pyfs, or needing fsck, and a mount libfuse refuses, are
  refused with a clear one-line message.
- `fusermount3 -u`, `pyfs umount`, SIGTERM and SIGINT all end in a clean
  unmount: journal flushed, final checkpoint, exit 0.  A signal is honoured
  from the moment the kernel mount exists, and one during the final
  checkpoint does not interrupt it.  `pyfs umount` returns once the daemon
  has released the image.
- Paths may hold any character: the image path is escaped in the FUSE
  options and unescaped from /proc/self/mountinfo.
- Exit codes: 0 success, 1 operational error, 2 usage error.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import re
import signal
import subprocess
import sys
import time

from ..engine.device import FileDevice
from ..engine.engine import EngineOptions
from ..format.errors import FormatError

PROG = "pyfs"
log = logging.getLogger("pyfs")


class CliError(Exception):
    pass


def _parse_options(raw: list[str]) -> set[str]:
    opts: set[str] = set()
    for chunk in raw:
        opts.update(o for o in chunk.split(",") if o)
    return opts


def _setup_logging(path: str | None, verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    handlers: list[logging.Handler] = []
    if path:
        handlers.append(logging.FileHandler(path))
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=level, handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def _open_filesystem(image: str, read_only: bool, record: str | None = None):
    from ..fs import FileSystem

    try:
        device = FileDevice.open(image, read_only=read_only)
    except FileNotFoundError:
        raise CliError(f"{image}: no such file") from None
    except OSError as exc:
        raise CliError(str(exc) if exc.errno == errno.EBUSY else f"{image}: {exc.strerror or exc}") from None
    if record is not None:
        # Tests (tools/crashloop.py): log every write and flush for power-loss replay.
        from ..engine.recorder import RecordingDevice

        try:
            device = RecordingDevice(device, record)
        except OSError as exc:
            device.close()
            raise CliError(f"{record}: {exc.strerror or exc}") from None
    try:
        return FileSystem.mount(device, EngineOptions(read_only=read_only))
    except FormatError as exc:
        device.close()
        raise CliError(f"{image}: {exc}; run fsck.pyfs") from None
    except OSError as exc:
        device.close()
        raise CliError(f"{image}: {exc.strerror or exc}") from None


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def serve(fs, mountpoint: str, options: set[str], commit: float, ready=None, step_delay: float = 0.0) -> None:
    """Mount `fs` at `mountpoint` and serve requests until unmounted or signalled.

    `fs` is closed (final checkpoint) whatever happens.  A SIGTERM or SIGINT
    at any moment ends in a clean unmount instead of killing the daemon and
    leaving a dead mount behind: they are blocked (kept pending) from before
    the kernel mount until the signal watcher runs, and ignored outside it
    (during the final checkpoint, in every thread).  `ready` is called once
    requests are served and signals are watched.
    """
    import pyfuse3
    import trio

    from ..mount.operations import PyfsOperations

    fuse_opts = set(pyfuse3.default_options)
    if "no_default_permissions" in options:
        options.discard("no_default_permissions")
        fuse_opts.discard("default_permissions")
    fuse_opts |= options
    fuse_opts.add(f"fsname=pyfs:{_fuse_option_value(os.path.abspath(fs.engine.device.path))}")
    fuse_opts.add("subtype=pyfs")
    mountpoint_lock = _hold_mountpoint(mountpoint)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    old_handlers = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        # libfuse explains a refusal on fd 2 ("fuse: unknown option(s)...");
        # catch it so the user gets one line, not two.
        refused: RuntimeError | None = None
        with _fd2_captured() as captured:
            try:
                operations = PyfsOperations(fs, step_delay)
                pyfuse3.init(operations, mountpoint, fuse_opts)
            except RuntimeError as exc:
                refused = exc
        if refused is None:
            captured.forward()
        else:
            fuse_lines = [ln for ln in captured.lines() if ln.startswith("fuse")]
            captured.forward(exclude=fuse_lines)
            reason = "; ".join(fuse_lines) or str(refused)
            raise CliError(f"cannot mount on {mountpoint}: {reason}")
    except BaseException:
        try:
            _close_fs(fs)
        finally:
            _release(mountpoint_lock)
            for signum, handler in old_handlers.items():
                signal.signal(signum, handler)
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        raise
    # True unless the kernel ended the session (fusermount3 -u): unmounting
    # again then could detach whatever has been mounted there since.
    unmount = True

    async def run() -> None:
        nonlocal unmount
        async with trio.open_nursery() as nursery:
            async def watch_signals(task_status=trio.TASK_STATUS_IGNORED) -> None:
                nonlocal unmount
                with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
                    task_status.started()
                    async for signum in signals:
                        if unmount:
                            log.info("signal %d: already unmounting", signum)
                            continue
                        log.info("signal %d: unmounting", signum)
                        unmount = True
                        pyfuse3.terminate()

            unmount = False
            await nursery.start(watch_signals)
            operations.start_background(nursery)
            if commit > 0 and not fs.read_only:
                nursery.start_soon(fs.engine.run_commit_timer, commit)
            if ready is not None:
                ready()
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    try:
        trio.run(run)
    except BaseException:
        unmount = True
        raise
    finally:
        try:
            pyfuse3.close(unmount=unmount)
        finally:
            try:
                _close_fs(fs)
            finally:
                _release(mountpoint_lock)
    log.info("unmounted cleanly")


def _release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _close_fs(fs) -> None:
    """Final checkpoint and release of the image; a failure is one line, not a traceback."""
    try:
        fs.close()
    except OSError as exc:
        raise CliError(f"final checkpoint failed: {exc}; run fsck.pyfs") from None


class _fd2_captured:
    """Collect what is written to fd 2 (by libfuse's C code) while the block runs."""

    def __enter__(self) -> "_fd2_captured":
        import tempfile

        self._file = tempfile.TemporaryFile()
        sys.stderr.flush()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc_info) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)

    def lines(self) -> list[str]:
        self._file.seek(0)
        return [ln.strip() for ln in self._file.read().decode(errors="replace").splitlines() if ln.strip()]

    def forward(self, exclude: list[str] = ()) -> None:
        """Pass what was captured on to the real fd 2 (log lines, warnings)."""
        rest = [ln for ln in self.lines() if ln not in exclude]
        self._file.close()
        if rest:
            try:
                os.write(2, ("\n".join(rest) + "\n").encode())
            except OSError:
                pass


def cmd_mount(args: argparse.Namespace) -> int:
    options = _parse_options(args.o)
    read_only = "ro" in options
    # The daemon works from "/" (it must not pin the caller's directory), so
    # every path is made absolute first.
    image = os.path.abspath(args.image)
    mountpoint = os.path.abspath(args.mountpoint)
    log_path = os.path.abspath(args.log) if args.log else None
    record = os.path.abspath(args.record) if getattr(args, "record", None) else None
    if not os.path.isdir(mountpoint):
        raise CliError(f"{args.mountpoint}: mount point is not a directory")
    if args.foreground:
        _setup_logging(log_path, args.verbose)
        fs = _open_filesystem(image, read_only, record)
        serve(fs, mountpoint, options, args.commit, step_delay=args.step_delay)
        return 0
    # Background: the child mounts and reports success or the reason of failure.
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        code = 1
        serving = False
        try:
            os.setsid()
            os.chdir("/")
            _setup_logging(log_path, args.verbose)
            fs = _open_filesystem(image, read_only, record)

            def ready() -> None:
                nonlocal serving
                os.write(wfd, b"ok\n")
                os.close(wfd)
                serving = True
                _detach_stdio(log_path)

            serve(fs, mountpoint, options, args.commit, ready, args.step_delay)
            code = 0
        except CliError as exc:
            if serving:
                log.error("%s", exc)
            else:
                _report(wfd, str(exc))
        except Exception as exc:  # noqa: BLE001 - the parent prints it on one line
            if serving:
                log.exception("daemon failed")
            else:
                log.debug("mount failed", exc_info=True)
                _report(wfd, f"mount failed: {exc}")
        finally:
            logging.shutdown()
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as pipe:
        message = pipe.read().decode(errors="replace").strip()
    if message == "ok":
        return 0
    os.waitpid(pid, 0)
    if not message:
        message = "mount failed (the daemon exited without a reason; see --log)"
    raise CliError(message)


def _detach_stdio(log_path: str | None) -> None:
    """The daemon lets go of the caller's terminal or pipes.

    A caller that captures the output of `pyfs mount` waits for end of file
    on it, so none of fds 0-2 may stay open in the daemon.  Whatever reaches
    fd 2 directly (a fatal error of the interpreter) goes to the log, if any.
    """
    devnull = os.open(os.devnull, os.O_RDWR)
    err = devnull
    if log_path:
        try:
            err = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError:
            err = devnull
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(err, 2)
    for fd in {devnull, err}:
        if fd > 2:
            os.close(fd)


def _report(wfd: int, message: str) -> None:
    try:
        os.write(wfd, message.encode() + b"\n")
    except OSError:
        pass


def _unescape_mountinfo(field: str) -> str:
    """The kernel writes space, tab, newline and backslash in mountinfo as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _fuse_option_value(value: str) -> str:
    """libfuse splits -o at commas unless escaped with a backslash."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def _mount_source(mountpoint: str) -> str | None:
    """The image behind a pyfs mount, from /proc/self/mountinfo (None if not a pyfs mount)."""
    target = os.path.realpath(mountpoint)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                source = _unescape_mountinfo(fields[sep + 2])
                if _unescape_mountinfo(fields[4]) == target and source.startswith("pyfs:"):
                    return source[len("pyfs:"):]
    except OSError:
        return None
    return None


def _lock_free(path: str) -> bool:
    """True once nobody holds an exclusive flock on `path` (or it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _hold_mountpoint(mountpoint: str) -> int | None:
    """Lock the directory under the mount for the daemon's life (see cmd_umount).

    The image lock alone cannot tell `pyfs umount` when the daemon of a
    read-only mount is gone: that lock is shared.
    """
    try:
        fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another daemon stacked on the same directory: do without
        os.close(fd)
        return None
    return fd


def cmd_umount(args: argparse.Namespace) -> int:
    mountpoint = os.path.realpath(args.mountpoint)
    image = _mount_source(mountpoint)
    if image is None:
        raise CliError(f"{args.mountpoint}: not a pyfs mount point")
    result = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if result.returncode != 0:
        raise CliError(result.stderr.strip() or f"fusermount3 -u {args.mountpoint} failed")
    # The daemon holds the image lock until its final checkpoint is on disk,
    # and (shared or exclusive image lock alike) the lock on the directory
    # under the mount until it has let go of the image.
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if _lock_free(image) and _lock_free(mountpoint):
            return 0
        time.sleep(0.05)
    raise CliError(f"unmounted, but the daemon still holds {image} after {args.timeout:.0f} s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="pyfs: a crash-safe filesystem in userspace")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mount", help="mount an image")
    m.add_argument("image")
    m.add_argument("mountpoint")
    m.add_argument("-o", action="append", default=[], metavar="OPTS",
                   help="mount options: ro, allow_other, no_default_permissions, FUSE options")
    m.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground")
    m.add_argument("--commit", type=float, default=1.0, metavar="SECONDS",
                   help="flush interval without fsync (default 1 s)")
    m.add_argument("--log", metavar="FILE", help="log to FILE")
    m.add_argument("-v", "--verbose", action="store_true")
    # Tests: pause between the steps of long operations, so a kill lands mid-way.
    m.add_argument("--step-delay", type=float, default=0.0, help=argparse.SUPPRESS)
    # Tests: record every write and flush to FILE (pyfs/recorder.py, tools/crashloop.py).
    m.add_argument("--record", metavar="FILE", help=argparse.SUPPRESS)
    m.set_defaults(func=cmd_mount)
    u = sub.add_parser("umount", help="unmount and wait for the final checkpoint")
    u.add_argument("mountpoint")
    u.add_argument("--timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    u.set_defaults(func=cmd_umount)
    from .control_commands import add_commands

    add_commands(sub.add_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "commit", 1.0) is not None and getattr(args, "commit", 1.0) < 0:
        print(f"{PROG}: --commit must not be negative", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except CliError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 1
    except Exception as exc:  # noqa: BLE001 - never a traceback for the user
        log.debug("unexpected error", exc_info=True)
        print(f"{PROG}: unexpected error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
