"""The ``fmnpatch`` command line: one file per command, each a thin layer over one library call."""
