"""The command layer: argument parsing, process life and one-line errors of `pyfs`, `mkfs.pyfs`, `fsck.pyfs`."""
