"""Conversations: automatic titles (issue 10, item 13). Search over prompt and answer text is not built yet."""

from __future__ import annotations

from chat.runs.services import TITLE_CHARS, title_from_prompt


class TestAutoTitles:
    def test_a_short_prompt_is_its_own_title(self):
        assert title_from_prompt("  How do tides   work?\n") == "How do tides work?"

    def test_a_long_prompt_is_cut_at_a_word_without_an_ellipsis(self):
        prompt = "Compare the long-term maintenance costs of microservices and a modular monolith for a team of five"
        title = title_from_prompt(prompt)
        assert "…" not in title and len(title) <= TITLE_CHARS
        assert prompt.startswith(title) and prompt[len(title)] == " "

    def test_one_endless_word_is_cut_at_the_limit(self):
        assert title_from_prompt("x" * 200) == "x" * TITLE_CHARS
