"""Persona Decision Engine: rules, bands, judge prompt/parse, veto (orchestrator.md "PDE")."""

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.affinity.domain import band
from services.affinity.domain import banded_axes as banded_state  # the bands moved to affinity, their owner
from services.orchestrator.domain.pde import (
    STYLE_LINES,
    JudgeVerdict,
    apply_veto,
    build_judge_messages,
    decide_by_rules,
    parse_judge_output,
)


def vector(warmth=0.3, tension=0.1, **rest):
    return {
        "warmth": warmth,
        "trust": 0.2,
        "intimacy": 0.0,
        "intrigue": 0.5,
        "patience": 0.5,
        "tension": tension,
        **rest,
    }


@pytest.mark.parametrize(
    ("warmth", "tension", "style"),
    [
        (0.31, 0.51, "push_pull"),
        (0.9, 0.8, "push_pull"),  # push-pull wins over warm
        (0.30, 0.9, "neutral"),  # warmth must exceed 0.3
        (0.5, 0.50, "neutral"),  # tension must exceed 0.5
        (0.61, 0.1, "warm"),
        (0.60, 0.1, "neutral"),
        (-0.01, 0.1, "cold"),
        (-0.5, 0.9, "cold"),
        (0.0, 0.1, "neutral"),
    ],
)
def test_rules_reply_style(warmth, tension, style):
    decision = decide_by_rules(False, vector(warmth, tension))
    assert (decision.action, decision.style) == ("reply", style)
    assert decision.turn_style_lines == STYLE_LINES[style]
    assert decision.reason.startswith("rules:")


def test_rules_ghost_first():
    decision = decide_by_rules(True, vector(0.9, 0.1))
    assert (decision.action, decision.turn_style_lines) == ("ghost", ())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.0, "very low"),
        (0.199, "very low"),
        (0.2, "low"),
        (0.399, "low"),
        (0.4, "medium"),
        (0.599, "medium"),
        (0.6, "high"),
        (0.799, "high"),
        (0.8, "very high"),
        (1.0, "very high"),
        (-3.0, "very low"),
        (7.0, "very high"),
    ],
)
def test_band_edges(value, expected):
    assert band(value) == expected


def test_banded_state_uses_warmth_range():
    banded = banded_state(vector(warmth=-0.5, tension=0.9))
    assert banded["warmth"] == "low"  # −0.5 is at 25 % of −1…1
    assert banded["tension"] == "very high"
    assert banded["intimacy"] == "very low"
    assert set(banded) == {"warmth", "trust", "intimacy", "intrigue", "patience", "tension"}


@given(st.floats(min_value=0, max_value=1), st.floats(min_value=0, max_value=1))
def test_band_is_monotonic(a, b):
    order = ["very low", "low", "medium", "high", "very high"]
    low, high = sorted((a, b))
    assert order.index(band(low)) <= order.index(band(high))


def test_judge_messages_show_bands_never_numbers():
    history = [("user" if i % 2 else "assistant", f"message {i}") for i in range(12)]
    state = vector(warmth=0.456, tension=0.123)  # warmth at 73 % of −1…1
    messages = build_judge_messages(
        "Decide if Inês answers.",
        "Inês, a dry-witted bookseller in Lisbon.",
        history,
        banded_state(state),
        {"user_messages_in_session": 14, "hours_since_previous_message": "2.5"},
        "are you there?",
    )
    assert [m["role"] for m in messages] == ["system", "user"]
    system, case = messages[0]["content"], messages[1]["content"]
    assert system.startswith("Decide if Inês answers.") and '"action"' in system
    assert "message 3" not in case and "message 4" in case and "message 11" in case  # last 8 only
    assert case.count("message ") == 8
    assert "warmth: high" in case and "tension: very low" in case
    assert "0.456" not in case and "0.123" not in case
    assert "user_messages_in_session: 14" in case
    assert case.rstrip().endswith("[new_message]\nare you there?")
    assert re.search(r"\[persona\]\nInês, a dry-witted bookseller", case)


VERDICT = {
    "action": "ghost",
    "inner_state": "Tired of one-word replies.",
    "tone": "curt",
    "reason": "low effort",
}


@pytest.mark.parametrize(
    ("text", "status", "action"),
    [
        (json.dumps(VERDICT), "ok", "ghost"),
        ("```json\n" + json.dumps(VERDICT) + "\n```", "ok", "ghost"),
        ("```\n" + json.dumps({**VERDICT, "action": "reply"}) + "\n```", "ok", "reply"),
        ('  {"action": "reply"}  ', "ok", "reply"),
        ("", "empty", None),
        ("   \n", "empty", None),
        (None, "empty", None),
        ("I think she should reply.", "parse_error", None),
        ('{"action": "maybe"}', "parse_error", None),
        ('{"action": "REPLY"}', "parse_error", None),
        ('{"tone": "warm"}', "parse_error", None),
        ('["reply"]', "parse_error", None),
        ('{"action": "reply", "tone": 3}', "parse_error", None),
        ('Sure! {"action": "reply"}', "parse_error", None),
        ('{"action": "reply",}', "parse_error", None),
    ],
)
def test_parse_judge_output(text, status, action):
    verdict, got_status = parse_judge_output(text)
    assert got_status == status
    assert (verdict.action if verdict else None) == action


def test_parse_judge_output_fields():
    verdict, _ = parse_judge_output(json.dumps({**VERDICT, "tone": "short,\n  dry"}))
    assert verdict == JudgeVerdict("ghost", "Tired of one-word replies.", "short, dry", "low effort")


GHOST = JudgeVerdict("ghost", "bored", "curt", "low effort")


def test_veto_allows_judge_ghost_only_when_rules_and_config_allow():
    allowed = apply_veto(GHOST, rules_allow_ghost=True, ghosting_enabled=True)
    assert (allowed.action, allowed.reason) == ("ghost", "judge: low effort")

    vetoed = apply_veto(GHOST, rules_allow_ghost=False, ghosting_enabled=True, rules_style="warm")
    assert (vetoed.action, vetoed.style) == ("reply", "warm")
    assert "vetoed" in vetoed.reason and "rules 1–3" in vetoed.reason
    assert vetoed.turn_style_lines[0] == "Tone for this reply: curt"

    disabled = apply_veto(GHOST, rules_allow_ghost=True, ghosting_enabled=False)
    assert disabled.action == "reply" and "ghosting is disabled" in disabled.reason


def test_veto_reply_uses_judge_tone_or_falls_back_to_rule_lines():
    reply = apply_veto(JudgeVerdict("reply", "amused", "teasing, light", "playful user"), False, True)
    assert reply.action == "reply"
    assert reply.turn_style_lines == (
        "Tone for this reply: teasing, light",
        "Inner state (let it colour the reply, don't announce it): amused",
    )
    toneless = apply_veto(JudgeVerdict("reply", "", "", ""), False, True, rules_style="cold")
    assert toneless.turn_style_lines == STYLE_LINES["cold"]
