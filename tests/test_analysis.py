"""Labels for the analyst and validation of its JSON (chat/fusion/analysis.py). No database."""

from __future__ import annotations

import json
import random

import pytest

from chat.fusion.analysis import (
    AnalysisError,
    assign_labels,
    distinct_model_ids,
    extract_json_object,
    label_map_of,
    parse_analysis,
    resolve_label,
)

LABELS = {"Response A": "openai/gpt-4o", "Response B": "anthropic/claude", "Response C": "openai/gpt-4o#2"}


def good_analysis(**overrides: object) -> dict:
    analysis = {
        "consensus": ["Water boils at 100 °C at sea level."],
        "contradictions": [
            {
                "topic": "Altitude effect",
                "stances": [
                    {"model": "Response A", "stance": "Lower boiling point."},
                    {"model": "Response B", "stance": "No effect."},
                ],
            }
        ],
        "partial_coverage": [{"models": ["Response A", "Response C"], "point": "Pressure cookers."}],
        "unique_insights": [{"model": "Response B", "insight": "Mentions the Clausius-Clapeyron relation."}],
        "blind_spots": ["Dissolved salt."],
    }
    analysis.update(overrides)
    return analysis


class TestLabels:
    def test_repeated_models_get_numbered_ids(self) -> None:
        assert distinct_model_ids(["a", "b", "a", "a"]) == ["a", "b", "a#2", "a#3"]

    def test_labels_follow_the_shuffled_order(self) -> None:
        answers = [("m1", "one"), ("m2", "two"), ("m3", "three")]
        labelled = assign_labels(answers, random.Random(3))
        assert [a.label for a in labelled] == ["Response A", "Response B", "Response C"]
        assert sorted((a.model_id, a.content) for a in labelled) == answers
        assert label_map_of(labelled) == {a.label: a.model_id for a in labelled}

    def test_order_differs_across_seeds(self) -> None:
        answers = [(f"m{i}", f"answer {i}") for i in range(4)]
        orders = {tuple(a.model_id for a in assign_labels(answers, random.Random(seed))) for seed in range(10)}
        assert len(orders) > 1

    @pytest.mark.parametrize(
        "raw", ["Response B", "B", "b", "response b", "RESPONSE B", "[Response B]", "**Response B:**", " Response-B "]
    )
    def test_it_accepts_common_label_spellings(self, raw: str) -> None:
        assert resolve_label(raw, LABELS) == "anthropic/claude"

    @pytest.mark.parametrize("raw", ["Response Z", "Both", "Responses", "", "gpt"])
    def test_unknown_labels_resolve_to_none(self, raw: str) -> None:
        assert resolve_label(raw, LABELS) is None

    def test_it_accepts_a_model_id_written_directly(self) -> None:
        assert resolve_label("openai/gpt-4o#2", LABELS) == "openai/gpt-4o#2"


class TestExtractJson:
    def test_it_strips_code_fences_and_prose(self) -> None:
        text = 'Here is the analysis:\n```json\n{"a": 1}\n```\nHope it helps.'
        assert extract_json_object(text) == {"a": 1}

    def test_it_skips_leading_prose_without_fences(self) -> None:
        assert extract_json_object('Sure! {"a": [1, 2]} trailing words') == {"a": [1, 2]}

    @pytest.mark.parametrize("text", ["", "   ", "no json here", '{"a": ', "[1, 2]"])
    def test_it_rejects_non_objects(self, text: str) -> None:
        with pytest.raises(AnalysisError):
            extract_json_object(text)


