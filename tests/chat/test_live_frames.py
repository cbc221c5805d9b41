"""Against the real server the stack runs (`python -m slmsite.server`, daphne underneath): a message over
daphne's 1 MiB limit is refused with close code 1009 and a log line (daphne dropped the TCP connection: the
browser saw 1006, and nothing was logged)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.test import Client
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.stack import ROOT, free_port, listening, stack_env, stop, wait_until


@pytest.mark.django_db(transaction=True)
def test_a_message_over_the_server_limit_is_closed_with_1009_and_logged(plain_user, tmp_path):
    client = Client()
    client.force_login(plain_user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "slmsite.server", "-b", "127.0.0.1", "-p", str(port), "slmsite.asgi:application"],
            cwd=ROOT,
            env=stack_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(lambda: listening(port), 60, "the server to listen")
            headers = {"Cookie": cookie, "Origin": f"http://127.0.0.1:{port}"}
            with connect(f"ws://127.0.0.1:{port}/ws/chat/", additional_headers=headers, max_size=None) as ws:
                ws.send('{"type": "stop"}')  # a small frame is fine
                ws.send('{"type": "generate", "prompt": "' + "x" * (1024 * 1024 + 10) + '"}')
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
            wait_until(lambda: "closing with 1009" in log_path.read_text(errors="replace"), 10, "the log line")
        finally:
            stop(server)
