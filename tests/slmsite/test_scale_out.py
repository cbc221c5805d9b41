"""Scale-out on one machine (docs/scale-out.md): two daphne processes (slmsite.server, channels-redis layer),
a worker that listens only on the `gpu` queue and one only on `default`, the test database (PostgreSQL in
CI's second pass) and one registry directory. Labels go in through one web process, the retrain is asked
for through the other; the gpu worker trains and promotes, the default worker re-scores the pool, and both
web processes serve the new version without a restart. nginx is not needed: the test talks to both."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest

from slm.classify.testing import make_tiny_version
from slmsite.services import api_token_create
from tests.annotate.conftest import NEG, POS
from tests.stack import ROOT, free_port, listening, stack_env, stop, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]


@dataclass
class Topology:
    web: list[int]  # the two daphne ports
    procs: dict[str, subprocess.Popen[bytes]]
    queues: dict[str, str]  # kind -> queue name
    workers: dict[str, str]  # kind -> worker name


def _call(port: int, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    req = Request(f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers)
    try:
        with urlopen(req, timeout=60) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture
def topology(registry, tmp_path):  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:8]
    queues = {"gpu": f"scale-gpu-{tag}", "default": f"scale-default-{tag}"}
    workers = {"gpu": f"gpu-worker-{tag}", "default": f"cpu-worker-{tag}"}
    env = stack_env(
        SLM_TEST_REDIS_CHANNELS="1",  # channels-redis, as in production
        SLM_GPU_QUEUE=queues["gpu"],
        SLM_DEFAULT_QUEUE=queues["default"],
        CHAT_ENGINE_WARM="0",
        CHAT_STREAMS_PREFIX=f"test-scale-{tag}",
    )
    procs: dict[str, subprocess.Popen[bytes]] = {}
    web = [free_port(), free_port()]
    manage = [sys.executable, "manage.py"]
    commands = {
        "web-a": [sys.executable, "-m", "slmsite.server", "-b", "127.0.0.1", "-p", str(web[0]), "slmsite.asgi:application"],
        "web-b": [sys.executable, "-m", "slmsite.server", "-b", "127.0.0.1", "-p", str(web[1]), "slmsite.asgi:application"],
        # the GPU machine's worker takes training only; the other one everything else (and the scheduler)
        "gpu": [*manage, "rqworker", queues["gpu"], "--name", workers["gpu"]],
        "default": [*manage, "rqworker", queues["default"], "--with-scheduler", "--name", workers["default"]],
    }  # fmt: skip
    logs = []
    try:
        for name, argv in commands.items():
            log = open(tmp_path / f"{name}.log", "wb")
            logs.append(log)
            procs[name] = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        for port in web:
            wait_until(lambda port=port: listening(port), 120, "both daphne processes to listen")
        yield Topology(web, procs, queues, workers)
    finally:
        stop(*procs.values())
        for log in logs:
            log.close()


def _predict_model(port: int, token: str) -> str:
    status, body = _call(port, "POST", "/api/sentiment/predict", token, {"texts": ["非常好，很满意", "太差了"]})
    assert status == 200, body
    return str(body["model"])


def test_a_retrain_on_the_gpu_worker_is_served_by_both_web_processes(
    topology, registry, admin_user, annotator_user, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    import django_rq
    from rq.job import Job
    from rq.registry import FinishedJobRegistry

    from annotate.models import Project, TrainingRun

    a, b = topology.web
    live0 = make_tiny_version(registry, labels=("positive", "negative"))  # a poor live model (labels swapped)
    admin, annotator = api_token_create(user=admin_user), api_token_create(user=annotator_user)
    assert [_predict_model(port, admin) for port in (a, b)] == [live0.ref, live0.ref]
    pids = {name: p.pid for name, p in topology.procs.items()}

    # a project and its items through web process A ...
    status, project = _call(a, "POST", "/api/annotate/projects", admin, {"name": f"scale {uuid.uuid4().hex[:6]}",
                            "labels": ["negative", "positive"], "min_per_label": 0})  # fmt: skip
    assert status == 201, project
    pid = project["id"]
    truth = {t: "positive" for t in POS} | {t: "negative" for t in NEG}
    gold = set(POS[:3] + NEG[:3])
    items = [{"text": t, "label": y, "gold": True} if t in gold else {"text": t} for t, y in truth.items()]
    status, added = _call(a, "POST", f"/api/annotate/projects/{pid}/items", admin, {"items": items})
    assert status == 201 and added["created"] == len(items), added
    # ... labelled through web process B (items come back as stored: cleaned)
    from slm.text import PreprocessConfig, clean_text

    label_of = {clean_text(t, PreprocessConfig()): y for t, y in truth.items()}
    labelled = 0
    while True:
        status, nxt = _call(b, "GET", f"/api/annotate/projects/{pid}/next", annotator)
        if status == 204:
            break
        assert status == 200, nxt
        item = nxt["item"]
        status, body = _call(b, "POST", f"/api/annotate/projects/{pid}/labels", annotator,
                             {"item": item["id"], "label": label_of[item["text"]]})  # fmt: skip
        assert status == 201, body
        labelled += 1
    assert labelled >= len(truth) - len(gold)

    # the retrain is asked for through A, followed through B; the gpu worker runs it
    status, body = _call(a, "POST", f"/api/annotate/projects/{pid}/retrain", admin)
    assert status == 202, body
    run_id = body["run"]

    def finished() -> bool:
        status, run = _call(b, "GET", f"/api/runs/{run_id}", admin)
        assert status == 200, run
        return run["status"] in ("succeeded", "failed")

    wait_until(finished, 240, "the retrain to finish on the gpu worker", interval=0.5)
    _, run = _call(b, "GET", f"/api/runs/{run_id}", admin)
    assert run["status"] == "succeeded", (run, TrainingRun.objects.get(pk=run_id).log)
    assert run["promoted"] and run["version"] == "v0002", run["decision"]
    assert f"on worker {topology.workers['gpu']}" in TrainingRun.objects.get(pk=run_id).log

    # the pool refresh (queue `default`) ran on the other worker
    wait_until(lambda: Project.objects.get(pk=pid).pool_version == "v0002", 120, "the pool refresh")
    conn = django_rq.get_connection("default")
    done = {
        kind: [Job.fetch(j, connection=conn) for j in FinishedJobRegistry(q, connection=conn).get_job_ids()]
        for kind, q in topology.queues.items()
    }
    assert {j.worker_name for j in done["gpu"]} == {topology.workers["gpu"]}
    assert {j.func_name for j in done["gpu"]} == {"annotate.jobs.retrain_job"}
    assert {j.worker_name for j in done["default"]} == {topology.workers["default"]}
    assert "annotate.jobs.refresh_pool_job" in {j.func_name for j in done["default"]}

    # both web processes serve the promoted version: same processes, no restart
    assert registry.live_version("sentiment") == "v0002"
    assert [_predict_model(port, admin) for port in (a, b)] == ["sentiment@v0002", "sentiment@v0002"]
    assert {name: p.pid for name, p in topology.procs.items()} == pids
    assert all(p.poll() is None for p in topology.procs.values())
