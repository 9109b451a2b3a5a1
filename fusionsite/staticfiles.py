"""Static files through WhiteNoise, as an async-capable middleware.

WhiteNoise's own middleware is sync-only. Under Daphne, Django would then run it in the one
thread shared by sync code and block that thread while the rest of the request runs — every
HTTP request would wait for the one before it. This subclass answers a static file from its
in-memory table on the event loop and hands everything else on without a thread hop.

It sits after SecurityMiddleware and CSPMiddleware, so a static response still gets
``X-Content-Type-Options: nosniff`` and the Content-Security-Policy. A path that is not a known
file (``/static/../../etc/passwd``, percent-encoded or not) goes on to Django's URL routing,
which answers 404.
"""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from whitenoise.middleware import WhiteNoiseMiddleware


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[..., Any], settings: Any = settings) -> None:
        with warnings.catch_warnings():
            # STATIC_ROOT exists only after collectstatic; until then the finders serve static/.
            warnings.filterwarnings("ignore", message="No directory at", category=UserWarning)
            super().__init__(get_response, settings)
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if iscoroutinefunction(self):
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        if self.autorefresh:  # DEBUG: looks on disk for every request
            static_file = await sync_to_async(self.find_file, thread_sensitive=False)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return self.serve(static_file, request)
        return await self.get_response(request)
