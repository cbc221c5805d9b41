"""Process helpers shared by the training launcher (slm/training.py) and the site's worker and supervisor."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Asks the kernel to send `sig` to this process when its parent dies, even by SIGKILL (Linux; a no-op
    elsewhere). Usable as `subprocess.Popen(preexec_fn=...)` in a single-threaded parent."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - no libc prctl
        pass
