"""Command-line entry points (``python -m experiments.<name>``)."""

import sys


def report_error(e: Exception) -> int:
    """Prints ``e`` as one ``error:`` line on stderr; returns the exit status: 74 (EX_IOERR)
    for an I/O error while running, 2 for a missing file or a bad value (fix the command)."""
    print(f"error: {e}", file=sys.stderr)
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
        return 74
    return 2
