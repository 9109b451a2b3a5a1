"""The fusion engine: a panel of models answers, an analyst compares, a writer fuses.

A small library in plain asyncio, usable and testable alone (``manage.py fuse`` and the tests
drive it without a database). Nothing under ``chat/fusion/`` imports Django, the database, or
another part of ``chat``; the site reaches it through ``chat.runs`` and ``chat.engine``.

* ``types``     — requests, events, statuses, limits, and the ``Client`` / ``Tools`` protocols;
* ``pipeline``  — ``FusionRun``: the driver and its controls;
* ``member``, ``research``, ``analyst``, ``writer`` — the phases; ``calls`` — what they share;
* ``analysis``, ``prompts``, ``sources`` — pure helpers (labels and JSON, prompt texts, URLs);
* ``client``, ``sse``, ``providers``, ``catalogue`` — the provider side over httpx;
* ``tools/``    — ``web_search`` / ``web_fetch`` behind an SSRF-guarded fetcher.

See docs/engine-contract.md for what the engine promises its callers.
"""
