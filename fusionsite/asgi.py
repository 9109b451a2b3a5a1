"""ASGI entry point: HTTP through Django, websockets through Channels (session auth + Origin check)."""

from __future__ import annotations

import gc
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

from chat.api import mcp  # noqa: E402
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


# What was imported and built at startup lives as long as the process: out of the collector's
# sight (gc.freeze), so a full collection under load scans the live runs' objects only, not all
# of Django (a 90 ms stall of every stream at 50 live runs before this; 27 ms after). Raising the
# young generation's threshold to 10,000 saved another 6 % of a core there but cost 0.3 MB of
# memory per live run, so the thresholds stay Python's.
import chat.fusion.tools.fetch  # noqa: E402,F401  (trafilatura and lxml: seconds to import, not mid-run)
from chat.render.pool import warm_up  # noqa: E402

warm_up()  # Markdown's extensions and Pygments' lexers: this process renders history and fallbacks

from chat.fusion.transport import shared_ssl_context  # noqa: E402

shared_ssl_context()  # the CA bundle (~30 ms): loaded now, not by the first run or catalogue fetch

gc.collect()
gc.freeze()

# The Markdown worker process(es) of the live runs (chat.render.pool) start with the server, so
# the first answer does not wait for one to spawn.
from django.conf import settings  # noqa: E402

from chat.render import pool as render_pool  # noqa: E402

render_pool.start(settings.FUSION_RENDER_PROCESSES)

# The channel layer is built now too (with REDIS_URL, redis and msgpack are ~5 MB of imports),
# not by the first run's first frame.
from channels.layers import get_channel_layer  # noqa: E402

get_channel_layer()


async def application(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    # Daphne has no lifespan events: the first request of the process (of its event loop) starts
    # the run sweep, which marks runs of dead processes interrupted whatever command started us.
    manager.ensure_sweeper()
    if scope["type"] == "http" and mcp.claims(scope["path"]):
        await mcp.http_app(scope, receive, send)  # the MCP server's streamable HTTP (chat/api/mcp.py)
        return
    await router(scope, receive, send)
