"""`make run`: migrate, ensure an admin, bootstrap default models, then run Redis (embedded unless
REDIS_URL is set), an RQ worker (queues gpu, default; with scheduler) and daphne. Ctrl-C stops all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from slmsite import embedded_redis


class Command(BaseCommand):
    help = "Runs the whole stack: Redis (embedded unless REDIS_URL), RQ worker and daphne."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default=os.environ.get("SLM_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("SLM_PORT", "8000")))
        parser.add_argument("--no-bootstrap", action="store_true", help="do not build missing default models")
        parser.add_argument(
            "--no-worker", action="store_true", help="do not start an RQ worker (e.g. it runs on a GPU machine)"
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
        procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        redis_proc = None
        if not os.environ.get("REDIS_URL"):
            redis_proc = embedded_redis.start(settings.REDIS_SOCKET)
            self.stdout.write(f"redis: embedded at {settings.REDIS_URL}")
        else:
            self.stdout.write(f"redis: {settings.REDIS_URL}")
        try:
            call_command("migrate", interactive=False, verbosity=0)
            call_command("ensure_admin")
            call_command("collectstatic", interactive=False, verbosity=0)
            if not opts["no_bootstrap"]:
                call_command("bootstrap_models")
                call_command("create_demo_project")
            env = {
                **os.environ,
                "REDIS_URL": settings.REDIS_URL,
                "PYTHONUNBUFFERED": "1",
                "SLM_WARM_ENGINE_ON_START": "1",
            }
            manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
            if not opts["no_worker"]:
                procs.append(
                    (
                        "worker",
                        subprocess.Popen(
                            [
                                *manage,
                                "rqworker",
                                settings.SLM_GPU_QUEUE,
                                settings.SLM_DEFAULT_QUEUE,
                                "--with-scheduler",
                            ],
                            env=env,
                        ),
                    )
                )
            daphne = [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                opts["host"],
                "-p",
                str(opts["port"]),
                "slmsite.asgi:application",
            ]
            procs.append(("daphne", subprocess.Popen(daphne, env=env, cwd=settings.BASE_DIR)))
            self.stdout.write(self.style.SUCCESS(f"slm is up: http://{opts['host']}:{opts['port']}/  (Ctrl-C stops)"))
            self._wait(procs)
        except KeyboardInterrupt:
            pass
        finally:
            self.stdout.write("stopping…")
            for _, p in procs:
                if p.poll() is None:
                    p.terminate()
            deadline = time.monotonic() + 15
            for _, p in procs:
                try:
                    p.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
            embedded_redis.stop(redis_proc)

    def _wait(self, procs: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while True:
            for name, p in procs:
                code = p.poll()
                if code is not None:
                    self.stderr.write(f"{name} exited with {code}; stopping the stack")
                    return
            time.sleep(0.5)
