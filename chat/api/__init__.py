"""The HTTP API (``/api/v1/…``, OpenRouter's shapes) and its tokens: another door into the run
service, beside the chatroom, ``manage.py fuse`` and MCP."""
