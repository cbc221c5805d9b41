"""Relay overhead of CHAT_BACKEND=openai: slm in front of an OpenAI-compatible server vs calling it directly.

The upstream is the stub vLLM/Ollama-like server of the tests (tests/openai_stub.py) in its own process
(streaming HTTP/1.1 chunked SSE, one event per token). Three clients read the same stream in one run:

  * direct     a plain client of the stub: one POST, read the SSE lines, json-parse each (what any
               OpenAI client does at least) — the reference;
  * relay      slm.remote.RemoteEngine: the same request plus stop-string handling, incremental text,
               callbacks — the relay core;
  * websocket  the whole server path a browser sees: daphne + the chat consumer (message rows written
               at start, every 0.5 s and at the end) relaying over /ws/chat/ to a WebSocket client here.

Two measures: (1) unpaced, `--tokens` tokens as fast as the stub sends them: wall time per token and the
CPU time per token of the process that relays (this process for direct/relay, daphne for websocket;
overhead = path − direct); (2) paced, `--paced-tokens` tokens every `--interval-ms` (a GPU
server's rate): per-token latency from the stub writing a token (its wall-clock time is the token's text)
to this client seeing it, p50/p95, and the latency the relay adds. Medians of `--repeats` runs.

    .venv/bin/python bench/remote.py [--tokens 2000] [--paced-tokens 200] [--interval-ms 5] [--skip-websocket]

Numbers come from a shared, loaded 2-core machine: compare paths within one run.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from slm.generation import ChatPrompt, GenerationParams  # noqa: E402
from slm.remote import RemoteConfig, RemoteEngine  # noqa: E402

PROMPT = "User: hello\nAgent:"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def start_stub(delay_ms: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.openai_stub", "--port", str(port), "--stamp", "--delay-ms", str(delay_ms)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    wait_port(port, proc)
    return proc, f"http://127.0.0.1:{port}"


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stamps(text: str, now: float) -> list[float]:
    """Latencies (s) of the stamped tokens in one received text."""
    return [now - float(s) for s in text.split(";") if s]


# ------------------------------------------------------------------------------------------- paths
def direct(url: str, n: int) -> tuple[float, list[float]]:
    """(seconds for the whole stream, per-token latencies). CPU is this process's (see `measure`)."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": "stub-model", "prompt": PROMPT, "max_tokens": n, "stream": True, "temperature": 0})
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    lat: list[float] = []
    for raw in iter(resp.readline, b""):
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            break
        obj = json.loads(payload)
        if obj.get("choices") and obj["choices"][0].get("text"):
            lat += stamps(obj["choices"][0]["text"], time.time())
    elapsed = time.perf_counter() - t0
    conn.close()
    assert len(lat) == n, len(lat)
    return elapsed, lat


def relay(engine: RemoteEngine, n: int) -> tuple[float, list[float]]:
    lat: list[float] = []
    done = threading.Event()
    end: dict[str, Any] = {}

    def cb(kind: str, data: dict[str, Any]) -> None:
        if kind == "token":
            lat.extend(stamps(data["text"], time.time()))
        elif kind in ("end", "error"):
            end.update(data, kind=kind)
            done.set()

    params = GenerationParams(max_new_tokens=n, stop=())
    t0 = time.perf_counter()
    engine.submit(ChatPrompt(PROMPT, [], 0, 0), params, cb)
    assert done.wait(120), "relay timed out"
    elapsed = time.perf_counter() - t0
    assert end["kind"] == "end" and len(lat) == n, (end, len(lat))
    return elapsed, lat


class WSClient:
    """Just enough RFC 6455 for the bench: handshake, masked text frames out, unmasked frames in."""

    def __init__(self, port: int, path: str, headers: dict[str, str]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        head = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            + "\r\n"
        )
        self.sock.sendall(head.encode())
        self.buf = bytearray()
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        end = self.buf.index(b"\r\n\r\n") + 4
        status = bytes(self.buf[:end]).split(b"\r\n")[0]
        del self.buf[:end]
        if b" 101 " not in status:
            raise RuntimeError(f"WebSocket handshake refused: {status!r}")

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("socket closed")
        self.buf += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def send_json(self, obj: Any) -> None:
        payload = json.dumps(obj).encode()
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x81]) + (
            bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
        )  # frames here are small
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv_json(self) -> dict[str, Any]:
        while True:
            b0, b1 = self._take(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(self._take(2), "big")
            elif n == 127:
                n = int.from_bytes(self._take(8), "big")
            data = self._take(n)
            if b0 & 0x0F == 1:
                return json.loads(data)
            if b0 & 0x0F == 8:
                raise EOFError("server closed the WebSocket")

    def close(self) -> None:
        self.sock.close()


def websocket(port: int, cookie: str, n: int) -> tuple[float, list[float]]:
    """Through daphne: CPU is daphne's (the server doing the relaying), see `measure`."""
    ws = WSClient(port, "/ws/chat/", {"Origin": f"http://127.0.0.1:{port}", "Cookie": cookie})
    lat: list[float] = []
    t0 = time.perf_counter()
    ws.send_json(
        {"type": "generate", "prompt": "hello", "params": {"max_new_tokens": n, "do_sample": False, "stop": []}}
    )
    while True:
        frame = ws.recv_json()
        if frame["type"] == "token":
            lat += stamps(frame["text"], time.time())
        elif frame["type"] in ("end", "error"):
            break
    elapsed = time.perf_counter() - t0
    ws.close()
    assert frame["type"] == "end" and len(lat) == n, (frame, len(lat))
    return elapsed, lat


# --------------------------------------------------------------------------------------- the server
class Server:
    """daphne serving slm with CHAT_BACKEND=openai at `upstream`, its own SQLite, Redis and var dir."""

    def __init__(self, upstream: str, max_tokens: int) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="slm-bench-remote-")
        var = Path(self.tmp.name)
        from slmsite import embedded_redis

        self.redis = embedded_redis.start(var / "redis.sock", persist=False)
        self.port = free_port()
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "slmsite.settings.dev",
            "SLM_VAR_DIR": str(var),
            "REDIS_URL": f"unix://{var / 'redis.sock'}",
            "CHAT_BACKEND": "openai",
            "CHAT_REMOTE_URL": upstream + "/v1",
            "CHAT_REMOTE_MODEL": "stub-model",
            "CHAT_MAX_NEW_TOKENS": str(max_tokens),
            "CHAT_RATE_LIMIT_PER_MIN": "100000",
            "DEBUG": "0",
        }
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=self.env,
                       check=True)  # fmt: skip
        self.cookie = self._session()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "slmsite.asgi:application"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc)

    def _session(self) -> str:
        code = (
            "import django; django.setup()\n"
            "from importlib import import_module\n"
            "from django.conf import settings\n"
            "from django.contrib.auth import get_user_model\n"
            "u = get_user_model().objects.create_user('bench', password='bench-pw-123')\n"
            "s = import_module(settings.SESSION_ENGINE).SessionStore()\n"
            "s['_auth_user_id'] = str(u.pk)\n"
            "s['_auth_user_backend'] = 'django.contrib.auth.backends.ModelBackend'\n"
            "s['_auth_user_hash'] = u.get_session_auth_hash()\n"
            "s.save()\n"
            "print(f'{settings.SESSION_COOKIE_NAME}={s.session_key}')\n"
        )
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=self.env, capture_output=True, text=True,
                             check=True)  # fmt: skip
        return out.stdout.strip().splitlines()[-1]

    def close(self) -> None:
        from slmsite import embedded_redis

        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        embedded_redis.stop(self.redis)
        self.tmp.cleanup()


