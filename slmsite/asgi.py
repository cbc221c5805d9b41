"""ASGI entry point: HTTP through Django, WebSockets through Channels (auth + origin checked by scheme, host and
port: slmsite/origins.py)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "slmsite.settings.dev")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from slmsite.origins import SameOriginValidator  # noqa: E402
from slmsite.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

if os.environ.get("SLM_WARM_ENGINE_ON_START") == "1":
    # `manage.py serve` sets this for its daphne: the chat engine loads its model at start-up, so the
    # first message does not pay for the process spawn and model load.
    import threading

    from chat.engine_client import warm

    threading.Thread(target=warm, name="chat-engine-warm", daemon=True).start()
