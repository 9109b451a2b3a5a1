"""The incremental SSE reader: every way a provider can frame and split its stream."""

from __future__ import annotations

import json

from chat.fusion.sse import KeepAlive, SSEDecoder, SSEEvent, SSEItem

OPENROUTER_STREAM = (
    b": OPENROUTER PROCESSING\n\n"
    b'data: {"choices":[{"index":0,"delta":{"content":"Caf\xc3\xa9 \xe2\x9c\x93 "}}]}\n\n'
    b": OPENROUTER PROCESSING\n\n"
    b'data: {"choices":[{"index":0,"delta":{"content":"\xf0\x9f\x98\x80 done"},"finish_reason":"stop"}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}\n\n'
    b"data: [DONE]\n\n"
)


def feed_all(stream: bytes, *, step: int | None = None) -> list[SSEItem]:
    decoder = SSEDecoder()
    items: list[SSEItem] = []
    if step is None:
        items += decoder.feed(stream)
    else:
        for i in range(0, len(stream), step):
            items += decoder.feed(stream[i : i + step])
    return items + decoder.close()


def events(items: list[SSEItem]) -> list[SSEEvent]:
    return [item for item in items if isinstance(item, SSEEvent)]


def datas(items: list[SSEItem]) -> list[str]:
    return [event.data for event in events(items)]


class TestFraming:
    def test_it_reads_one_event_per_blank_line(self) -> None:
        assert datas(feed_all(b"data: one\n\ndata: two\n\n")) == ["one", "two"]

    def test_it_accepts_crlf_line_endings(self) -> None:
        assert datas(feed_all(b"data: one\r\n\r\ndata: two\r\n\r\n")) == ["one", "two"]

    def test_it_accepts_bare_cr_line_endings(self) -> None:
        assert datas(feed_all(b"data: one\r\rdata: two\r\r")) == ["one", "two"]

    def test_it_accepts_mixed_line_endings(self) -> None:
        assert datas(feed_all(b"data: a\r\ndata: b\n\rdata: c\r\n\n")) == ["a\nb", "c"]

    def test_it_joins_multi_line_data_with_newlines(self) -> None:
        stream = b'data: {"a":\ndata:  1,\ndata: "b": 2}\n\n'
        (event,) = events(feed_all(stream))
        assert event.data == '{"a":\n 1,\n"b": 2}'
        assert json.loads(event.data) == {"a": 1, "b": 2}

    def test_it_accepts_a_field_without_space_after_the_colon(self) -> None:
        assert datas(feed_all(b'data:{"x":1}\n\n')) == ['{"x":1}']

    def test_it_strips_only_one_leading_space(self) -> None:
        assert datas(feed_all(b"data:   indented\n\n")) == ["  indented"]

    def test_a_bare_data_field_is_an_empty_line_of_data(self) -> None:
        assert datas(feed_all(b"data\ndata: x\n\n")) == ["\nx"]

    def test_blank_lines_without_data_dispatch_nothing(self) -> None:
        assert feed_all(b"\n\n\r\n\n") == []

    def test_it_skips_a_byte_order_mark_at_the_start(self) -> None:
        assert datas(feed_all(b"\xef\xbb\xbfdata: x\n\n")) == ["x"]

    def test_close_delivers_a_last_event_missing_its_blank_line(self) -> None:
        assert datas(feed_all(b"data: [DONE]")) == ["[DONE]"]

    def test_done_marker_is_recognised(self) -> None:
        first, done = events(feed_all(b"data: {}\n\ndata: [DONE]\n\n"))
        assert not first.done
        assert done.done


class TestCommentsAndOtherFields:
    def test_comments_are_reported_as_keep_alive_not_events(self) -> None:
        items = feed_all(b": OPENROUTER PROCESSING\n\ndata: x\n\n")
        assert items == [KeepAlive("OPENROUTER PROCESSING"), SSEEvent("x")]

    def test_a_comment_inside_an_event_does_not_split_it(self) -> None:
        items = feed_all(b"data: a\n: ping\ndata: b\n\n")
        assert datas(items) == ["a\nb"]
        assert KeepAlive("ping") in items

    def test_event_id_and_retry_are_read_and_do_not_disturb_data(self) -> None:
        (event,) = events(feed_all(b"event: update\nid: 7\nretry: 1500\ndata: x\n\n"))
        assert (event.data, event.event, event.id, event.retry) == ("x", "update", "7", 1500)

    def test_event_name_resets_after_each_event(self) -> None:
        first, second = events(feed_all(b"event: special\ndata: a\n\ndata: b\n\n"))
        assert (first.event, second.event) == ("special", "message")

    def test_unknown_fields_and_bad_retry_are_ignored(self) -> None:
        (event,) = events(feed_all(b"foo: bar\nretry: soon\nid: a\x00b\ndata: x\n\n"))
        assert (event.data, event.retry, event.id) == ("x", None, None)


class TestIncrementalFeeding:
    def test_byte_by_byte_feeding_gives_the_same_items(self) -> None:
        assert feed_all(OPENROUTER_STREAM, step=1) == feed_all(OPENROUTER_STREAM)

    def test_every_split_size_gives_the_same_items(self) -> None:
        expected = feed_all(OPENROUTER_STREAM)
        for step in range(2, 40):
            assert feed_all(OPENROUTER_STREAM, step=step) == expected, step

    def test_multibyte_characters_split_across_feeds_survive(self) -> None:
        contents = [
            json.loads(d)["choices"][0]["delta"].get("content") for d in datas(feed_all(OPENROUTER_STREAM, step=1))[:2]
        ]
        assert contents == ["Café ✓ ", "😀 done"]

    def test_crlf_split_between_feeds_is_one_line_ending(self) -> None:
        decoder = SSEDecoder()
        items = decoder.feed(b"data: a\r")
        items += decoder.feed(b"\ndata: b\r")
        items += decoder.feed(b"\n\r")
        items += decoder.feed(b"\n")
        assert datas(items) == ["a\nb"]

    def test_crlf_stream_fed_byte_by_byte(self) -> None:
        stream = OPENROUTER_STREAM.replace(b"\n", b"\r\n")
        assert feed_all(stream, step=1) == feed_all(OPENROUTER_STREAM)

    def test_nothing_is_returned_until_an_event_is_complete(self) -> None:
        decoder = SSEDecoder()
        assert decoder.feed(b"data: partial") == []
        assert decoder.feed(b"\n") == []
        assert datas(decoder.feed(b"\n")) == ["partial"]

    def test_invalid_utf8_is_replaced_not_fatal(self) -> None:
        assert datas(feed_all(b"data: a\xffb\n\n")) == ["a\ufffdb"]
