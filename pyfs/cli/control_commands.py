"""The `pyfs` subcommands that talk to a mounted filesystem through its control file.

collapse, insert, punch, zero, rmtree, ops, stat and flush; their usage
lines are in the docstring of `pyfs.cli.main`, which registers them here
(`add_commands`).  No FUSE library is imported: they reach the daemon
through `pyfs.client`.

Promises (DESIGN.md invariant 9, tests/test_client.py):
- Each command is one call of `pyfs.client` and returns when that call does
  (see its docstring for what the daemon has done by then).
- OFFSET and LENGTH are non-negative integers, optionally with a suffix k,
  m, g or t (either case, powers of 1024) itself optionally followed by
  "iB" or "B": 4096, 4k, 1M, 2GiB.
- Exit codes: 0 success; 1 the command failed, with one line on stderr
  naming the errno (`pyfs: collapse /mnt/f: Invalid argument (EINVAL)`);
  2 usage error (a bad size, a missing argument), also one line.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from ..client import commands as client

PROG = "pyfs"

_SIZE = re.compile(r"(\d+)(?:([kmgtKMGT])(?:[iI]?[bB])?|[bB])?")
_SHIFT = {"k": 10, "m": 20, "g": 30, "t": 40}


class UsageError(Exception):
    """A command line the user must correct (exit 2)."""


def parse_size(text: str) -> int:
    """A byte count: digits with an optional k/m/g/t suffix (powers of 1024), optionally + "iB" or "B"."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"not a size: {text!r} (use e.g. 4096, 4k, 1M, 2GiB)")
    digits, suffix = match.groups()
    return int(digits) << _SHIFT[suffix.lower()] if suffix else int(digits)


def format_bytes(n: int | float) -> str:
    """A byte count for people: "512 B", "4.0 KiB", "412 MiB", "1.0 GiB"."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "B":
        return f"{int(n)} B"
    return f"{value:.1f} {unit}" if abs(value) < 10 else f"{value:.0f} {unit}"


def format_progress(op: dict) -> str:
    """ "37% (412 MiB of 1.0 GiB)", "12034 entries", "60% (12034 of 20000 entries)"."""
    done = int(op.get("done") or 0)
    total = op.get("total")
    if op.get("unit") == "entries":
        if not total:
            return f"{done} entries"
        return f"{_percent(done, total)} ({done} of {total} entries)"
    if not total:
        return format_bytes(done)
    return f"{_percent(done, total)} ({format_bytes(done)} of {format_bytes(total)})"


def _percent(done: int, total: int) -> str:
    return f"{min(100, max(0, done * 100 // total))}%"


def _printable(path: str) -> str:
    """A path as text any terminal takes: bytes that are not UTF-8 shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def format_ops(ops: list[dict]) -> str:
    """The table `pyfs ops` prints."""
    if not ops:
        return "no long operations running"
    rows = [("KIND", "FILE", "PROGRESS")]
    for op in ops:
        label = op.get("label")
        shown = _printable(label) if label else f"inode {op.get('ino')}"
        rows.append((str(op.get("kind", "?")), shown, format_progress(op)))
    kind_w = max(len(r[0]) for r in rows)
    file_w = max(len(r[1]) for r in rows)
    return "\n".join(f"{k:<{kind_w}}  {f:<{file_w}}  {p}".rstrip() for k, f, p in rows)


def format_stat(figures: dict) -> str:
    """The summary `pyfs stat` prints."""
    space = figures.get("space", {})
    journal = figures.get("journal", {})
    lines = [
        f"space:        {format_bytes(space.get('free_bytes', 0))} free of {format_bytes(space.get('total_bytes', 0))}"
        f" ({format_bytes(space.get('avail_bytes', 0))} available)",
        f"inodes:       {figures.get('inodes', 0)}",
        "keys:         " + ", ".join(f"{tree} {count}" for tree, count in sorted(figures.get("keys", {}).items())),
        f"journal:      {format_bytes(journal.get('bytes', 0))}, {float(journal.get('fill', 0.0)) * 100:.1f}% full",
        f"commits:      {figures.get('commits', 0)} (seq {figures.get('seq', 0)}, durable {figures.get('durable_seq', 0)})",
        f"checkpoints:  {figures.get('checkpoints', 0)}",
        f"long ops:     {figures.get('long_ops', 0)}",
    ]
    return "\n".join(lines)


