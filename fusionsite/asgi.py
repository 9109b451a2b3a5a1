"""ASGI entry point: HTTP through Django, websockets through Channels (session auth + Origin check)."""

from __future__ import annotations

import os

from asgiref.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fusionsite.settings")
django_asgi_app = get_asgi_application()

# Static files are served by WhiteNoise inside Django's middleware (fusionsite/staticfiles.py), so
# they get the security headers too; behind a proxy, let the proxy serve STATIC_ROOT instead.
http_app = django_asgi_app

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chat.routing import websocket_urlpatterns  # noqa: E402
from chat.runs import manager  # noqa: E402
from chat.ws_security import SameOriginValidator  # noqa: E402

# The Origin of a websocket must be this site's own (scheme, host and port) or a trusted origin.
router = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)


async def application(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    # Daphne has no lifespan events: the first request of the process (of its event loop) starts
    # the run sweep, which marks runs of dead processes interrupted whatever command started us.
    manager.ensure_sweeper()
    await router(scope, receive, send)
