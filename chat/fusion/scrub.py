"""API keys out of text that may reach a user or a log (provider error bodies, exceptions)."""

from __future__ import annotations

import base64
import functools
import re
import urllib.parse

_BEARER = re.compile(r"(?i)bearer\s+\S+")


class Scrubber:
    """Removes API keys (and any bearer token) from text that may reach a user or a log."""

    def __init__(self, secrets: list[str]) -> None:
        # Each key also as a provider might echo it: in any case, percent-encoded, base64 (alone,
        # or as HTTP Basic's ":key"/"key:"). Longest first, so a key inside another goes whole.
        forms: set[str] = set()
        for secret in {s for s in secrets if len(s) >= 4}:
            forms.update({secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)})
            for raw in (secret, f":{secret}", f"{secret}:"):
                encoded = base64.b64encode(raw.encode()).decode()
                forms.update(
                    {encoded, encoded.rstrip("="), base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")}
                )
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(f) for f in ordered), re.IGNORECASE) if ordered else None

    def __call__(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub("[redacted]", text)
        return _BEARER.sub("Bearer [redacted]", text)


@functools.lru_cache(maxsize=256)
def scrubber_for(secrets: tuple[str, ...]) -> Scrubber:
    """One scrubber per set of keys (each call of each run used to build its own pattern)."""
    return Scrubber(list(secrets))
