"""daphne as the stack runs it: `python -m slmsite.server <daphne's own arguments>`.

One change to daphne: a WebSocket message over the size limit (`--websocket-max-message-size`, 1 MiB by
default) is refused with a close frame 1009 ("message too big") and a log line. daphne lets autobahn fail such
a connection by dropping TCP (the browser sees 1006) and, at its default verbosity, logs nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from daphne import server as daphne_server
from daphne.cli import CommandLineInterface
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol

log = logging.getLogger("slmsite.server")


class _Protocol(WebSocketProtocol):  # type: ignore[misc]
    def _max_message_size_exceeded(self, msg_size: int, max_msg_size: int, reason: str) -> None:
        path = getattr(getattr(self, "request", None), "path", "?")
        log.warning("websocket %s from %s: closing with 1009: %s", path, self.client_addr, reason)
        super()._max_message_size_exceeded(msg_size, max_msg_size, reason)


class _Factory(WebSocketFactory):  # type: ignore[misc]
    protocol = _Protocol

    def setProtocolOptions(self, **options: Any) -> None:  # noqa: N802 - autobahn's name
        options.setdefault("failByDrop", False)  # a close handshake with the code, not a dropped socket
        super().setProtocolOptions(**options)


class Server(daphne_server.Server):  # type: ignore[misc]
    def run(self) -> None:
        daphne_server.WebSocketFactory = _Factory  # run() builds its factory from this module global
        super().run()


class _CLI(CommandLineInterface):  # type: ignore[misc]
    server_class = Server


def main() -> None:
    _CLI.entrypoint()


if __name__ == "__main__":
    main()
