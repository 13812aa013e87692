"""The branch projection (services.affinity.domain.project_branch): replaying a branch's events from the
session's starting vector gives exactly the state the incremental writes left (issue 10)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.affinity.domain import (
    AXES,
    AXIS_RANGES,
    AffinityVector,
    GhostBookkeeping,
    ReplayEvent,
    apply_delta,
    decay,
    project_branch,
    record_ghost,
    reset_streak,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
MESSAGE_INERTIA, GIFT_INERTIA = 0.3, 0.8


@dataclass
class Incremental:
    """The session row as the server's writes keep it (store.write_locked): the vector as of `updated_at`,
    decayed to each write's time before the write's change."""

    vector: AffinityVector
    book: GhostBookkeeping
    updated_at: datetime

    def current(self, now: datetime) -> AffinityVector:
        return decay(self.vector, now - self.updated_at)

    def write(self, now: datetime, vector: AffinityVector, book: GhostBookkeeping) -> None:
        self.vector, self.book, self.updated_at = vector, book, max(now, self.updated_at)


def apply_incrementally(state: Incremental, op: tuple, now: datetime) -> ReplayEvent | None:
    """One operation as the server performs it → the event row it records (None: no event)."""
    kind = op[0]
    if kind == "message":  # ApplyTurn: the streak ends (its own write), the evaluator runs, then the event
        _, deltas, evaluation_time = op
        if state.book.ghost_streak:
            state.write(now, state.current(now), reset_streak(state.book))
        at = now + evaluation_time
        state.write(at, apply_delta(state.current(at), deltas, MESSAGE_INERTIA), state.book)
        return ReplayEvent("message", at, deltas)
    if kind == "gift":
        state.write(now, apply_delta(state.current(now), op[1], GIFT_INERTIA), state.book)
        return ReplayEvent("gift", now, op[1])
    if kind == "ghost":
        state.write(now, state.current(now), record_ghost(state.book, now))
        return ReplayEvent("ghost", now)
    return None  # "read": a reader decays lazily and writes nothing


deltas_st = st.dictionaries(st.sampled_from(AXES), st.floats(-1, 1, allow_nan=False), min_size=1)
gaps = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30))
ops = st.one_of(
    st.tuples(st.just("message"), deltas_st, st.timedeltas(min_value=timedelta(0), max_value=timedelta(seconds=30))),
    st.tuples(st.just("gift"), deltas_st),
    st.tuples(st.just("ghost")),
    st.tuples(st.just("read")),
)
starts = st.builds(AffinityVector, **{axis: st.floats(lo, hi) for axis, (lo, hi) in AXIS_RANGES.items()})


def assert_same(projected: AffinityVector, incremental: AffinityVector) -> None:
    assert projected.as_dict() == pytest.approx(incremental.as_dict(), abs=1e-9, rel=0)


@settings(max_examples=300, deadline=None)
@given(starts, st.lists(st.tuples(gaps, ops), max_size=40))
def test_replaying_any_prefix_equals_the_incremental_state_after_that_prefix(
    start: AffinityVector, steps: list[tuple[timedelta, tuple]]
) -> None:
    state = Incremental(start, GhostBookkeeping(), T0)
    events: list[ReplayEvent] = []
    now = T0
    for gap, op in steps:
        now += gap
        event = apply_incrementally(state, op, now)
        if event is not None:
            events.append(event)
            now = max(now, event.at)
        projection = project_branch(start, T0, events, message_inertia=MESSAGE_INERTIA, gift_inertia=GIFT_INERTIA)
        assert_same(projection.current(now), state.current(now))
        assert projection.book == state.book
        assert projection.replayed == len(events)


def test_an_empty_branch_is_the_starting_vector_decayed_to_now() -> None:
    projection = project_branch(AffinityVector.START, T0, [], message_inertia=0.8, gift_inertia=0.8)
    assert projection.vector == AffinityVector.START and projection.at == T0
    assert projection.book == GhostBookkeeping()
    assert projection.current(T0 + timedelta(days=10)) == decay(AffinityVector.START, timedelta(days=10))


def test_the_ghost_streak_counts_the_ghosts_after_the_last_reply() -> None:
    events = [ReplayEvent("ghost", T0), ReplayEvent("message", T0 + timedelta(hours=1), {"warmth": 0.1}),
              ReplayEvent("ghost", T0 + timedelta(hours=2)), ReplayEvent("gift", T0 + timedelta(hours=3), {}),
              ReplayEvent("ghost", T0 + timedelta(hours=4))]
    projection = project_branch(AffinityVector.START, T0, events, message_inertia=0.8, gift_inertia=0.8)
    assert projection.book == GhostBookkeeping(ghost_streak=2, total_ghosts=3, last_ghost_at=T0 + timedelta(hours=4))


def test_messages_use_the_session_inertia_and_gifts_the_global_one() -> None:
    events = [ReplayEvent("message", T0, {"warmth": 0.5}), ReplayEvent("gift", T0, {"trust": 0.5})]
    projection = project_branch(AffinityVector.START, T0, events, message_inertia=0.3, gift_inertia=0.8)
    assert projection.vector.warmth == pytest.approx(0.3 + 0.7 * 0.5)
    assert projection.vector.trust == pytest.approx(0.2 + 0.2 * 0.5)


def test_an_event_older_than_the_previous_one_does_not_turn_the_clock_back() -> None:
    later, earlier = T0 + timedelta(days=4), T0 + timedelta(days=1)
    events = [ReplayEvent("gift", later, {"warmth": 0.1}), ReplayEvent("message", earlier, {"warmth": 0.1})]
    projection = project_branch(AffinityVector.START, T0, events, message_inertia=0.0, gift_inertia=0.0)
    assert projection.at == later
    assert projection.vector.intrigue == pytest.approx(0.5 - 0.04)  # four days of decay, counted once


def test_a_bad_inertia_or_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="inertia"):
        project_branch(AffinityVector.START, T0, [], message_inertia=1.5, gift_inertia=0.8)
    with pytest.raises(ValueError, match="kind"):
        project_branch(AffinityVector.START, T0, [ReplayEvent("hug", T0)], message_inertia=0.8,  # type: ignore[arg-type]
                       gift_inertia=0.8)
