"""What callers see of an inode: `Attr` (stat fields) and `Ctx` (who is asking)."""

from __future__ import annotations

from dataclasses import dataclass

from ..format.records import Inode

BLOCK_SIZE = 4096


@dataclass(frozen=True)
class Ctx:
    """The caller of an operation (FUSE request context)."""

    uid: int = 0
    gid: int = 0
    pid: int = 0
    umask: int = 0
    groups: tuple[int, ...] = ()  # supplementary groups


ROOT_CTX = Ctx()


@dataclass(frozen=True)
class Attr:
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blocks: int  # 512-byte units
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    generation: int
    blksize: int = BLOCK_SIZE

    @classmethod
    def of(cls, ino: int, inode: Inode) -> "Attr":
        return cls(
            ino=ino,
            mode=inode.mode,
            nlink=inode.nlink,
            uid=inode.uid,
            gid=inode.gid,
            rdev=inode.rdev,
            size=inode.size,
            # ext4 allocates whole 4 KiB blocks; st_blocks counts them in 512-byte units.
            blocks=-(-inode.data_bytes // BLOCK_SIZE) * (BLOCK_SIZE // 512),
            atime_ns=inode.atime_ns,
            mtime_ns=inode.mtime_ns,
            ctime_ns=inode.ctime_ns,
            generation=inode.generation,
        )


@dataclass(frozen=True)
class StatFs:
    block_size: int
    blocks: int
    blocks_free: int
    blocks_avail: int
    files: int
    files_free: int
    name_max: int
