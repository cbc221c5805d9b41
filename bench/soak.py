#!/usr/bin/env python
"""`make soak`: the production path under load, bad input and a dying worker, on PostgreSQL + Redis.

Starts the whole stack (`manage.py serve`: daphne, RQ worker, cron + maintenance worker) on a fresh
PostgreSQL database next to DATABASE_URL's and on REDIS_URL, with the tiny default models, then runs,
each bounded in time:

  chat users      N WebSocket users generating replies back to back
  abort storm     sockets that start a reply and close or stop at once; streams and memory must come back
  API fuzz        schemathesis against /api/openapi.json: no 5xx, nothing contradicting the schema
  WebSocket fuzz  garbage, binary, deeply nested and oversized frames, floods: error frames or close 1009
  annotators      two annotators racing over one project with double submits and undos
  kill -9 worker  the RQ worker killed mid-retrain: restarted, the run reaped, nothing registered
  promotions      50 promotions while API clients predict
  mixed           8 API clients + 2 annotators + 20 chat users together

and prints one table (requests, 5xx, unexpected errors, lost/duplicated labels, peak DB connections of
daphne and of the whole stack, daphne's RSS before/after, time to recover). It exits 1 when a criterion
fails: any 5xx, a lost or duplicated label, a 1011/abnormal close, connections over the bound, no
recovery. `--short` runs every scenario for a few seconds (CI's PostgreSQL pass).

Usage: DATABASE_URL=postgres://... REDIS_URL=redis://host:6379/N python bench/soak.py [--short]
The stack uses the default queue names on REDIS_URL: give it a Redis database no other stack's worker uses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg
import requests
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POOL_MAX = 8  # DB_POOL_MAX_SIZE of every process of the soak stack
GEN = {"max_new_tokens": 12, "do_sample": True, "temperature": 0.8, "stop": []}


# ------------------------------------------------------------------------------------------ results
@dataclass
class Row:
    scenario: str
    requests: int = 0
    http_5xx: int = 0
    errors: int = 0  # unexpected: abnormal closes, 1011, wrong answers
    labels: str = "-"  # lost/duplicated
    conns: str = "-"  # peak daphne/total DB connections
    rss: str = "-"  # daphne RSS before -> after (MB)
    recover: str = "-"
    notes: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.failed.append(what)


def print_table(rows: list[Row]) -> None:
    head = ["scenario", "requests", "5xx", "unexpected", "lost/dup labels", "DB conn daphne/all", "RSS MB", "recover"]
    body = [
        [r.scenario, str(r.requests), str(r.http_5xx), str(r.errors), r.labels, r.conns, r.rss, r.recover] for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    line = "+".join("-" * (w + 2) for w in widths)
    print(line)
    print("|".join(f" {h:<{w}} " for h, w in zip(head, widths, strict=True)))
    print(line)
    for row in body:
        print("|".join(f" {c:<{w}} " for c, w in zip(row, widths, strict=True)))
    print(line)
    for r in rows:
        for note in r.notes:
            print(f"  {r.scenario}: {note}")
        for what in r.failed:
            print(f"  FAILED {r.scenario}: {what}")


# ------------------------------------------------------------------------------------------ the stack
class Stack:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tag = uuid.uuid4().hex[:8]
        self.app_name = f"slm-soak-{self.tag}"
        self.tmp = Path(tempfile.mkdtemp(prefix="slm-soak-"))
        base = urlsplit(args.database_url)
        self.db_name = f"{base.path.lstrip('/') or 'slm'}_soak_{self.tag}"
        self.database_url = urlunsplit(base._replace(path=f"/{self.db_name}"))
        self.admin_url = urlunsplit(base._replace(path="/postgres"))
        self.port = args.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.pause_file = self.tmp / "pause-training"
        self.password = f"soak-{self.tag}-pw"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "slmsite.settings.dev",
            "DEBUG": "0",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": args.redis_url,
            "SLM_VAR_DIR": str(self.tmp / "var"),
            "SLM_ADMIN_PASSWORD": self.password,
            "CHAT_BOOTSTRAP_SIZE": "tiny",
            "SENTIMENT_BOOTSTRAP_SIZE": "tiny",
            "CHAT_RATE_LIMIT_PER_MIN": "100000",  # the limit has its own tests; here users chat back to back
            "CHAT_QUEUE_SIZE": "96",
            "CHAT_STREAMS_PREFIX": f"slm-soak-{self.tag}",
            "ANNOTATE_TRAIN_PAUSE_FILE": str(self.pause_file),
            "ANNOTATE_RUN_STALE_S": "6" if args.short else "20",
            "ANNOTATE_REAP_INTERVAL_S": "1" if args.short else "5",
            "ANNOTATE_RUN_HEARTBEAT_S": "1",
            "SLM_RESTART_BACKOFF_S": "1",
            "DB_POOL_MAX_SIZE": str(POOL_MAX),
            "DB_APPLICATION_NAME": self.app_name,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",
        }

    # -- lifecycle
    def create_database(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')

    def drop_database(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def start(self) -> None:
        self.create_database()
        os.environ.update(self.env)  # this process's Django (users, checks) reads the same database
        os.environ["DB_APPLICATION_NAME"] = f"{self.app_name}-driver"  # not counted as the stack's
        self.log = open(self.tmp / "serve.log", "wb")
        cmd = [sys.executable, "manage.py", "serve", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + (600 if not self.args.short else 420)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited: {(self.tmp / 'serve.log').read_text()[-3000:]}")
            health = self.health()
            built = (health or {}).get("bootstrap") or {}
            if built.get("state") in ("failed", "stopped"):
                raise RuntimeError(f"building the default models {built['state']}: {built}")
            # serve answers at once and builds the default models beside the site: wait for them (and the demo)
            if health and health.get("status") == "ok" and self.gpu_workers(health) and built.get("state") == "done":
                return
            time.sleep(1)
        raise RuntimeError(f"the stack did not come up: {(self.tmp / 'serve.log').read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    # -- probes
    def health(self) -> dict[str, Any] | None:
        try:
            return requests.get(self.url + "/healthz", timeout=10).json()
        except Exception:
            return None

    @staticmethod
    def gpu_workers(health: dict[str, Any]) -> list[int]:
        return [w["pid"] for w in health.get("worker", {}).get("workers", []) if any("gpu" in q for q in w["queues"])]

    def child(self, marker: str) -> psutil.Process:
        assert self.proc is not None
        for p in psutil.Process(self.proc.pid).children():
            try:
                if marker in " ".join(p.cmdline()):
                    return p
            except psutil.Error:  # a child that just ended (a zombie until serve's next poll reaps it, <=0.5 s)
                continue
        raise LookupError(marker)

    def daphne(self) -> psutil.Process:
        return self.child("slmsite.server")

    def rss_mb(self) -> float:
        return self.daphne().memory_info().rss / 2**20

    def connections(self) -> tuple[int, int]:
        """(daphne's connections to PostgreSQL, all connections of this stack)."""
        pg_port = urlsplit(self.database_url).port or 5432
        try:
            mine = sum(1 for c in self.daphne().net_connections("tcp") if c.raddr and c.raddr.port == pg_port)
        except (psutil.Error, LookupError):
            mine = 0
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [self.app_name]
            ).fetchone()
        return mine, int(row[0]) if row else 0


