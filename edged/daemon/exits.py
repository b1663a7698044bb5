"""Exit statuses of the server process, shared with its supervisor (which must not import grpc)."""

EXIT_OK = 0
EXIT_BOOT_FAILURE = 78
"""sysexits' EX_CONFIG: the server cannot boot (bad config, nothing deployed); do not restart it."""
