"""How fsck talks: one line per problem, notes, questions, progress bars, a summary or JSON.

Human output goes to `out` (stdout), one line per problem as it is found or
repaired, then a summary with units.  With `json_mode` nothing but the final
JSON document reaches `out`.  Questions (interactive mode) are written to
the terminal and answered from `answers`.  Progress bars appear only on a
terminal and only for passes big enough to take a while.

DESIGN.md invariant 9: a problem is one line, an error is one line, never
a traceback (proven by tests/test_fsck.py).
"""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

from .findings import Finding

PROG = "fsck.pyfs"
BAR_MIN_ITEMS = 20_000
BAR_WIDTH = 30


def human_bytes(n: int) -> str:
    for shift, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


class Bar:
    """A progress bar on a terminal; does nothing elsewhere."""

    def __init__(self, stream: TextIO | None, label: str, total: int) -> None:
        self.stream = stream
        self.label = label
        self.total = max(1, total)
        self.done = 0
        self._drawn = 0.0

    def advance(self, n: int = 1) -> None:
        if self.stream is None:
            return
        self.done += n
        now = time.monotonic()
        if now - self._drawn >= 0.1:
            self._drawn = now
            frac = min(1.0, self.done / self.total)
            filled = int(frac * BAR_WIDTH)
            self.stream.write(f"\r{self.label:<24} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {frac:4.0%}")
            self.stream.flush()

    def close(self) -> None:
        if self.stream is not None and self._drawn:
            self.stream.write("\r" + " " * (BAR_WIDTH + 32) + "\r")
            self.stream.flush()

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Report:
    def __init__(
        self,
        out: TextIO | None = None,
        err: TextIO | None = None,
        *,
        json_mode: bool = False,
        verbose: bool = False,
        answers: TextIO | None = None,
        progress: bool | None = None,
        image: str = "image",
    ) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.json_mode = json_mode
        self.verbose = verbose
        self.answers = answers
        self.image = image
        if progress is None:
            progress = is_terminal(self.err)
        self.progress = progress
        self.quiet = False  # the re-check after a repair reports nothing by itself

    # -- lines ----------------------------------------------------------------------------

    def _line(self, text: str) -> None:
        if not self.json_mode and not self.quiet:
            print(text, file=self.out, flush=True)

    def problem(self, f: Finding, status: str) -> None:
        """status: 'found' (check only), 'fixed', 'not fixed'."""
        if status == "found":
            tail = f" (fix: {f.fix})" if f.fix else " (fsck cannot repair this)"
        elif status == "fixed":
            tail = f": fixed ({f.fix})" + (f"; {f.error}" if f.error else "")
        else:
            tail = ": NOT FIXED" + (f" ({f.error})" if f.error else "")
        self._line(("  ->" + tail.removeprefix(":")) if f.asked else f.line() + tail)

    def note(self, text: str) -> None:
        self._line(f"note: {text}")

    def info(self, text: str) -> None:
        if self.verbose:
            self._line(text)

    def error(self, text: str) -> None:
        print(f"{PROG}: {text}", file=self.err, flush=True)

    # -- questions -------------------------------------------------------------------------

    def ask(self, f: Finding) -> str:
        """'y', 'n', 'a' (yes to all) or 'q' (cancel); end of input cancels."""
        stream = self.out if not self.json_mode and is_terminal(self.out) else self.err
        stream.write(f"{f.line()}\n  {f.fix}? [y/n/a/q] ")
        stream.flush()
        assert self.answers is not None
        while True:
            line = self.answers.readline()
            if not line:
                stream.write("\n")
                return "q"
            answer = line.strip().lower()[:1]
            if answer in ("y", "n", "a", "q"):
                return answer
            stream.write("  please answer y (yes), n (no), a (yes to all) or q (quit): ")
            stream.flush()

    # -- progress ----------------------------------------------------------------------------

    def bar(self, label: str, total: int) -> Bar:
        show = self.progress and not self.quiet and total >= BAR_MIN_ITEMS
        return Bar(self.err if show else None, label, total)

    # -- the end -----------------------------------------------------------------------------

    def finish(self, result) -> None:
        if self.json_mode:
            print(json.dumps(result.as_json(self.image), indent=2), file=self.out, flush=True)
            return
        s = result.stats
        if result.exit_code == 8 and not s and not result.findings:
            print(f"{self.image}: not checked", file=self.out, flush=True)
            return
        found = len(result.findings)
        fixed = sum(1 for f in result.findings if f.fixed)
        what = {0: "clean", 1: "repaired", 4: "PROBLEMS LEFT UNREPAIRED", 8: "not checked",
                32: "cancelled"}.get(result.exit_code, "?")
        counts = ""
        if "files" in s:
            counts = (f"{s['files']} files, {s['directories']} directories, "
                      f"{human_bytes(s['bytes_used'])} used ({human_bytes(s['data_bytes'])} of file data); ")
        elif "inodes" in s:
            counts = f"{s['inodes']} inodes; "
        print(f"{self.image}: {what}: {counts}{found} problems found, {fixed} fixed; "
              f"{result.seconds:.2f} s", file=self.out, flush=True)


def is_terminal(stream: TextIO) -> bool:
    """True if `stream` is a terminal (False for anything that cannot say, like a closed file)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