class ConnSampler(threading.Thread):
    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.peak = (0, 0)
        self.stop_event = threading.Event()

    def reset(self) -> None:
        self.peak = (0, 0)

    def run(self) -> None:
        while not self.stop_event.wait(0.25):
            try:
                d, t = self.stack.connections()
            except Exception:
                continue
            self.peak = (max(self.peak[0], d), max(self.peak[1], t))


# ------------------------------------------------------------------------------------------ clients
class Users:
    """Accounts, sessions and tokens, made through the ORM of the stack's own database."""

    def __init__(self, stack: Stack) -> None:
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import Group
        from django.test import Client

        from slmsite.services import api_token_create

        self.stack = stack
        user_model = get_user_model()
        self.admin = user_model.objects.get(username=os.environ.get("SLM_ADMIN_USERNAME", "admin"))
        self.token = api_token_create(user=self.admin, name=f"soak-{stack.tag}")
        # the fuzzer's identity: a plain user (an admin token would let it queue retrains and promote at random)
        self.fuzz_token = api_token_create(user=user_model.objects.create_user(f"fuzz-{stack.tag}"), name="fuzz")
        self.csrf = uuid.uuid4().hex  # a CSRF cookie of our choosing, echoed in the header
        self._client = Client
        group, _ = Group.objects.get_or_create(name="annotator")
        self.annotators = [user_model.objects.create_user(f"ann-{stack.tag}-{i}") for i in (1, 2)]
        for user in self.annotators:
            user.groups.add(group)
        self.chatters = [user_model.objects.create_user(f"chat-{stack.tag}-{i}") for i in range(50)]
        self._cookies = {u.pk: self._login(u) for u in [self.admin, *self.annotators, *self.chatters]}

    def _login(self, user: Any) -> str:
        client = self._client()
        client.force_login(user)
        return f"sessionid={client.cookies['sessionid'].value}; csrftoken={self.csrf}"

    def cookie(self, user: Any) -> str:
        """The user's session cookie (made up front: no ORM call from the asyncio clients)."""
        return self._cookies[user.pk]

    def http(self, user: Any) -> requests.Session:
        s = requests.Session()
        s.headers.update({"Cookie": self.cookie(user), "X-CSRFToken": self.csrf, "Referer": self.stack.url + "/"})
        return s

    def api(self) -> requests.Session:
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {self.token}"
        return s