# -------------------------------------------------------------------------------------------- main
def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def measure(paths: dict[str, Any], n: int, repeats: int, cpu_pid: dict[str, int]) -> dict[str, dict[str, float]]:
    """Per path: wall µs/token, CPU µs/token of the process that relays (this one, or `cpu_pid[path]`),
    and the per-token latency percentiles; medians over `repeats` runs after one warm-up."""
    out: dict[str, dict[str, float]] = {}
    for name, fn in paths.items():
        fn(min(n, 50))  # warm-up (connections, imports, first DB writes)
        walls, cpus, p50s, p95s = [], [], [], []
        for _ in range(repeats):
            pid = cpu_pid.get(name)
            c0 = proc_cpu(pid) if pid else time.process_time()
            wall, lat = fn(n)
            cpus.append((proc_cpu(pid) if pid else time.process_time()) - c0)
            walls.append(wall)
            p50s.append(pct(lat, 0.5))
            p95s.append(pct(lat, 0.95))
        out[name] = {
            "us_per_token": statistics.median(walls) / n * 1e6,
            "cpu_us_per_token": statistics.median(cpus) / n * 1e6,
            "p50_ms": statistics.median(p50s) * 1000,
            "p95_ms": statistics.median(p95s) * 1000,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--paced-tokens", type=int, default=200)
    ap.add_argument("--interval-ms", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-websocket", action="store_true")
    args = ap.parse_args()

    results: dict[str, Any] = {}
    for label, delay, n in (("unpaced", 0.0, args.tokens), ("paced", args.interval_ms, args.paced_tokens)):
        stub, url = start_stub(delay)
        server = None
        engine = RemoteEngine(RemoteConfig(url=url + "/v1", api="completions", model="stub-model", timeout_s=60))
        try:
            paths: dict[str, Any] = {"direct": partial(direct, url), "relay": partial(relay, engine)}
            cpu_pid: dict[str, int] = {}
            if not args.skip_websocket:
                server = Server(url, max(args.tokens, args.paced_tokens))
                paths["websocket"] = partial(websocket, server.port, server.cookie)
                cpu_pid["websocket"] = server.proc.pid
            results[label] = measure(paths, n, args.repeats, cpu_pid)
        finally:
            engine.close()
            if server is not None:
                server.close()
            stub.terminate()
            stub.wait()

    un, pa = results["unpaced"], results["paced"]
    ref = un["direct"]
    print(f"\nunpaced: {args.tokens} tokens as fast as the stub streams them (median of {args.repeats})")
    print(f"  {'path':<10}{'wall µs/tok':>12}{'CPU µs/tok':>12}{'CPU overhead µs/tok':>21}{'CPU ratio':>10}")
    for name, r in un.items():
        extra = r["cpu_us_per_token"] - ref["cpu_us_per_token"]
        ratio = r["cpu_us_per_token"] / ref["cpu_us_per_token"]
        print(f"  {name:<10}{r['us_per_token']:>12.1f}{r['cpu_us_per_token']:>12.1f}{extra:>21.1f}{ratio:>9.2f}x")
    print(f"\npaced: {args.paced_tokens} tokens, one every {args.interval_ms:g} ms; latency stub write -> client read")
    print(f"  {'path':<10}{'p50 ms':>9}{'p95 ms':>9}{'added p50 ms':>14}{'added p95 ms':>14}")
    for name, r in pa.items():
        add50, add95 = r["p50_ms"] - pa["direct"]["p50_ms"], r["p95_ms"] - pa["direct"]["p95_ms"]
        print(f"  {name:<10}{r['p50_ms']:>9.2f}{r['p95_ms']:>9.2f}{add50:>14.2f}{add95:>14.2f}")
    print("\n" + json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