class TestParseAnalysis:
    def test_it_maps_labels_back_to_model_ids(self) -> None:
        parsed = parse_analysis(json.dumps(good_analysis()), LABELS)
        analysis = parsed.analysis
        assert analysis["consensus"] == ["Water boils at 100 °C at sea level."]
        assert [s["model"] for s in analysis["contradictions"][0]["stances"]] == ["openai/gpt-4o", "anthropic/claude"]
        assert analysis["partial_coverage"][0]["models"] == ["openai/gpt-4o", "openai/gpt-4o#2"]
        assert analysis["unique_insights"][0]["model"] == "anthropic/claude"
        assert analysis["blind_spots"] == ["Dissolved salt."]
        assert parsed.notes == []

    def test_it_accepts_fenced_output(self) -> None:
        text = f"```json\n{json.dumps(good_analysis())}\n```"
        assert parse_analysis(text, LABELS).analysis["blind_spots"] == ["Dissolved salt."]

    def test_it_drops_extra_keys_with_a_note(self) -> None:
        parsed = parse_analysis(json.dumps(good_analysis(verdict="A wins", score=3)), LABELS)
        assert set(parsed.analysis) == {
            "consensus",
            "contradictions",
            "partial_coverage",
            "unique_insights",
            "blind_spots",
        }
        assert parsed.notes == ["Ignored extra key(s): score, verdict."]

    def test_it_accepts_a_wrapped_object(self) -> None:
        parsed = parse_analysis(json.dumps({"FUSION_ANALYSIS_JSON": good_analysis()}), LABELS)
        assert parsed.analysis["consensus"]

    @pytest.mark.parametrize(
        "key", ["consensus", "contradictions", "partial_coverage", "unique_insights", "blind_spots"]
    )
    def test_a_missing_key_is_an_error(self, key: str) -> None:
        analysis = good_analysis()
        del analysis[key]
        with pytest.raises(AnalysisError, match=key):
            parse_analysis(json.dumps(analysis), LABELS)

    @pytest.mark.parametrize(
        "overrides",
        [
            {"consensus": "everyone agrees"},
            {"blind_spots": None},
            {"consensus": [1, 2]},
            {"contradictions": [{"topic": "t"}]},
            {"contradictions": [{"topic": "t", "stances": [{"model": "Response A"}]}]},
            {"partial_coverage": [{"models": "Response A", "point": "p"}]},
            {"unique_insights": [{"model": "Response A"}]},
            {"unique_insights": ["Response A has a point"]},
        ],
    )
    def test_wrong_types_are_errors(self, overrides: dict) -> None:
        with pytest.raises(AnalysisError):
            parse_analysis(json.dumps(good_analysis(**overrides)), LABELS)

    def test_error_messages_say_what_to_fix(self) -> None:
        with pytest.raises(AnalysisError, match=r"contradictions\[0\] is missing \"stances\""):
            parse_analysis(json.dumps(good_analysis(contradictions=[{"topic": "t"}])), LABELS)

    def test_unknown_labels_are_dropped_with_a_note(self) -> None:
        analysis = good_analysis(
            contradictions=[
                {"topic": "kept", "stances": [{"model": "A", "stance": "x"}, {"model": "Response Q", "stance": "y"}]},
                {"topic": "gone", "stances": [{"model": "Response Q", "stance": "z"}]},
            ],
            partial_coverage=[{"models": ["Response Q"], "point": "gone"}, {"models": ["c", "C"], "point": "kept"}],
            unique_insights=[{"model": "Response Z", "insight": "gone"}, {"model": "response b", "insight": "kept"}],
        )
        parsed = parse_analysis(json.dumps(analysis), LABELS)
        assert parsed.analysis["contradictions"] == [
            {"topic": "kept", "stances": [{"model": "openai/gpt-4o", "stance": "x"}]}
        ]
        assert parsed.analysis["partial_coverage"] == [{"models": ["openai/gpt-4o#2"], "point": "kept"}]
        assert parsed.analysis["unique_insights"] == [{"model": "anthropic/claude", "insight": "kept"}]
        assert len(parsed.notes) == 4
        assert all("unknown label" in note for note in parsed.notes)

    def test_empty_lists_are_valid(self) -> None:
        empty = {key: [] for key in good_analysis()}
        assert parse_analysis(json.dumps(empty), LABELS).analysis == empty
