"""The journal: a circular region of entries, one per committed transaction.

`writer` appends entries and makes them durable (group commit); `scan` finds
the chain to replay at mount and tells a torn tail from corruption.
"""

from .scan import JournalCorrupt, ScanResult, scan_journal
from .writer import FlushJob, JournalFull, JournalWriter

__all__ = ["FlushJob", "JournalCorrupt", "JournalFull", "JournalWriter", "ScanResult", "scan_journal"]
