"""Unit tests for services.affinity.domain (spec: affinity.md)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.affinity.domain import (
    AXES,
    AXIS_RANGES,
    AffinityScopeError,
    AffinityVector,
    GhostBookkeeping,
    GhostPolicy,
    apply_delta,
    attitude_lines,
    bond,
    chemistry,
    clamp_axis,
    combine_deltas,
    decay,
    decide_ghost,
    feelings_lines,
    ghost_score,
    judge_ghost_allowed,
    length_guidance,
    parse_affinity_scope,
    prompt_lines,
    record_ghost,
    relationship_label,
    reset_streak,
    rule_deltas,
    scope_composite,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
START = AffinityVector.START
BOND = frozenset({"warmth", "intimacy", "tension"})
CHEMISTRY = frozenset({"trust", "intrigue", "patience"})


def vec(**overrides: float) -> AffinityVector:
    return AffinityVector.from_mapping({**START.as_dict(), **overrides})


vectors = st.builds(
    AffinityVector,
    **{axis: st.floats(lo, hi, allow_nan=False) for axis, (lo, hi) in AXIS_RANGES.items()},
)
deltas_st = st.dictionaries(st.sampled_from(AXES), st.floats(-5, 5, allow_nan=False))
inertias = st.floats(0.0, 1.0)
elapsed_st = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=400))


def in_range(v: AffinityVector) -> bool:
    return all(AXIS_RANGES[a][0] <= x <= AXIS_RANGES[a][1] for a, x in v.as_dict().items())


# --- vector ------------------------------------------------------------------------------------


def test_start_values_match_spec() -> None:
    assert START.as_dict() == {
        "warmth": 0.3, "trust": 0.2, "intimacy": 0.0, "intrigue": 0.5, "patience": 0.5, "tension": 0.1,
    }


def test_vector_rejects_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="warmth"):
        vec(warmth=1.5)
    with pytest.raises(ValueError, match="trust"):
        vec(trust=-0.01)


def test_from_mapping_requires_exactly_the_six_axes() -> None:
    with pytest.raises(ValueError, match="missing"):
        AffinityVector.from_mapping({"warmth": 0.1})
    with pytest.raises(ValueError, match="mood"):
        AffinityVector.from_mapping({**START.as_dict(), "mood": 0.1})
    assert AffinityVector.from_mapping(START.as_dict()) == START


@pytest.mark.parametrize(
    ("axis", "value", "expected"),
    [("warmth", -3.0, -1.0), ("warmth", -0.5, -0.5), ("trust", -0.5, 0.0), ("tension", 1.2, 1.0)],
)
def test_clamp_axis(axis: str, value: float, expected: float) -> None:
    assert clamp_axis(axis, value) == expected


def test_clamp_axis_unknown_axis_raises() -> None:
    with pytest.raises(ValueError, match="unknown affinity axis 'mood'"):
        clamp_axis("mood", 0.5)


# --- apply_delta -------------------------------------------------------------------------------


@given(vectors, deltas_st, inertias)
def test_apply_delta_keeps_every_axis_in_range(v: AffinityVector, deltas: dict, inertia: float) -> None:
    assert in_range(apply_delta(v, deltas, inertia))


@given(vectors, deltas_st)
def test_inertia_one_changes_nothing(v: AffinityVector, deltas: dict) -> None:
    assert apply_delta(v, deltas, 1.0) == v


@given(vectors, deltas_st)
def test_inertia_zero_applies_delta_in_full_then_clamps(v: AffinityVector, deltas: dict) -> None:
    after = apply_delta(v, deltas, 0.0)
    for axis in AXES:
        lo, hi = AXIS_RANGES[axis]
        expected = min(hi, max(lo, getattr(v, axis) + deltas.get(axis, 0.0)))
        assert getattr(after, axis) == pytest.approx(expected)


def test_apply_delta_uses_one_minus_inertia() -> None:
    after = apply_delta(START, {"warmth": 0.1, "tension": -0.6}, 0.8)
    assert after.warmth == pytest.approx(0.32)
    assert after.tension == 0.0  # 0.1 − 0.2·0.6 < 0 → clamped
    assert after.trust == START.trust


@pytest.mark.parametrize("inertia", [-0.01, 1.01, float("nan")])
def test_apply_delta_rejects_inertia_outside_unit_interval(inertia: float) -> None:
    with pytest.raises(ValueError, match="inertia"):
        apply_delta(START, {"warmth": 0.1}, inertia)


def test_apply_delta_rejects_unknown_axis_and_non_finite_delta() -> None:
    with pytest.raises(ValueError, match="unknown affinity axis 'love'"):
        apply_delta(START, {"love": 0.1}, 0.5)
    with pytest.raises(ValueError, match="finite"):
        apply_delta(START, {"warmth": float("inf")}, 0.5)


# --- rule deltas -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "previous", "expected"),
    [
        ("x" * 30, NOW - timedelta(minutes=1), {"intrigue": 0.02, "patience": 0.02}),
        ("x" * 29, NOW - timedelta(minutes=1), {}),
        ("hey", None, {"patience": -0.02}),
        ("  k  ", None, {"patience": -0.02}),
        ("hello", NOW - timedelta(hours=24), {}),
        ("hello", NOW - timedelta(hours=24, seconds=1), {"patience": -0.05, "tension": 0.03}),
        ("ok", NOW - timedelta(days=3), {"patience": -0.07, "tension": 0.03}),
        ("x" * 40, NOW - timedelta(days=3), {"intrigue": 0.02, "patience": -0.03, "tension": 0.03}),
    ],
)
def test_rule_deltas(text: str, previous: datetime | None, expected: dict[str, float]) -> None:
    got = rule_deltas(text, previous, NOW)
    assert got.keys() == expected.keys()
    for axis, value in expected.items():
        assert got[axis] == pytest.approx(value)


def test_combine_deltas_sums_per_axis_and_rejects_unknown_axes() -> None:
    combined = combine_deltas({"patience": 0.02, "intrigue": 0.02}, {"intrigue": 0.1, "warmth": -0.1})
    assert combined == pytest.approx({"patience": 0.02, "intrigue": 0.12, "warmth": -0.1})
    with pytest.raises(ValueError):
        combine_deltas({}, {"mood": 0.1})


# --- decay -------------------------------------------------------------------------------------


def test_decay_rates_per_day() -> None:
    after = decay(START, timedelta(days=10))
    assert after.intrigue == pytest.approx(0.4)
    assert after.tension == pytest.approx(0.05)
    assert after.patience == pytest.approx(0.55)
    assert (after.warmth, after.trust, after.intimacy) == (START.warmth, START.trust, START.intimacy)


def test_decay_clamps_and_ignores_negative_elapsed() -> None:
    assert decay(START, timedelta(days=1000)).as_dict() == {**START.as_dict(), "intrigue": 0.0, "tension": 0.0, "patience": 1.0}
    assert decay(START, timedelta(hours=-5)) == START


@given(vectors, elapsed_st, elapsed_st)
def test_decay_is_monotone_in_elapsed_time_and_stays_in_range(v: AffinityVector, a: timedelta, b: timedelta) -> None:
    shorter, longer = decay(v, min(a, b)), decay(v, max(a, b))
    assert in_range(shorter) and in_range(longer)
    assert longer.intrigue <= shorter.intrigue
    assert longer.tension <= shorter.tension
    assert longer.patience >= shorter.patience


@given(vectors, elapsed_st, elapsed_st)
def test_decay_in_steps_equals_decay_at_once(v: AffinityVector, a: timedelta, b: timedelta) -> None:
    """Lazy decay runs on every read/write, so applying it in pieces must not change the result."""
    stepwise, at_once = decay(decay(v, a), b), decay(v, a + b)
    for axis in AXES:
        assert getattr(stepwise, axis) == pytest.approx(getattr(at_once, axis), abs=1e-9)


# --- composites and labels ---------------------------------------------------------------------


def test_composites_of_start_vector() -> None:
    assert bond(START) == pytest.approx((0.65 + 0.0 + 0.1) / 3)
    assert chemistry(START) == pytest.approx((0.2 + 0.5 + 0.5) / 3)


@given(vectors)
def test_composites_match_definition_and_lie_in_unit_interval(v: AffinityVector) -> None:
    assert bond(v) == pytest.approx(((v.warmth + 1) / 2 + v.intimacy + v.tension) / 3)
    assert chemistry(v) == pytest.approx((v.trust + v.intrigue + v.patience) / 3)
    assert 0.0 <= bond(v) <= 1.0 and 0.0 <= chemistry(v) <= 1.0


@pytest.mark.parametrize(
    ("overrides", "label"),
    [
        ({"warmth": 0.7, "tension": 0.3, "intimacy": 0.4}, "romantic"),
        ({"warmth": 0.7, "tension": 0.3, "intimacy": 0.4, "trust": 0.9}, "romantic"),  # first match wins
        ({"warmth": 0.69, "tension": 0.3, "intimacy": 0.4}, "stranger"),
        ({"warmth": 0.7, "trust": 0.6, "tension": 0.19}, "friend"),
        ({"warmth": 0.7, "trust": 0.6, "tension": 0.2}, "stranger"),
        ({"warmth": 0.39, "tension": 0.6, "intrigue": 0.5}, "frenemy"),
        ({"warmth": 0.4, "tension": 0.6, "intrigue": 0.5}, "stranger"),
        ({"warmth": 0.39, "tension": 0.6, "intrigue": 0.6}, "frenemy"),  # frenemy wins over slow_burn
        ({"warmth": 0.4, "tension": 0.6, "intrigue": 0.6}, "slow_burn"),
        ({"warmth": 0.4, "tension": 0.6, "intrigue": 0.6, "intimacy": 0.4}, "stranger"),
        ({"intrigue": 0.6, "tension": 0.4, "intimacy": 0.39}, "slow_burn"),
        ({}, "stranger"),
    ],
)
def test_relationship_label_table(overrides: dict[str, float], label: str) -> None:
    assert relationship_label(vec(**overrides)) == label


@given(vectors)
def test_relationship_label_conditions_hold(v: AffinityVector) -> None:
    conditions = {
        "romantic": v.warmth >= 0.7 and v.tension >= 0.3 and v.intimacy >= 0.4,
        "friend": v.warmth >= 0.7 and v.trust >= 0.6 and v.tension < 0.2,
        "frenemy": v.warmth < 0.4 and v.tension >= 0.6 and v.intrigue >= 0.5,
        "slow_burn": v.intrigue >= 0.6 and v.tension >= 0.4 and v.intimacy < 0.4,
    }
    expected = next((name for name, holds in conditions.items() if holds), "stranger")
    assert relationship_label(v) == expected


# --- scope -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, BOND),
        ("", BOND),
        ([], BOND),
        ("bond", BOND),
        ("chemistry", CHEMISTRY),
        ("bond_and_chemistry", frozenset(AXES)),
        ("full", frozenset(AXES)),
        ("FULL", frozenset(AXES)),
        ("none", frozenset()),
        (["warmth", "trust"], frozenset({"warmth", "trust"})),
        ("warmth, trust", frozenset({"warmth", "trust"})),
        (["patience"], frozenset({"patience"})),
        (["bond", "trust"], BOND | {"trust"}),
    ],
)
def test_parse_affinity_scope(value: object, expected: frozenset[str]) -> None:
    assert parse_affinity_scope(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["romance", ["warmth", "love"], "warmth,patiance", ["none", "warmth"], [3]])
def test_parse_affinity_scope_rejects_unknown_values(value: object) -> None:
    with pytest.raises(AffinityScopeError) as info:
        parse_affinity_scope(value)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_scope_error_names_bad_value_and_allowed_ones() -> None:
    with pytest.raises(AffinityScopeError) as info:
        parse_affinity_scope(["warmth", "love"])
    message = str(info.value)
    assert "'love'" in message
    for allowed in ("bond", "chemistry", "bond_and_chemistry", "full", "none", *AXES):
        assert allowed in message


# --- prompt lines ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("warmth", "needle"),
    [(0.61, "affectionate"), (0.6, "friendly"), (0.31, "friendly"), (0.3, "polite but flat"),
     (0.01, "polite but flat"), (0.0, "cold"), (-0.8, "cold")],
)
def test_warmth_attitude_bands(warmth: float, needle: str) -> None:
    (line,) = attitude_lines(vec(warmth=warmth), frozenset({"warmth"}))
    assert needle in line


@pytest.mark.parametrize(
    ("axis", "value", "needle"),
    [
        ("trust", 0.61, "share secrets"), ("trust", 0.29, "distance"), ("trust", 0.45, None),
        ("intrigue", 0.71, "curious"), ("intrigue", 0.29, "not very interested"), ("intrigue", 0.7, None),
        ("intimacy", 0.51, "inside jokes"), ("intimacy", 0.5, None),
        ("patience", 0.29, "impatient"), ("patience", 0.71, "patient with them"), ("patience", 0.5, None),
        ("tension", 0.51, "push-pull"), ("tension", 0.5, None),
    ],
)
def test_attitude_bands(axis: str, value: float, needle: str | None) -> None:
    lines = attitude_lines(vec(**{axis: value}), frozenset({axis}))
    if needle is None:
        assert lines == []
    else:
        assert len(lines) == 1 and needle in lines[0]


def test_attitude_lines_only_cover_scope() -> None:
    v = vec(warmth=0.9, trust=0.9, intrigue=0.9, intimacy=0.9, patience=0.9, tension=0.9)
    assert len(attitude_lines(v, frozenset(AXES))) == 6
    chem = attitude_lines(v, CHEMISTRY)
    assert len(chem) == 3 and not any("affectionate" in line or "push-pull" in line for line in chem)
    assert attitude_lines(v, frozenset()) == []


def test_scope_composite_picks_bond_chemistry_or_mean() -> None:
    v = vec(warmth=1.0, intimacy=1.0, tension=1.0, trust=0.0, intrigue=0.0, patience=0.0)
    assert scope_composite(v, BOND) == 1.0
    assert scope_composite(v, frozenset({"warmth"})) == 1.0
    assert scope_composite(v, CHEMISTRY) == 0.0
    assert scope_composite(v, frozenset({"warmth", "trust"})) == 0.5
    assert scope_composite(v, frozenset(AXES)) == 0.5
    assert scope_composite(v, frozenset()) is None


@pytest.mark.parametrize(
    ("overrides", "scope", "needle"),
    [
        ({"warmth": -1.0, "intimacy": 0.0, "tension": 0.0}, BOND, "one or two"),  # bond 0
        ({}, BOND, "up to three"),  # bond 0.25 exactly → not < 0.25
        ({"warmth": 1.0, "intimacy": 0.3, "tension": 0.3}, BOND, "up to three"),  # bond 0.533
        ({"warmth": 1.0, "intimacy": 0.5, "tension": 0.5}, BOND, "up to five"),  # bond 0.667
        ({"trust": 0.9, "intrigue": 0.9, "patience": 0.9}, CHEMISTRY, "up to five"),
        ({"trust": 0.1, "intrigue": 0.1, "patience": 0.1}, CHEMISTRY, "one or two"),
        ({"warmth": -1.0, "intimacy": 0.0, "tension": 0.0}, frozenset(), "up to three"),
    ],
)
def test_length_guidance(overrides: dict[str, float], scope: frozenset[str], needle: str) -> None:
    v = vec(**overrides)
    composite = scope_composite(v, scope)
    if composite is not None:  # guard the table against arithmetic slips
        expected = "one or two" if composite < 0.25 else "up to three" if composite < 0.55 else "up to five"
        assert expected == needle
    assert needle in length_guidance(v, scope)


def test_prompt_lines_add_label_and_respect_none_scope() -> None:
    v = vec(warmth=0.8, trust=0.7, tension=0.1)
    lines = prompt_lines(v, frozenset(AXES))
    assert lines[:-1] == attitude_lines(v, frozenset(AXES))
    assert lines[-1].startswith("Relationship: friend")
    assert prompt_lines(v, frozenset()) == []


def test_feelings_lines_show_in_scope_values_with_two_decimals_and_hidden_marker() -> None:
    v = vec(warmth=-0.256, intimacy=0.3333, tension=0.1)
    lines = feelings_lines(v, BOND)
    assert "hidden" in lines[0]
    assert lines[1:] == ["warmth: -0.26", "intimacy: 0.33", "tension: 0.10"]
    assert feelings_lines(v, frozenset()) == []


# --- ghost decision ----------------------------------------------------------------------------

BORED = vec(intrigue=0.0, patience=0.0, tension=0.5)  # score 0.9
RESTLESS = vec(intrigue=0.1, patience=0.1, tension=0.1)  # score 0.74: above base, below raised
CONTENT = START  # score 0.42
FRESH = GhostBookkeeping()


def test_ghost_score_formula() -> None:
    assert ghost_score(START) == pytest.approx(0.4 * 0.5 + 0.4 * 0.5 + 0.2 * 0.1)
    assert ghost_score(BORED) == pytest.approx(0.9)
    assert ghost_score(RESTLESS) == pytest.approx(0.74)


@pytest.mark.parametrize(
    ("v", "book", "count", "policy", "ghost", "rule", "threshold"),
    [
        (BORED, FRESH, 9, GhostPolicy(), False, "too_few_messages", 0.65),
        (BORED, FRESH, 10, GhostPolicy(), True, "threshold", 0.65),
        (CONTENT, FRESH, 50, GhostPolicy(), False, "threshold", 0.65),
        (BORED, FRESH, 50, GhostPolicy(enabled=False), False, "disabled", 0.65),
        # no two in a row: the previous turn was a ghost (streak 1), long ago
        (BORED, GhostBookkeeping(1, 1, NOW - timedelta(days=3)), 50, GhostPolicy(), False, "streak", 0.65),
        (BORED, GhostBookkeeping(1, 1, NOW - timedelta(days=3)), 50, GhostPolicy(max_streak=2), True, "threshold", 0.65),
        # cooldown: streak reset by a reply, but the last ghost is < 1 h ago
        (BORED, GhostBookkeeping(0, 1, NOW - timedelta(minutes=59)), 50, GhostPolicy(), False, "cooldown", 0.85),
        (BORED, GhostBookkeeping(0, 1, NOW - timedelta(hours=1)), 50, GhostPolicy(), True, "threshold", 0.85),
        # raised threshold within 24 h of the last ghost
        (RESTLESS, GhostBookkeeping(0, 1, NOW - timedelta(hours=2)), 50, GhostPolicy(), False, "threshold", 0.85),
        (RESTLESS, GhostBookkeeping(0, 1, NOW - timedelta(hours=23, minutes=59)), 50, GhostPolicy(), False, "threshold", 0.85),
        (RESTLESS, GhostBookkeeping(0, 1, NOW - timedelta(hours=24)), 50, GhostPolicy(), True, "threshold", 0.65),
        (RESTLESS, FRESH, 50, GhostPolicy(), True, "threshold", 0.65),
    ],
)
def test_decide_ghost_rules(
    v: AffinityVector, book: GhostBookkeeping, count: int, policy: GhostPolicy, ghost: bool, rule: str, threshold: float
) -> None:
    decision = decide_ghost(v, book, count, NOW, policy)
    assert (decision.ghost, decision.rule, decision.threshold) == (ghost, rule, threshold)
    assert decision.score == pytest.approx(ghost_score(v))
    assert decision.reason


def test_rules_are_checked_in_order() -> None:
    book = GhostBookkeeping(1, 1, NOW - timedelta(minutes=5))  # streak AND cooldown both apply
    assert decide_ghost(BORED, book, 5, NOW).rule == "too_few_messages"
    assert decide_ghost(BORED, book, 10, NOW).rule == "streak"
    assert decide_ghost(BORED, reset_streak(book), 10, NOW).rule == "cooldown"


def test_score_equal_to_threshold_replies() -> None:
    score = ghost_score(RESTLESS)
    at_boundary = decide_ghost(RESTLESS, FRESH, 50, NOW, GhostPolicy(base_threshold=score))
    assert (at_boundary.ghost, at_boundary.rule) == (False, "threshold")
    just_below = decide_ghost(RESTLESS, FRESH, 50, NOW, GhostPolicy(base_threshold=score - 1e-9))
    assert just_below.ghost


def test_no_two_ghosts_in_a_row_across_a_sequence_of_turns() -> None:
    book, outcomes, now = FRESH, [], NOW
    for _ in range(6):  # a bored persona, one turn every 2 h
        decision = decide_ghost(BORED, book, 50, now)
        outcomes.append(decision.ghost)
        book = record_ghost(book, now) if decision.ghost else reset_streak(book)
        now += timedelta(hours=2)
    assert outcomes == [True, False, True, False, True, False]
    assert not any(a and b for a, b in zip(outcomes, outcomes[1:]))
    assert book.total_ghosts == 3


def test_record_ghost_and_reset_streak() -> None:
    book = record_ghost(record_ghost(FRESH, NOW - timedelta(hours=3)), NOW)
    assert book == GhostBookkeeping(ghost_streak=2, total_ghosts=2, last_ghost_at=NOW)
    assert reset_streak(book) == GhostBookkeeping(ghost_streak=0, total_ghosts=2, last_ghost_at=NOW)


@pytest.mark.parametrize(
    ("book", "count", "policy", "allowed"),
    [
        (FRESH, 10, GhostPolicy(), True),
        (FRESH, 9, GhostPolicy(), False),
        (GhostBookkeeping(1, 1, NOW - timedelta(days=2)), 20, GhostPolicy(), False),
        (GhostBookkeeping(0, 1, NOW - timedelta(minutes=30)), 20, GhostPolicy(), False),
        (GhostBookkeeping(0, 1, NOW - timedelta(hours=2)), 20, GhostPolicy(), True),  # threshold not consulted
        (FRESH, 20, GhostPolicy(enabled=False), False),
    ],
)
def test_judge_ghost_allowed_follows_rules_one_to_three(
    book: GhostBookkeeping, count: int, policy: GhostPolicy, allowed: bool
) -> None:
    assert judge_ghost_allowed(book, count, NOW, policy) is allowed


def test_ghost_policy_rejects_negative_settings() -> None:
    with pytest.raises(ValueError):
        GhostPolicy(max_streak=-1)
    with pytest.raises(ValueError):
        GhostPolicy(cooldown=timedelta(minutes=-1))