# -- commands ------------------------------------------------------------------------------


def _failed(command: str, path: str, exc: OSError) -> int:
    name = errno.errorcode.get(exc.errno or 0, f"errno {exc.errno}")
    print(f"{PROG}: {command} {path}: {exc.strerror or 'failed'} ({name})", file=sys.stderr)
    return 1


def _usage(command: str, message: str) -> int:
    print(f"{PROG} {command}: {message}", file=sys.stderr)
    return 2


def _range_command(fn: Callable[..., None]) -> Callable[[argparse.Namespace], int]:
    """The `func` of collapse/insert/punch/zero: parse the sizes, call `fn`, report."""

    def run(args: argparse.Namespace) -> int:
        try:
            offset, length = parse_size(args.offset), parse_size(args.length)
        except UsageError as exc:
            return _usage(args.command, str(exc))
        extra = {"keep_size": args.keep_size} if hasattr(args, "keep_size") else {}
        try:
            fn(args.file, offset, length, **extra)
        except OSError as exc:
            return _failed(args.command, args.file, exc)
        return 0

    return run


def _path_command(name: str, call: Callable[[str], Any],
                  show: Callable[[Any], str] | None = None) -> Callable[[argparse.Namespace], int]:
    """The `func` of rmtree/flush/ops/stat: call the client on the path; ops/stat print
    the answer as a table or (--json) as JSON."""

    def run(args: argparse.Namespace) -> int:
        try:
            answer = call(args.path)
        except OSError as exc:
            return _failed(name, args.path, exc)
        if show is not None:
            print(json.dumps(answer, indent=1) if args.json else show(answer))
        return 0

    return run


def _one_line_errors(parser: argparse.ArgumentParser, command: str) -> None:
    """Usage errors of this subcommand on one line (argparse prints the usage block too)."""

    def error(message: str):
        parser.exit(2, f"{PROG} {command}: {message} (see {PROG} {command} --help)\n")

    def parse_known_args(args=None, namespace=None):
        # Extra arguments would otherwise be reported by the top-level parser, with its usage block.
        namespace, extras = type(parser).parse_known_args(parser, args, namespace)
        if extras:
            error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    parser.error = error  # type: ignore[method-assign]
    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]


def add_commands(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Register the control subcommands on the `pyfs` parser (`add_parser` of its subparsers)."""
    ranges = [
        ("collapse", client.collapse, "remove a block-aligned range; the rest of the file moves down"),
        ("insert", client.insert, "insert a block-aligned hole; the rest of the file moves up"),
        ("punch", client.punch, "deallocate a range (reads as zeros); keeps the size"),
        ("zero", client.zero, "make a range read as zeros; the file grows to cover it"),
    ]
    for name, fn, help_text in ranges:
        p = add_parser(name, help=help_text, description=help_text)
        p.add_argument("file", metavar="FILE")
        p.add_argument("offset", metavar="OFFSET", help="bytes; suffixes k, M, G, T (powers of 1024), e.g. 4k, 1MiB")
        p.add_argument("length", metavar="LENGTH", help="bytes; same suffixes")
        if name == "punch":
            p.add_argument("--no-keep-size", dest="keep_size", action="store_false",
                           help="grow the file to cover a range that ends past its end")
        elif name == "zero":
            p.add_argument("-n", "--keep-size", dest="keep_size", action="store_true",
                           help="do not grow the file to cover the range")
        p.set_defaults(func=_range_command(fn), command=name)
        _one_line_errors(p, name)

    paths = [
        ("rmtree", client.rmtree, None, "DIR", "remove a directory tree (contents deleted in the background)"),
        ("ops", client.ops, format_ops, "MOUNTPOINT", "list the long operations running"),
        ("stat", client.stat, format_stat, "MOUNTPOINT", "space, keys, journal and commit figures of a mount"),
        ("flush", client.flush, None, "MOUNTPOINT", "return when everything committed is durable"),
    ]
    for name, call, show, metavar, help_text in paths:
        p = add_parser(name, help=help_text)
        p.add_argument("path", metavar=metavar)
        if show is not None:
            p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=_path_command(name, call, show))
        _one_line_errors(p, name)
