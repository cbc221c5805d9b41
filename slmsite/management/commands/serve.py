"""`make run`: migrate, ensure an admin, then run Redis (embedded unless REDIS_URL is set), an RQ worker
(queues gpu, default; with scheduler), the periodic-job scheduler (`rqcron`) with its own small worker
(queue SLM_MAINTENANCE_QUEUE, never stuck behind a training job), daphne, and, when default models are
missing, a one-shot `bootstrap_models --demo` beside them: the site answers within seconds and its pages
say "model building (x%)" until each default model is live (minutes on a fresh machine), instead of a
blank wait. A child that dies is restarted with backoff (slmsite/supervisor.py); Ctrl-C or SIGTERM stops
all."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from slmsite import embedded_redis
from slmsite.supervisor import ChildSpec, StackFailed, Supervisor


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
        redis_proc = None
        supervisor: Supervisor | None = None
        if not os.environ.get("REDIS_URL"):
            redis_proc = embedded_redis.start(settings.REDIS_SOCKET)
            self.stdout.write(f"redis: embedded at {settings.REDIS_URL}")
        else:
            self.stdout.write(f"redis: {settings.REDIS_URL}")
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            call_command("migrate", interactive=False, verbosity=0)
            call_command("ensure_admin")
            call_command("collectstatic", interactive=False, verbosity=0)
            supervisor = Supervisor(
                self.children(opts),
                log=lambda line: self.stderr.write(line),
                backoff_s=settings.SLM_RESTART_BACKOFF_S,
                backoff_max_s=settings.SLM_RESTART_BACKOFF_MAX_S,
            )
            supervisor.start()
            pids = ", ".join(f"{name} {pid}" for name, pid in supervisor.pids().items())
            self.stdout.write(f"started: {pids}")
            self.stdout.write(self.style.SUCCESS(f"slm is up: http://{opts['host']}:{opts['port']}/  (Ctrl-C stops)"))
            missing = [] if opts["no_bootstrap"] else _missing_default_models()
            if missing:
                self.stdout.write(
                    f"default models building in the background ({', '.join(missing)}): the pages and /healthz "
                    'show progress ("bootstrap": {"state": "done"} when they are live)'
                )
            supervisor.run()
        except KeyboardInterrupt:
            pass
        except StackFailed as exc:
            self.stderr.write(str(exc))
        finally:
            self.stdout.write("stopping…")
            if supervisor is not None:
                supervisor.stop()
            embedded_redis.stop(redis_proc)

    def children(self, opts: dict[str, Any]) -> list[ChildSpec]:
        env = {
            **os.environ,
            "REDIS_URL": settings.REDIS_URL,
            "PYTHONUNBUFFERED": "1",
            "SLM_WARM_ENGINE_ON_START": "1",
        }
        manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
        specs = []
        if not opts["no_bootstrap"]:
            # one-shot: builds what is missing (seconds when every default model is live), then the demo
            specs.append(
                ChildSpec("bootstrap", [*manage, "bootstrap_models", "--demo"], env=env, restart=False, nice=10)
            )
        if not opts["no_worker"]:
            specs.append(
                ChildSpec(
                    "worker",
                    [*manage, "rqworker", settings.SLM_GPU_QUEUE, settings.SLM_DEFAULT_QUEUE, "--with-scheduler"],
                    env=env,
                )
            )
        specs.append(ChildSpec("cron", [*manage, "rqcron", "slmsite.cron"], env=env))
        specs.append(ChildSpec("maintenance", [*manage, "rqworker", settings.SLM_MAINTENANCE_QUEUE], env=env))
        # daphne, with WebSocket messages over its size limit refused by a close 1009 (slmsite/server.py)
        server = [sys.executable, "-m", "slmsite.server", "-b", opts["host"], "-p", str(opts["port"])]
        daphne = [*server, "slmsite.asgi:application"]
        specs.append(ChildSpec("daphne", daphne, env=env, cwd=settings.BASE_DIR))
        return specs


def _missing_default_models() -> list[str]:
    """The default models `bootstrap_models` will build (no live version yet)."""
    from slmsite.bootstrap import builders
    from slmsite.registry import get_registry

    registry = get_registry()
    wanted = set(settings.SLM_BOOTSTRAP)
    return [
        b.model_name
        for b in builders()
        if ("all" in wanted or b.name in wanted) and not registry.live_version(b.model_name)
    ]


def _raise_keyboard_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt()
