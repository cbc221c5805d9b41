"""A small process supervisor for `manage.py serve`: starts the stack's children, restarts one that dies (with
exponential backoff) instead of stopping the stack, and stops them all on request.

A child that exits within `startup_s` of its very first start is a configuration error (port in use, bad
settings): the stack stops and says so. A child that dies later (killed, crashed, OOM) is restarted after
`backoff_s`, doubling up to `backoff_max_s` while it keeps dying, reset once it has run `healthy_s`. A child
with `restart=False` (a one-shot task) just ends. Children get PR_SET_PDEATHSIG, so they stop if the
supervisor itself is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from slm.procs import die_with_parent


@dataclass
class ChildSpec:
    name: str
    argv: Sequence[str]
    env: dict[str, str] | None = None
    cwd: Path | str | None = None
    restart: bool = True  # False: a one-shot task; its exit (any code) is logged and the stack goes on
    nice: int = 0  # added niceness: background work (the first-run model build) yields the CPU to the site


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    starts: int = 0
    failures: int = 0  # consecutive short-lived runs, for the backoff
    restart_at: float | None = None
    done: bool = False
    history: list[int] = field(default_factory=list)  # pids, oldest first


class StackFailed(RuntimeError):
    """A child failed in a way restarting will not fix (it died right after its first start)."""


class Supervisor:
    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        log: Callable[[str], None] = print,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        healthy_s: float = 60.0,
        startup_s: float = 3.0,
    ) -> None:
        self.children = [_Child(spec) for spec in specs]
        self.log = log
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.healthy_s = healthy_s
        self.startup_s = startup_s

    def child(self, name: str) -> _Child:
        return next(c for c in self.children if c.spec.name == name)

    def pids(self) -> dict[str, int | None]:
        return {
            c.spec.name: (c.proc.pid if c.proc is not None and c.proc.poll() is None else None) for c in self.children
        }

    def _spawn(self, child: _Child) -> None:
        spec = child.spec

        def setup(nice: int = spec.nice) -> None:
            die_with_parent()
            if nice:
                os.nice(nice)

        child.proc = subprocess.Popen(  # our own argv, no shell
            list(spec.argv),
            env=spec.env,
            cwd=spec.cwd,
            preexec_fn=setup,  # safe: the supervisor is single-threaded
        )
        child.started_at = time.monotonic()
        child.starts += 1
        child.restart_at = None
        child.history.append(child.proc.pid)

    def start(self) -> None:
        for child in self.children:
            self._spawn(child)

    def poll(self, now: float | None = None) -> None:
        """One supervision step: notices exits, schedules and performs restarts. Raises StackFailed."""
        now = time.monotonic() if now is None else now
        for child in self.children:
            if child.done:
                continue
            if child.proc is not None and child.restart_at is None:
                code = child.proc.poll()
                if code is None:
                    if child.failures and now - child.started_at >= self.healthy_s:
                        child.failures = 0
                    continue
                ran = now - child.started_at
                name = child.spec.name
                if not child.spec.restart:
                    self.log(f"{name} finished with exit code {code}")
                    child.done = True
                    continue
                if child.starts == 1 and ran < self.startup_s:
                    raise StackFailed(f"{name} exited with {code} right after starting; stopping the stack")
                child.failures = child.failures + 1 if ran < self.healthy_s else 1
                delay = min(self.backoff_max_s, self.backoff_s * 2 ** (child.failures - 1))
                child.restart_at = now + delay
                self.log(f"{name} (pid {child.proc.pid}) died with {_describe(code)}; restarting it in {delay:.0f}s")
            if child.restart_at is not None and now >= child.restart_at:
                self._spawn(child)
                self.log(f"{child.spec.name} restarted (pid {child.proc.pid if child.proc else '?'})")

    def run(self, interval: float = 0.5) -> None:
        while True:
            self.poll()
            time.sleep(interval)

    def stop(self, timeout: float = 15.0) -> None:
        running = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for proc in running:
            proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
