"""Writing into a Triton-layout model repository: the version folder by atomic rename, the
config.pbtxt, the manifest, and a dry run of the daemon's own loader before anything is written.

The daemon's package of the same name (``ortserve.repository``) reads the repository; this one
writes it, and checks what it writes with the daemon's readers."""