def ws_headers(stack: Stack, cookie: str) -> dict[str, str]:
    return {"Cookie": cookie, "Origin": stack.url}


async def one_reply(ws: Any, prompt: str) -> str:
    """Sends a generate frame; returns 'end', 'busy', or the error code."""
    await ws.send(json.dumps({"type": "generate", "prompt": prompt, "params": GEN}))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
        if frame["type"] == "end":
            return "end"
        if frame["type"] == "error":
            return frame["code"]


# ------------------------------------------------------------------------------------------ scenarios
def chat_users(stack: Stack, users: Users, row: Row, n: int, seconds: float) -> None:
    codes: Counter[str] = Counter()

    async def user(i: int) -> None:
        cookie = users.cookie(users.chatters[i % len(users.chatters)])
        deadline = time.monotonic() + seconds
        try:
            async with ws_connect(
                stack.url.replace("http", "ws") + "/ws/chat/", additional_headers=ws_headers(stack, cookie)
            ) as ws:
                while time.monotonic() < deadline:
                    codes[await one_reply(ws, f"Hello number {i}, how are you?")] += 1
        except (ConnectionClosed, OSError, TimeoutError) as exc:
            codes[f"closed:{type(exc).__name__}"] += 1

    async def main() -> None:
        await asyncio.gather(*(user(i) for i in range(n)))

    asyncio.run(main())
    row.requests = sum(codes.values())
    unexpected = {k: v for k, v in codes.items() if k not in ("end", "busy")}
    row.errors = sum(unexpected.values())
    row.notes.append(f"{n} users x {seconds:.0f}s: " + ", ".join(f"{k} {v}" for k, v in sorted(codes.items())))
    row.check(codes["end"] > 0, "no reply finished")
    row.check(not unexpected, f"unexpected outcomes {unexpected}")


