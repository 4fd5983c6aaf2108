"""A problem fsck found, and the repair that would fix it.

A `Finding` is one line of the report: what is wrong (`kind`, `where`,
`message`), what the repair does (`fix`, None when fsck cannot repair it),
whether preen (`-p`) may do that without asking (`safe`), and the repair
itself (`action`, called with the repairer).  Actions read the current state
when they run, so running one after another repair still does the right
thing, and running one twice does nothing more.

`Repairs` is the vocabulary an action may use: the repairs planned before
the image is opened for writing (`plan_*`) and the ones made afterwards as
ordinary transactions.  `fsck.repair.Repairer` provides it.  The checks that
write findings therefore need nothing of the repairer but this list, and
the module order stays one-way: findings <- scan, checks <- repair <- run.
A finding is one line of the report (DESIGN.md invariant 9).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..format.records import AllocInfo


class Repairs(Protocol):
    """The repairs a finding's action may ask for (implemented by `fsck.repair.Repairer`)."""

    # -- planned before the open for writing, made by it ------------------------------------
    def plan_superblock_write(self, offset: int, raw: bytes) -> None: ...
    def plan_salvage(self) -> None: ...
    def plan_replay_until(self, seq: int) -> None: ...
    def plan_rebuild(self, tree: int) -> None: ...
    def plan_alloc(self, bucket: int, info: AllocInfo) -> None: ...

    # -- one or a few ordinary transactions each --------------------------------------------
    def delete_raw(self, tree: int, key: bytes) -> None: ...
    def delete_key(self, tree: int, key: tuple) -> None: ...
    def set_inode(self, ino: int, **changes: Any) -> None: ...
    def fix_counter(self) -> None: ...
    def drop_bad_extent(self, key: tuple[int, int]) -> None: ...
    def delete_extents(self, ino: int) -> None: ...
    def trim_extent(self, key: tuple[int, int], length: int) -> None: ...
    def fix_size(self, ino: int) -> None: ...
    def fix_data_bytes(self, ino: int) -> None: ...
    def unshare(self, key: tuple[int, int]) -> None: ...
    def delete_xattrs(self, ino: int) -> None: ...
    def delete_xattr_chunks(self, ino: int, name: bytes, keep: int) -> None: ...
    def rehash_dirent(self, key: tuple[int, int, bytes]) -> None: ...
    def set_dirent_kind(self, key: tuple[int, int, bytes], kind: int) -> None: ...
    def create_root(self) -> None: ...
    def reconnect(self, ino: int, detach: list[tuple[int, int, bytes]], names_left: int) -> None: ...


RepairAction = Callable[[Repairs], None]


@dataclass
class Finding:
    kind: str
    where: str
    message: str
    fix: str | None = None
    safe: bool = False
    action: RepairAction | None = None
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
