"""A problem fsck found, and how it would repair it.

A `Finding` is one line of the report: what is wrong (`kind`, `where`,
`message`), what the repair does (`fix`, None when fsck cannot repair it),
whether preen (`-p`) may do that without asking (`safe`), and the repair
itself (`action`, run with the `Repairer`).  Actions read the current state
when they run, so running one after another repair still does the right
thing, and running one twice does nothing more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .repair import Repairer


@dataclass
class Finding:
    kind: str
    where: str
    message: str
    fix: str | None = None
    safe: bool = False
    action: Callable[["Repairer"], None] | None = None
    fixed: bool = False
    error: str | None = None  # why the repair was not made (declined, failed)
    asked: bool = False       # the user was asked about it (its line is already on the screen)

    @property
    def fixable(self) -> bool:
        return self.action is not None

    def line(self) -> str:
        return f"{self.where}: {self.message} [{self.kind}]"

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "where": self.where,
            "message": self.message,
            "fix": self.fix,
            "safe": self.safe,
            "fixed": self.fixed,
            "error": self.error,
        }
