"""pyfs: a crash-safe filesystem in userspace, with bcachefs-style btrees and journal."""

__version__ = "0.1.0"
