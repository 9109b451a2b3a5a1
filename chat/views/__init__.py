"""The app's pages and JSON endpoints, one module per area (routed in chat/urls.py).

Views parse, authorize, call one service and respond: they hold no business logic, and they do
not import each other; what several of them share lives in ``chat.views._common``.
"""
