"""The supervisor behind `manage.py serve`: a child that dies is restarted with backoff, the stack goes on."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from slmsite.supervisor import ChildSpec, StackFailed, Supervisor
from tests.stack import pid_alive, wait_until

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]
FAIL = [sys.executable, "-c", "import sys; sys.exit(3)"]


@pytest.fixture
def supervisors():
    made: list[Supervisor] = []
    yield made
    for sup in made:
        sup.stop(timeout=5)


def test_a_killed_child_is_restarted_and_the_others_keep_running(supervisors):
    lines: list[str] = []
    sup = Supervisor(
        [ChildSpec("worker", SLEEP), ChildSpec("web", SLEEP)], log=lines.append, backoff_s=0.05, startup_s=0
    )
    supervisors.append(sup)
    sup.start()
    first = sup.pids()
    os.kill(first["worker"], signal.SIGKILL)

    def restarted() -> bool:
        sup.poll()
        return sup.pids()["worker"] not in (None, first["worker"])

    wait_until(restarted, 10, "the worker to be restarted")
    assert sup.pids()["web"] == first["web"]  # the stack did not stop
    assert any("worker" in line and "SIGKILL" in line and "restarting" in line for line in lines)
    assert sup.child("worker").history == [first["worker"], sup.pids()["worker"]]


def test_the_backoff_doubles_while_a_child_keeps_dying_and_is_capped(supervisors):
    sup = Supervisor([ChildSpec("worker", FAIL)], log=lambda _: None, backoff_s=1, backoff_max_s=4, startup_s=0)
    supervisors.append(sup)
    sup.start()
    child = sup.child("worker")
    delays = []
    for _ in range(4):
        assert child.proc is not None
        child.proc.wait(10)
        now = child.started_at + 0.5  # it died half a second after starting
        sup.poll(now)
        assert child.restart_at is not None
        delays.append(round(child.restart_at - now, 3))
        sup.poll(child.restart_at)  # due: restarted
        assert child.restart_at is None
    assert delays == [1, 2, 4, 4]


def test_a_child_that_ran_long_enough_restarts_after_the_initial_backoff(supervisors):
    sup = Supervisor([ChildSpec("worker", FAIL)], log=lambda _: None, backoff_s=1, healthy_s=10, startup_s=0)
    supervisors.append(sup)
    sup.start()
    child = sup.child("worker")
    child.failures = 3  # it had been crash-looping
    assert child.proc is not None
    child.proc.wait(10)
    now = child.started_at + 11  # then ran for longer than healthy_s before dying
    sup.poll(now)
    assert child.restart_at == now + 1


def test_a_child_dying_right_after_its_first_start_stops_the_stack(supervisors):
    sup = Supervisor([ChildSpec("web", FAIL)], log=lambda _: None, startup_s=30)
    supervisors.append(sup)
    sup.start()
    child = sup.child("web")
    assert child.proc is not None
    child.proc.wait(10)
    with pytest.raises(StackFailed, match="web exited with 3 right after starting"):
        sup.poll()


def test_a_one_shot_child_ends_without_restart(supervisors):
    lines: list[str] = []
    sup = Supervisor([ChildSpec("task", FAIL, restart=False)], log=lines.append, startup_s=30)
    supervisors.append(sup)
    sup.start()
    child = sup.child("task")
    assert child.proc is not None
    child.proc.wait(10)
    sup.poll()
    assert child.done and child.starts == 1 and lines == ["task finished with exit code 3"]


def test_a_background_child_runs_at_lower_priority(supervisors):
    """The first-run model build (minutes of training) yields the CPU to the site it runs beside."""
    sup = Supervisor([ChildSpec("site", SLEEP), ChildSpec("build", SLEEP, restart=False, nice=10)], log=print)
    supervisors.append(sup)
    sup.start()
    pids = sup.pids()
    assert os.getpriority(os.PRIO_PROCESS, pids["build"]) == os.getpriority(os.PRIO_PROCESS, 0) + 10 or (
        os.getpriority(os.PRIO_PROCESS, pids["build"]) == 19
    )
    assert os.getpriority(os.PRIO_PROCESS, pids["site"]) == os.getpriority(os.PRIO_PROCESS, 0)


def test_stop_ends_every_child(supervisors):
    sup = Supervisor([ChildSpec("a", SLEEP), ChildSpec("b", SLEEP)], log=lambda _: None)
    sup.start()
    pids = list(sup.pids().values())
    sup.stop(timeout=5)
    assert not any(pid_alive(p) for p in pids if p)


def test_children_die_with_a_killed_supervisor(tmp_path):
    """PR_SET_PDEATHSIG: `kill -9` of the supervisor (serve) does not leave its children behind."""
    import subprocess

    pidfile = tmp_path / "pid"
    code = (
        "import sys, time; from slmsite.supervisor import ChildSpec, Supervisor\n"
        f"s = Supervisor([ChildSpec('c', {SLEEP!r})]); s.start()\n"
        f"open({str(pidfile)!r}, 'w').write(str(s.pids()['c'])); time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=os.getcwd())
    try:
        wait_until(lambda: pidfile.exists() and pidfile.read_text(), 20, "the child to start")
        child = int(pidfile.read_text())
        assert pid_alive(child)
        parent.kill()
        parent.wait(10)
        wait_until(lambda: not pid_alive(child), 10, "the orphan to die")
    finally:
        if parent.poll() is None:
            parent.kill()
