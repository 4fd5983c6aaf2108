"""The mount layer: the pyfuse3 adapter over the filesystem core and the control file it serves."""
