"""The RQ worker class of every worker this project starts (settings.RQ["WORKER_CLASS"]), and the helpers that
make the processes below a worker die with it.

RQ forks a work horse per job and, with `--with-scheduler`, a scheduler process. Neither dies when the worker
is killed (`kill -9`, the OOM killer): the horse would finish a training run and register/promote a version
nobody supervises, and the scheduler would keep holding the scheduler locks so the restarted worker runs
without one. Here every process the worker forks asks Linux to signal it when its parent dies
(`prctl(PR_SET_PDEATHSIG)`): SIGTERM for the scheduler (it releases its locks and exits), SIGKILL for the
work horse. Jobs also call `ensure_worker_alive()` before a step that must not happen for a dead worker
(registering or promoting a model version), which closes the window between the death and the signal.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from rq.worker import Worker as RQWorker

from slm.procs import die_with_parent

_fork_hook_installed = False
# In a process forked by the worker (or by one of its descendants): the pid of the process that forked it;
# None elsewhere (the worker itself, a SimpleWorker, a test).
_parent_pid: int | None = None
_forking_pid = 0
_inherited_db: list[Any] = []  # the parent's DB connections/pools, kept referenced and never used or closed


class WorkerGone(RuntimeError):
    """The RQ worker that started this job has died; the job must stop without side effects."""


def parent_alive(expected_ppid: int | None) -> bool:
    """True unless this process was forked by `expected_ppid` and has since been re-parented (it died)."""
    return expected_ppid is None or os.getppid() == expected_ppid


def ensure_worker_alive() -> None:
    """Raises WorkerGone in a work horse whose worker has died. Call it before registering or promoting."""
    if not parent_alive(_parent_pid):
        raise WorkerGone(f"the RQ worker (pid {_parent_pid}) that ran this job died; stopping without side effects")


def _before_fork() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _forget_inherited_db() -> None:
    """A forked child must neither use the parent's database connections and pool (their sockets are shared)
    nor close them (that would end the parent's sessions): it drops them and opens its own."""
    if "django.db" not in sys.modules:
        return
    from django.db import connections

    pg = sys.modules.get("django.db.backends.postgresql.base")
    if pg is not None:
        pools = pg.DatabaseWrapper._connection_pools
        _inherited_db.extend(pools.values())
        pools.clear()
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None:
            _inherited_db.append(conn.connection)
            conn.connection = None


def _after_fork_in_child() -> None:
    """In every process forked below the worker: die when the process that forked it dies (a chain down the
    tree: horse -> its own forks), with database connections of its own."""
    global _parent_pid
    _parent_pid = _forking_pid
    die_with_parent(signal.SIGTERM)
    if not parent_alive(_parent_pid):  # the parent died before the signal was armed
        os._exit(1)
    _forget_inherited_db()


class Worker(RQWorker):
    """rq's forking Worker whose forked processes (work horse, scheduler) die with it."""

    def work(self, *args: Any, **kwargs: Any) -> bool:
        global _fork_hook_installed
        if not _fork_hook_installed:
            os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
            _fork_hook_installed = True
        return super().work(*args, **kwargs)

    def setup_work_horse_signals(self) -> None:
        super().setup_work_horse_signals()
        die_with_parent(signal.SIGKILL)  # a training run must not outlive (and finish for) a dead worker
        if not parent_alive(_parent_pid):
            os._exit(1)
