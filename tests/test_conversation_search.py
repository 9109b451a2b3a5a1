"""Conversations: automatic titles, and the sidebar's search over titles, prompts and fused
answers (issue 10, item 13)."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from chat.conversations import conversation_list_for_user
from chat.models import Conversation, Run, RunStatus, Turn
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


# --------------------------------------------------------------------------- search (item 13)
# Runs on the database the settings name: SQLite (FTS5, migration 0008) by default, PostgreSQL
# with DATABASE_URL=postgres://… (full text search).


def conversation(user: Any, title: str, *, prompt: str = "", answer: str = "", status: str = RunStatus.COMPLETE):
    c = Conversation.objects.create(user=user, title=title)
    if prompt:
        turn = Turn.objects.create(conversation=c, index=c.turns.count(), prompt=prompt)
        Run.objects.create(
            user=user, conversation=c, turn=turn, client_run_id=f"client-{turn.pk}", status=status, answer=answer
        )
    return c


def titles(user: Any, q: str) -> list[str]:
    return sorted(c.title for c in conversation_list_for_user(user=user, q=q))


@pytest.mark.django_db
class TestConversationSearch:
    def test_a_word_only_in_the_fused_answer_finds_the_conversation(self, alice):
        conversation(alice, "Tides", prompt="How do tides work?", answer="The Moon's gravity pulls the oceans.")
        conversation(alice, "Bread", prompt="Sourdough starter?", answer="Feed it flour daily.")
        assert titles(alice, "gravity") == ["Tides"]
        assert titles(alice, "GRAV") == ["Tides"]  # the start of a word, any case

    def test_a_word_in_a_prompt_finds_the_conversation(self, alice):
        conversation(alice, "Untitled", prompt="Explain Rayleigh scattering", answer="Short light scatters more.")
        assert titles(alice, "rayleigh") == ["Untitled"]

    def test_every_word_must_match(self, alice):
        conversation(alice, "Tides", prompt="How do tides work?", answer="The Moon's gravity pulls the oceans.")
        assert titles(alice, "gravity oceans") == ["Tides"]
        assert titles(alice, "gravity volcano") == []

    def test_titles_still_match_inside_words(self, alice):
        conversation(alice, "Sourdough starter")
        assert titles(alice, "rdoug") == ["Sourdough starter"]

    def test_bob_never_finds_alices_conversation(self, alice, bob):
        conversation(alice, "Alice's plan", prompt="secret launch date", answer="The launch is on Friday.")
        conversation(bob, "Bob's notes", prompt="groceries", answer="milk")
        assert titles(bob, "launch") == [] and titles(bob, "Friday") == []
        assert titles(bob, "Alice") == []
        assert titles(alice, "launch") == ["Alice's plan"]

    def test_an_answer_still_streaming_is_not_searched_yet(self, alice):
        conversation(alice, "Live", prompt="Tell me", answer="partial volcanoes", status=RunStatus.RUNNING)
        assert titles(alice, "volcanoes") == []
        Run.objects.filter(conversation__title="Live").update(status=RunStatus.COMPLETE)
        assert titles(alice, "volcanoes") == ["Live"]

    def test_the_index_follows_edits_and_deletes(self, alice):
        c = conversation(alice, "Tides", prompt="How do tides work?", answer="gravity")
        Run.objects.filter(conversation=c).update(answer="magnetism")
        assert titles(alice, "gravity") == [] and titles(alice, "magnetism") == ["Tides"]
        Turn.objects.filter(conversation=c).update(prompt="Why volcanoes?")
        assert titles(alice, "volcanoes") == ["Tides"] and titles(alice, "tides") == ["Tides"]  # the title
        c.delete()
        assert titles(alice, "magnetism") == []

    def test_every_version_of_a_turn_is_searched(self, alice):
        c = conversation(alice, "Tides", prompt="How do tides work?", answer="first answer gravity")
        turn = c.turns.get()
        Run.objects.create(user=alice, conversation=c, turn=turn, client_run_id="v2", status="complete", answer="bulge")
        assert titles(alice, "gravity") == ["Tides"] and titles(alice, "bulge") == ["Tides"]

    @pytest.mark.parametrize(
        ("q", "found"),
        [
            ('"', False),
            ('"gravity', True),
            ("gravity*", True),
            ("*", False),
            ("gravity NEAR oceans", True),  # "near" is a word of the answer, not an operator
            ("NEAR(gravity oceans)", True),
            ("-gravity", True),  # not a negation
            ("gravity -oceans", True),
            ("(gravity", True),
            ("gravity)", True),
            ("gravity OR", True),
            ("AND", False),
            ("moon:gravity", True),  # not a column filter
            ("^gravity", True),
            ("gravity & | ! :* '", True),
            ("'; DROP TABLE chat_turn; --", False),
            ("\\", False),
            ("%_%", False),
            ("{gravity}", True),
        ],
    )
    def test_punctuation_never_breaks_the_query(self, alice, q, found):
        conversation(alice, "Tides", prompt="How do tides work?", answer="The Moon's gravity pulls oceans near, or so.")
        assert titles(alice, q) == (["Tides"] if found else [])
        assert Turn.objects.count() == 1

    def test_an_empty_query_lists_recent_conversations(self, alice):
        conversation(alice, "Older", prompt="a", answer="b")
        newest = conversation(alice, "Newest")
        for q in ("", "   "):
            assert [c.pk for c in conversation_list_for_user(user=alice, q=q)][0] == newest.pk
        assert titles(alice, "") == ["Newest", "Older"]

    def test_the_sidebar_search_answers_with_matching_ids(self, alice, bob, client):
        mine = conversation(alice, "Tides", prompt="How do tides work?", answer="gravity")
        conversation(bob, "Bob's", prompt="gravity too", answer="gravity")
        client.force_login(alice)
        response = client.get(reverse("home"), {"q": "gravity"}, headers={"Accept": "application/json"})
        assert response.json() == {"q": "gravity", "ids": [mine.pk]}

    def test_the_sidebar_lists_answer_matches_without_javascript(self, alice, client):
        conversation(alice, "Tides", prompt="How do tides work?", answer="gravity")
        conversation(alice, "Bread", prompt="Sourdough?", answer="flour")
        client.force_login(alice)
        html = client.get(reverse("home"), {"q": "gravity"}).content.decode()
        assert "Tides" in html and "Bread" not in html
        assert 'placeholder="Search prompts and answers"' in html
