"""Jobs that tests enqueue for a real worker subprocess (importable by name from the repository root)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def hold_job(pidfile: str, release: str) -> str:
    """Writes the work horse's pid, then waits while `release` does not exist (at most 60 s)."""
    Path(pidfile).write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)
    return "released"
