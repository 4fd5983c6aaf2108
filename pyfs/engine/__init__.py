"""The storage engine layer: device, btrees, journal, bucket space, transactions, checkpoints.

Knows nothing of POSIX or FUSE: keys and values are bytes in numbered btrees.
"""