def active_streams(stack: Stack) -> float:
    text = requests.get(stack.url + "/metrics", timeout=10).text
    m = re.search(r"^slm_chat_active_streams (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def abort_storm(stack: Stack, users: Users, row: Row, n: int) -> None:
    threads_before = stack.daphne().num_threads()
    outcomes: Counter[str] = Counter()

    async def one(i: int) -> None:
        cookie = users.cookie(users.chatters[i % len(users.chatters)])
        try:
            async with ws_connect(
                stack.url.replace("http", "ws") + "/ws/chat/", additional_headers=ws_headers(stack, cookie)
            ) as ws:
                await ws.send(
                    json.dumps(
                        {"type": "generate", "prompt": "tell me a long story", "params": {**GEN, "max_new_tokens": 200}}
                    )
                )
                frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if i % 2 and frame["type"] == "start":
                    await ws.send(json.dumps({"type": "stop"}))
                outcomes[frame.get("code", frame["type"])] += 1
        except (ConnectionClosed, OSError, TimeoutError) as exc:
            outcomes[f"closed:{type(exc).__name__}"] += 1

    async def main() -> None:
        sem = asyncio.Semaphore(10)

        async def bounded(i: int) -> None:
            async with sem:
                await one(i)

        await asyncio.gather(*(bounded(i) for i in range(n)))

    asyncio.run(main())
    deadline = time.monotonic() + 60
    while (left := active_streams(stack)) > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    row.requests = n
    row.errors = sum(v for k, v in outcomes.items() if k.startswith("closed"))
    row.notes.append(
        f"{n} aborted streams: {dict(outcomes)}; active streams after: {left:.0f}; "
        f"daphne threads {threads_before} -> {stack.daphne().num_threads()}"
    )
    row.check(left == 0, f"{left} streams still active after the storm")
    row.check(stack.daphne().num_threads() <= threads_before + 8, "daphne threads grew")


def api_fuzz(stack: Stack, users: Users, row: Row, examples: int) -> None:
    exe = Path(sys.executable).with_name("schemathesis")
    cmd = [
        str(exe), "run", stack.url + "/api/openapi.json",
        "-H", f"Authorization: Bearer {users.fuzz_token}",
        "--checks", "all", "--max-response-time", "300",  # latency is not the question here
        # refusals by rules no schema states (403 for this user, a taken name) are not contradictions
        "--exclude-checks", "positive_data_acceptance",
        "--max-examples", str(examples), "--request-timeout", "60",
        "--seed", "1", "--suppress-health-check", "all", "--no-color",
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    text = out.stdout + out.stderr
    m = re.search(r"Test cases:\s*(\d+) generated", text) or re.search(r"(\d+) generated", text)
    row.requests = int(m.group(1)) if m else 0
    row.http_5xx = len(re.findall(r"Server error", text))
    failures = re.findall(r"^\s*(?:\d+\.\s*)?(?:- )?(ST\d+ [^\n]+)", text, re.M)
    row.errors = 0 if out.returncode == 0 else max(1, len(set(failures)))
    row.notes.append(f"schemathesis exit {out.returncode}" + (f": {sorted(set(failures))[:6]}" if failures else ""))
    if out.returncode != 0:
        (stack.tmp / "schemathesis.log").write_text(text)
        row.notes.append(f"report: {stack.tmp / 'schemathesis.log'}")
    row.check(out.returncode == 0, "schemathesis found failures")


def ws_fuzz(stack: Stack, users: Users, row: Row, flood: int) -> None:
    cookie = users.cookie(users.chatters[0])
    outcomes: Counter[str] = Counter()
    uri = stack.url.replace("http", "ws") + "/ws/chat/"

    async def expect(frames: list[Any], want: str) -> None:
        try:
            async with ws_connect(uri, additional_headers=ws_headers(stack, cookie), max_size=None) as ws:
                for f in frames:
                    await ws.send(f)
                got = []
                for _ in frames:
                    got.append(json.loads(await asyncio.wait_for(ws.recv(), 60)).get("code"))
                ok = all(g == want for g in got)
                outcomes["ok" if ok else f"wrong:{set(got)}"] += 1
                assert await one_reply(ws, "still there?") == "end"  # the socket stays usable
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            outcomes["1009" if code == 1009 and want == "1009" else f"closed:{code}"] += 1

    async def main() -> None:
        await expect(["not json {", "\x00\xff\ufffd", "[]", '"just a string"'], "bad_json")
        await expect(['{"type": 5}', '{"type": "generat"}', "{}"], "unknown_type")
        await expect([b"\x00\x01binary"], "bad_json")
        await expect(['{"type":"generate","prompt":"x","params":' + "[" * 30000 + "]" * 30000 + "}"], "bad_json")
        await expect(['{"type":"generate","prompt":"x","params":' + "[" * 500 + "]" * 500 + "}"], "bad_json")
        await expect([json.dumps({"type": "generate", "prompt": "x", "pad": "y" * 200_000})], "frame_too_large")
        await expect([json.dumps({"type": "generate", "prompt": "x" * (2 * 2**20)})], "1009")  # over daphne's limit
        await expect([json.dumps({"type": "dance", "n": i}) for i in range(flood)], "unknown_type")

    asyncio.run(main())
    row.requests = sum(outcomes.values())
    bad = {k: v for k, v in outcomes.items() if k not in ("ok", "1009")}
    row.errors = sum(bad.values())
    row.notes.append(f"frames answered: {dict(outcomes)}")
    row.check(not bad, f"unexpected answers/closes {bad}")


def demo_project(users: Users) -> Any:
    from annotate.models import Project

    return Project.objects.order_by("pk").first()


def annotators(
    stack: Stack, users: Users, row: Row, seconds: float, project: Any, sampler_row: Row | None = None
) -> Counter[str]:
    from annotate.models import Annotation

    codes: Counter[str] = Counter()
    expected: dict[tuple[int, int], str] = {}
    lock = threading.Lock()
    labels = list(project.labels)
    base = f"{stack.url}/annotate/p/{project.pk}"

    def work(user: Any) -> None:
        s = users.http(user)
        s.headers["Accept"] = "application/json"
        deadline = time.monotonic() + seconds
        rnd = random.Random(user.pk)
        while time.monotonic() < deadline:
            r = s.get(base + "/next", timeout=60)
            codes[str(r.status_code)] += 1
            item = (r.json() or {}).get("item") if r.status_code == 200 else None
            if not item:
                time.sleep(0.2)
                continue
            label = rnd.choice(labels)
            data = {"item": item["id"], "label": label, "seconds": "1.5"}
            twice = rnd.random() < 0.2
            with ThreadPoolExecutor(2) as pool:
                replies = list(
                    pool.map(lambda body: s.post(base + "/submit", data=body, timeout=60), [data] * (2 if twice else 1))
                )
            for r in replies:
                codes[str(r.status_code)] += 1
            if any(r.status_code == 200 for r in replies):
                with lock:
                    expected[(user.pk, item["id"])] = label
            if rnd.random() < 0.15:
                r = s.post(base + "/undo", timeout=60)
                codes[str(r.status_code)] += 1
                undone = (r.json() or {}).get("item") if r.status_code == 200 else None
                if undone:
                    with lock:
                        expected.pop((user.pk, undone["id"]), None)

    with ThreadPoolExecutor(len(users.annotators)) as pool:
        list(pool.map(work, users.annotators))
    rows = list(
        Annotation.objects.filter(project=project, annotator__in=users.annotators).values_list(
            "annotator_id", "item_id", "label"
        )
    )
    seen = Counter((a, i) for a, i, _ in rows)
    dup = sum(1 for n in seen.values() if n > 1)
    stored = {(a, i): lab for a, i, lab in rows}
    lost = sum(1 for key, lab in expected.items() if stored.get(key) != lab)
    target = sampler_row or row
    target.requests += sum(codes.values())
    target.http_5xx += sum(v for k, v in codes.items() if k.startswith("5"))
    target.labels = f"{lost}/{dup}"
    target.notes.append(f"annotators: {dict(codes)}; {len(expected)} labels kept, {len(rows)} stored")
    target.check(lost == 0 and dup == 0, f"{lost} lost and {dup} duplicated labels")
    return codes


def kill_worker(stack: Stack, users: Users, row: Row, project: Any) -> None:
    from slmsite.registry import get_registry

    reg = get_registry()
    versions_before = [v.version for v in reg.versions(project.model_name)]
    live_before = reg.live_version(project.model_name)
    stack.pause_file.write_text("hold")
    api = users.api()
    r = api.post(f"{stack.url}/api/annotate/projects/{project.pk}/retrain", timeout=60)
    row.requests += 1
    run = r.json()["run"]

    def status() -> dict[str, Any]:
        row.requests += 1
        return api.get(f"{stack.url}/api/runs/{run}", timeout=60).json()

    deadline = time.monotonic() + 300
    while status()["status"] != "running":
        if time.monotonic() > deadline:
            row.check(False, "the retrain never started")
            return
        time.sleep(0.5)
    worker = stack.child("rqworker gpu")
    horses = [p.pid for p in worker.children()]
    worker.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    stack.pause_file.unlink()  # a surviving training process would go on, register and promote now
    new = None
    while time.monotonic() - killed < 120:
        health = stack.health() or {}
        pids = stack.gpu_workers(health)
        if pids and worker.pid not in pids:
            new = time.monotonic() - killed
            break
        time.sleep(0.25)
    reaped = None
    while time.monotonic() - killed < 180:
        st = status()
        if st["status"] == "failed":
            reaped = time.monotonic() - killed
            break
        time.sleep(0.5)
    survivors = [p for p in horses if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    versions_after = [v.version for v in reg.versions(project.model_name)]
    row.recover = f"{new:.1f}s" if new is not None else "never"
    row.notes.append(
        f"worker back after {row.recover}; run reaped after "
        f"{f'{reaped:.1f}s' if reaped is not None else 'never'} (stale after {stack.env['ANNOTATE_RUN_STALE_S']}s); "
        f"horses left {survivors}; versions {len(versions_before)} -> {len(versions_after)}"
    )
    row.check(new is not None, "the worker was not restarted")
    row.check(reaped is not None, "the dead run was not reaped")
    row.check(not survivors, "the training process outlived its worker")
    row.check(
        versions_after == versions_before and reg.live_version(project.model_name) == live_before,
        "a version was registered or promoted",
    )


def predict_clients(
    stack: Stack, users: Users, row: Row, n: int, stop: threading.Event, refs: set[str] | None = None
) -> list[threading.Thread]:
    texts = [
        "这家酒店的服务非常好",
        "送餐太慢了，饭菜都凉了",
        "Great value, would buy again",
        "Terrible, broke in a day",
    ]
    lock = threading.Lock()

    def client() -> None:
        s = users.api()
        while not stop.is_set():
            r = s.post(stack.url + "/api/sentiment/predict", json={"texts": random.sample(texts, 2)}, timeout=120)
            with lock:
                row.requests += 1
                if r.status_code >= 500:
                    row.http_5xx += 1
                elif r.status_code != 200:
                    row.errors += 1
                elif refs is not None and r.json()["model"] not in refs:
                    row.errors += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def promotions(stack: Stack, users: Users, row: Row, n: int) -> None:
    models = users.api().get(stack.url + "/api/sentiment/models", timeout=60).json()
    versions = [v["version"] for v in models["versions"]]
    refs = {v["ref"] for v in models["versions"]}
    if len(versions) < 2:
        row.notes.append(f"only {len(versions)} sentiment version(s): promotions skipped")
        return
    stop = threading.Event()
    threads = predict_clients(stack, users, row, 4, stop, refs)
    admin = users.http(users.admin)
    try:
        for i in range(n):
            v = versions[i % len(versions)]
            r = admin.post(
                f"{stack.url}/sentiment/models/{v}/promote/", data={"confirm": "1"}, allow_redirects=False, timeout=60
            )
            row.requests += 1
            if r.status_code >= 500:
                row.http_5xx += 1
            elif r.status_code != 302:
                row.errors += 1
    finally:
        stop.set()
        for t in threads:
            t.join(130)
    row.notes.append(f"{n} promotions across {versions} under 4 predicting clients")
    row.check(row.http_5xx == 0 and row.errors == 0, "5xx or wrong answers during promotions")


def mixed(stack: Stack, users: Users, row: Row, seconds: float, project: Any) -> None:
    stop = threading.Event()
    threads = predict_clients(stack, users, row, 8, stop)
    chat_row = Row("chat")
    ann = threading.Thread(target=annotators, args=(stack, users, Row("ann"), seconds, project, row))
    ann.start()
    try:
        chat_users(stack, users, chat_row, 20, seconds)
    finally:
        ann.join()
        stop.set()
        for t in threads:
            t.join(130)
    row.requests += chat_row.requests
    row.errors += chat_row.errors
    row.notes.append("chat: " + "; ".join(chat_row.notes))
    row.failed += chat_row.failed


# ------------------------------------------------------------------------------------------ main
def run_scenario(rows: list[Row], stack: Stack, sampler: ConnSampler, name: str, fn: Callable[[Row], None]) -> None:
    row = Row(name)
    rows.append(row)
    sampler.reset()
    before = stack.rss_mb()
    started = time.monotonic()
    try:
        fn(row)
    except Exception as exc:  # a scenario that crashes is a failure, the others still run
        row.failed.append(f"{type(exc).__name__}: {exc}")
    after = stack.rss_mb()
    d, t = sampler.peak
    row.conns = f"{d}/{t}"
    row.rss = f"{before:.0f} -> {after:.0f}"
    row.check(row.http_5xx == 0, f"{row.http_5xx} HTTP 5xx")
    row.check(d <= POOL_MAX, f"daphne held {d} connections (bound {POOL_MAX})")
    print(f"[soak] {name}: {time.monotonic() - started:.0f}s, {'ok' if not row.failed else 'FAILED'}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="a few seconds per scenario (CI)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("SOAK_PORT", "0")), help="default: a free one")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""))
    parser.add_argument("--keep", action="store_true", help="keep the soak database and logs")
    args = parser.parse_args()
    if not args.database_url.startswith("postgres") or not args.redis_url.startswith(("redis", "unix")):
        parser.error("needs DATABASE_URL (PostgreSQL) and REDIS_URL (a real Redis)")
    short = args.short
    if not args.port:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            args.port = sock.getsockname()[1]
    stack = Stack(args)
    print(f"[soak] starting the stack on :{args.port} (database {stack.db_name}, logs {stack.tmp})", flush=True)
    t0 = time.monotonic()
    stack.start()
    print(f"[soak] stack up in {time.monotonic() - t0:.0f}s", flush=True)
    sampler = ConnSampler(stack)
    sampler.start()
    rows: list[Row] = []
    try:
        users = Users(stack)
        project = demo_project(users)
        run_scenario(
            rows,
            stack,
            sampler,
            "chat users",
            lambda r: chat_users(stack, users, r, 10 if short else 50, 5 if short else 120),
        )
        run_scenario(rows, stack, sampler, "abort storm", lambda r: abort_storm(stack, users, r, 20 if short else 400))
        run_scenario(rows, stack, sampler, "API fuzz", lambda r: api_fuzz(stack, users, r, 5 if short else 100))
        run_scenario(rows, stack, sampler, "WebSocket fuzz", lambda r: ws_fuzz(stack, users, r, 50 if short else 2000))
        run_scenario(
            rows, stack, sampler, "annotators", lambda r: annotators(stack, users, r, 5 if short else 60, project)
        )
        run_scenario(rows, stack, sampler, "kill -9 worker", lambda r: kill_worker(stack, users, r, project))
        run_scenario(rows, stack, sampler, "promotions", lambda r: promotions(stack, users, r, 6 if short else 50))
        run_scenario(
            rows, stack, sampler, "mixed 8+2+20", lambda r: mixed(stack, users, r, 5 if short else 120, project)
        )
    finally:
        sampler.stop_event.set()
        stack.stop()
        if not args.keep:
            try:
                stack.drop_database()
            except Exception as exc:
                print(f"[soak] could not drop {stack.db_name}: {exc}")
    print(
        f"\nsoak ({'short' if short else 'full'}), DB pool bound {POOL_MAX} per process, {time.monotonic() - t0:.0f}s in all"
    )
    print_table(rows)
    failed = [r for r in rows if r.failed]
    print(f"\n{'FAILED: ' + ', '.join(r.scenario for r in failed) if failed else 'all scenarios passed'}")
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
