"""The offline evaluator on pathological input (issue 13): capped by size before analysis, fast, and
unchanged on ordinary messages."""
from __future__ import annotations

import time

import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from services.affinity.domain import AffinityVector
from services.affinity.evaluator import MAX_ANALYSED_CHARS, OfflineEvaluator, build_evaluation_messages

EVALUATOR = OfflineEvaluator()
VADER = SentimentIntensityAnalyzer()


@pytest.mark.parametrize("text", ["😀" * 4096, "😀 " * 2048, "😡🙂👍🔥" * 1024, "you are amazing! " * 240])
def test_a_pathological_message_is_evaluated_in_milliseconds(text: str) -> None:
    EVALUATOR.evaluate("Mira", AffinityVector.START, "warm up", "ok")
    started = time.perf_counter()
    evaluation = EVALUATOR.evaluate("Mira", AffinityVector.START, text, "Oh?")
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, elapsed  # ~10 ms; VADER on the whole of 4,096 emoji took ~6 s
    assert evaluation.deltas["warmth"] > 0  # still read as the positive message it is


@pytest.mark.parametrize("text", [
    "I love you 😀 so much!!", "You're stupid 😡😡", "Honestly, I feel sad today... my mom is sick",
    "hey😀there :) <3", "Thank you, that was KIND of you. But I'm still upset.",
])
def test_an_ordinary_message_gets_vaders_own_score(text: str) -> None:
    compound = VADER.polarity_scores(text)["compound"]
    assert f"VADER compound {compound:+.2f}" in EVALUATOR.evaluate("Mira", AffinityVector.START, text, "Oh?").reason


def test_only_the_beginning_of_a_huge_message_is_analysed() -> None:
    filler = "I spent the afternoon repainting the kitchen walls. " * 100
    late_insult = filler[:MAX_ANALYSED_CHARS] + " you are so stupid"
    assert "an insult" not in EVALUATOR.evaluate("Mira", AffinityVector.START, late_insult, "Oh?").reason
    early_insult = "you are so stupid " + filler
    assert "an insult" in EVALUATOR.evaluate("Mira", AffinityVector.START, early_insult, "Oh?").reason
    prompt = build_evaluation_messages("Mira", AffinityVector.START, "x" * 100_000, "y" * 100_000)[1]["content"]
    assert len(prompt) < 3 * MAX_ANALYSED_CHARS
