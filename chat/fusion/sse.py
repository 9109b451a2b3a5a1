"""Incremental Server-Sent Events reader.

Feed it bytes exactly as they come off the socket — split anywhere, even inside a CRLF pair or
a multi-byte UTF-8 character — and it returns the complete items so far:

* :class:`SSEEvent` for each dispatched event (``data`` lines joined with ``"\\n"``);
  ``event.done`` is true for OpenAI's ``data: [DONE]`` terminator.
* :class:`KeepAlive` for each comment line (``: OPENROUTER PROCESSING``), so a caller can see
  the connection is alive without mistaking it for progress.

Follows the WHATWG event-stream parsing rules: CRLF, CR and LF line endings, one optional space
after the colon, ``event:``/``id:``/``retry:`` understood and otherwise ignored, unknown fields
ignored. JSON decoding of ``data`` is the caller's job.

Owns SSE parsing for the whole project (only ``client`` uses it). Standard library only:
no Django, no httpx, no other engine module.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None

    @property
    def done(self) -> bool:
        return self.data.strip() == "[DONE]"


@dataclass(frozen=True)
class KeepAlive:
    """A comment line. Servers send these to keep idle connections open."""

    comment: str


SSEItem = SSEEvent | KeepAlive


class SSEDecoder:
    """Turns a byte stream into :class:`SSEEvent` / :class:`KeepAlive` items, incrementally."""

    def __init__(self) -> None:
        # errors="replace": one bad byte from a provider must not kill the whole answer.
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._skip_lf = False  # the previous feed ended on "\r"; a leading "\n" belongs to it
        self._started = False
        self._data: list[str] = []
        self._event = ""
        self._last_id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[SSEItem]:
        return self._feed_text(self._utf8.decode(chunk))

    def close(self) -> list[SSEItem]:
        """Flush at end of stream.

        Lenient on purpose: a last line without its newline, and a last event without the blank
        line after it, are still delivered (the spec drops them; a truncated ``[DONE]`` is still
        worth seeing).
        """
        items = self._feed_text(self._utf8.decode(b"", final=True))
        if self._buffer:
            self._process_line(self._buffer, items)
            self._buffer = ""
        self._dispatch(items)
        return items

    # ----------------------------------------------------------------------------- internals

    def _feed_text(self, text: str) -> list[SSEItem]:
        if not text:
            return []
        if not self._started:
            self._started = True
            text = text.removeprefix("\ufeff")  # a BOM may open the stream
        if self._skip_lf:
            self._skip_lf = False
            text = text.removeprefix("\n")
        buffer = self._buffer + text
        items: list[SSEItem] = []
        start = 0
        for match in _LINE_END.finditer(buffer):
            # A "\r" at the very end may be the first half of a CRLF split across feeds.
            if match.group() == "\r" and match.end() == len(buffer):
                self._skip_lf = True
            self._process_line(buffer[start : match.start()], items)
            start = match.end()
        self._buffer = buffer[start:]
        return items

    def _process_line(self, line: str, items: list[SSEItem]) -> None:
        if line == "":
            self._dispatch(items)
            return
        if line.startswith(":"):
            items.append(KeepAlive(line[1:].strip()))
            return
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry":
            if value.isdigit():
                self._retry = int(value)
        # Any other field is ignored, as the spec requires.

    def _dispatch(self, items: list[SSEItem]) -> None:
        if self._data:
            items.append(
                SSEEvent(
                    data="\n".join(self._data),
                    event=self._event or "message",
                    id=self._last_id,
                    retry=self._retry,
                )
            )
        self._data = []
        self._event = ""
