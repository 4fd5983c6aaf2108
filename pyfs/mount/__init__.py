"""The mount layer: serving the filesystem core to the kernel through pyfuse3, and the control file.

The modules, each importing only those above it in this list (pyfuse3 is
imported in this layer only; `mount_marks` needs no FUSE library):

    mount_marks      what other processes see of a mount: the image in mountinfo, the mount-point lock
    kernel_cache     invalidating the kernel's cached names, pages and attributes
    longop_runner    running long operations step by step; waits on busy inodes
    control_channel  the hidden control file: commands and queries
    operations       the pyfuse3 handlers: one core call each, errno translation
    serve            the kernel mount, the one nursery of background work, a clean unmount
"""
