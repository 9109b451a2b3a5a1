"""Test and demo support that ships with the app: the scripted OpenAI-compatible upstream.

``chat.testing.scripted`` is used by the tests, ``make demo`` and the benchmarks. It must not
import Django or the rest of ``chat`` (only the engine's types), so it runs on its own.
"""
