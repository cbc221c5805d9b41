import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_manage(
    args: list[str], env_extra: dict[str, str], drop: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_prod_refuses_without_secret_key(tmp_path):
    r = run_manage(
        ["check"],
        {"DJANGO_SETTINGS_MODULE": "slmsite.settings.prod", "SLM_VAR_DIR": str(tmp_path)},
        drop=("SECRET_KEY",),
    )
    assert r.returncode != 0
    assert "SECRET_KEY must be set" in r.stderr


def test_prod_check_deploy_is_clean(tmp_path):
    key = "k" * 20 + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0"
    r = run_manage(
        ["check", "--deploy", "--fail-level", "WARNING"],
        {
            "DJANGO_SETTINGS_MODULE": "slmsite.settings.prod",
            "SECRET_KEY": key,
            "SLM_VAR_DIR": str(tmp_path),
            "ALLOWED_HOSTS": "example.org",
        },
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no issues" in r.stdout


def test_sqlite_uses_wal_and_busy_timeout(db):
    from django.db import connection

    if connection.vendor != "sqlite":
        return
    with connection.cursor() as cur:
        cur.execute("PRAGMA journal_mode")
        assert cur.fetchone()[0].lower() == "wal"
    assert connection.settings_dict["OPTIONS"]["timeout"] >= 5


def test_dev_settings_env_overrides(tmp_path):
    code = "from django.conf import settings as s; print(s.DEBUG, s.ALLOWED_HOSTS, s.REDIS_URL, s.CHAT_MAX_BATCH)"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "slmsite.settings.dev",
        "ALLOWED_HOSTS": "a.test,b.test",
        "REDIS_URL": "redis://127.0.0.1:6399/3",
        "CHAT_MAX_BATCH": "3",
        "SLM_VAR_DIR": str(tmp_path),
    }
    r = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); " + code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "True ['a.test', 'b.test'] redis://127.0.0.1:6399/3 3"


def test_custom_queue_names_are_queues_rqworker_can_listen_on(tmp_path):
    """SLM_GPU_QUEUE / SLM_DEFAULT_QUEUE name the queues jobs go to; rqworker (and serve) must accept them."""
    import json

    code = (
        "import json, django; django.setup(); from django.conf import settings as s; "
        "print(json.dumps([s.SLM_GPU_QUEUE, s.SLM_DEFAULT_QUEUE, sorted(s.RQ_QUEUES), "
        "s.RQ_QUEUES['training'] == s.RQ_QUEUES['gpu'], s.RQ_QUEUES['io'] == s.RQ_QUEUES['default']]))"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "slmsite.settings.dev",
        "SLM_VAR_DIR": str(tmp_path),
        "SLM_GPU_QUEUE": "training",
        "SLM_DEFAULT_QUEUE": "io",
    }
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    gpu, default, queues, same_gpu, same_default = json.loads(r.stdout.strip().splitlines()[-1])
    assert (gpu, default, same_gpu, same_default) == ("training", "io", True, True)
    assert {"gpu", "default", "training", "io"} <= set(queues)
