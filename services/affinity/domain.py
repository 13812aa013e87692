"""Pure affinity domain: the six-axis vector, its update, decay, composites, scope and ghost rules.

No I/O, no clocks: every time-dependent function takes `now` or an elapsed `timedelta`.
Spec: /work/shared/spec/affinity.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import ClassVar, Literal

# The scope vocabulary is the turn request's contract; the affinity service's callers know these names here.
from services.contracts.scopes import (  # noqa: F401
    AFFINITY_AXES,
    BOND_AXES,
    CHEMISTRY_AXES,
    AffinityScopeError,
    parse_affinity_scope,
)

AXES: tuple[str, ...] = AFFINITY_AXES

AXIS_RANGES: dict[str, tuple[float, float]] = {
    "warmth": (-1.0, 1.0),
    "trust": (0.0, 1.0),
    "intimacy": (0.0, 1.0),
    "intrigue": (0.0, 1.0),
    "patience": (0.0, 1.0),
    "tension": (0.0, 1.0),
}

# Words for where a value sits in its axis range, in fifths (what an LLM judge sees instead of numbers).
BANDS: tuple[tuple[float, str], ...] = ((0.2, "very low"), (0.4, "low"), (0.6, "medium"), (0.8, "high"))

ALL_AXES: frozenset[str] = frozenset(AXES)


def _check_axis(axis: str) -> None:
    if axis not in AXIS_RANGES:
        raise ValueError(f"unknown affinity axis {axis!r}; allowed: {', '.join(AXES)}")


def clamp_axis(axis: str, value: float) -> float:
    """Clamp `value` into the axis range (warmth −1…1, the others 0…1)."""
    _check_axis(axis)
    lo, hi = AXIS_RANGES[axis]
    return min(hi, max(lo, value))


@dataclass(frozen=True)
class AffinityVector:
    """The relationship state of one session; every value lies inside its axis range."""

    warmth: float
    trust: float
    intimacy: float
    intrigue: float
    patience: float
    tension: float

    START: ClassVar[AffinityVector]

    def __post_init__(self) -> None:
        for axis in AXES:
            value = getattr(self, axis)
            lo, hi = AXIS_RANGES[axis]
            if not (isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= hi):
                raise ValueError(f"{axis}={value!r} is outside its range [{lo}, {hi}]")

    def as_dict(self) -> dict[str, float]:
        return {axis: float(getattr(self, axis)) for axis in AXES}

    @classmethod
    def from_mapping(cls, values: Mapping[str, float]) -> AffinityVector:
        """Build from a mapping holding exactly the six axes (missing or unknown names raise)."""
        unknown = set(values) - ALL_AXES
        missing = ALL_AXES - set(values)
        if unknown or missing:
            raise ValueError(
                f"affinity mapping must hold exactly {', '.join(AXES)}; "
                f"unknown: {sorted(unknown)}, missing: {sorted(missing)}"
            )
        return cls(**{axis: float(values[axis]) for axis in AXES})


AffinityVector.START = AffinityVector(warmth=0.3, trust=0.2, intimacy=0.0, intrigue=0.5, patience=0.5, tension=0.1)


# --- update per turn -------------------------------------------------------------------------


def _checked_deltas(deltas: Mapping[str, float]) -> dict[str, float]:
    for axis, delta in deltas.items():
        _check_axis(axis)
        if not math.isfinite(delta):
            raise ValueError(f"delta for {axis} must be finite, got {delta!r}")
    return dict(deltas)


def apply_delta(vector: AffinityVector, deltas: Mapping[str, float], inertia: float) -> AffinityVector:
    """EMA step: `axis ← clamp(axis + (1 − inertia)·delta)` for every axis named in `deltas`.

    `inertia` must lie in [0, 1] (0 applies the delta in full, 1 changes nothing).
    """
    _check_inertia(inertia)
    values = vector.as_dict()
    _ema_step(values, _checked_deltas(deltas), 1.0 - inertia)
    return AffinityVector(**values)


def _check_inertia(inertia: float) -> None:
    if not (0.0 <= inertia <= 1.0):
        raise ValueError(f"inertia must be within [0, 1], got {inertia!r}")


def _ema_step(values: dict[str, float], deltas: Mapping[str, float], step: float) -> None:
    """The EMA step on plain values, in place (checked axes): `axis ← clamp(axis + step·delta)`."""
    for axis, delta in deltas.items():
        lo, hi = AXIS_RANGES[axis]
        value = values[axis] + step * delta
        values[axis] = lo if value < lo else hi if value > hi else value


SHORT_MESSAGE_MAX_CHARS = 3
LONG_MESSAGE_MIN_CHARS = 30
LONG_GAP = timedelta(hours=24)


def rule_deltas(user_text: str, previous_user_message_at: datetime | None, now: datetime) -> dict[str, float]:
    """Rule deltas of one user message (length measured after stripping whitespace).

    ≥ 30 chars → intrigue +0.02, patience +0.02; ≤ 3 chars → patience −0.02;
    more than 24 h since the user's PREVIOUS message → patience −0.05, tension +0.03.
    """
    length = len(user_text.strip())
    deltas: dict[str, float] = {}
    if length >= LONG_MESSAGE_MIN_CHARS:
        deltas = combine_deltas(deltas, {"intrigue": 0.02, "patience": 0.02})
    elif length <= SHORT_MESSAGE_MAX_CHARS:
        deltas = combine_deltas(deltas, {"patience": -0.02})
    if previous_user_message_at is not None and now - previous_user_message_at > LONG_GAP:
        deltas = combine_deltas(deltas, {"patience": -0.05, "tension": 0.03})
    return deltas


def combine_deltas(rule: Mapping[str, float], evaluator: Mapping[str, float]) -> dict[str, float]:
    """`delta = rule_delta + evaluator_delta`, summed per axis (unknown axis names raise)."""
    combined = _checked_deltas(rule)
    for axis, delta in _checked_deltas(evaluator).items():
        combined[axis] = combined.get(axis, 0.0) + delta
    return combined


# --- time decay --------------------------------------------------------------------------------

DECAY_PER_DAY: dict[str, float] = {"intrigue": -0.01, "tension": -0.005, "patience": 0.005}


def decay(vector: AffinityVector, elapsed: timedelta) -> AffinityVector:
    """Lazy time decay: per day intrigue −0.01, tension −0.005, patience +0.005, each clamped.

    warmth, trust and intimacy do not decay; a negative elapsed time changes nothing.
    """
    days = elapsed / ONE_DAY
    if days <= 0:
        return vector
    values = vector.as_dict()
    _decay_step(values, days)
    return AffinityVector(**values)


ONE_DAY = timedelta(days=1)


_DECAYING: tuple[tuple[str, float, float, float], ...] = tuple(
    (axis, rate, *AXIS_RANGES[axis]) for axis, rate in DECAY_PER_DAY.items()
)


def _decay_step(values: dict[str, float], days: float) -> None:
    """The decay of `days` (> 0) on plain values, in place."""
    for axis, rate, lo, hi in _DECAYING:
        value = values[axis] + rate * days
        values[axis] = lo if value < lo else hi if value > hi else value


# --- composites and label ----------------------------------------------------------------------


def bond(v: AffinityVector) -> float:
    """`bond = mean((warmth + 1)/2, intimacy, tension)`, in [0, 1]."""
    return ((v.warmth + 1.0) / 2.0 + v.intimacy + v.tension) / 3.0


def chemistry(v: AffinityVector) -> float:
    """`chemistry = mean(trust, intrigue, patience)`, in [0, 1]."""
    return (v.trust + v.intrigue + v.patience) / 3.0


RELATIONSHIP_LABELS: tuple[str, ...] = ("romantic", "friend", "frenemy", "slow_burn", "stranger")


def relationship_label(v: AffinityVector) -> str:
    """First match wins: romantic, friend, frenemy, slow_burn, else stranger (thresholds per spec)."""
    if v.warmth >= 0.7 and v.tension >= 0.3 and v.intimacy >= 0.4:
        return "romantic"
    if v.warmth >= 0.7 and v.trust >= 0.6 and v.tension < 0.2:
        return "friend"
    if v.warmth < 0.4 and v.tension >= 0.6 and v.intrigue >= 0.5:
        return "frenemy"
    if v.intrigue >= 0.6 and v.tension >= 0.4 and v.intimacy < 0.4:
        return "slow_burn"
    return "stranger"


# --- affinity_scope: the vocabulary is the request contract's (services/contracts/scopes.py) -------------

# --- prompt lines ------------------------------------------------------------------------------


def _warmth_line(value: float) -> str:
    if value > 0.6:
        return "You feel affectionate toward them: warm, tender, personal address."
    if value > 0.3:
        return "You are friendly toward them."
    if value > 0.0:
        return "You are polite but flat toward them."
    return "You are cold toward them and keep replies short."


def _attitude_line(axis: str, value: float) -> str | None:
    """The spec's attitude line for one axis value, or None when the value is in a neutral band."""
    if axis == "warmth":
        return _warmth_line(value)
    if axis == "trust":
        if value > 0.6:
            return "You trust them: you share secrets and go deep."
        if value < 0.3:
            return "You keep your distance and don't share much about yourself."
    if axis == "intrigue":
        if value > 0.7:
            return "You are curious about them and ask questions back."
        if value < 0.3:
            return "You are not very interested in what they say."
    if axis == "intimacy" and value > 0.5:
        return "You use callbacks and inside jokes from your shared history."
    if axis == "patience":
        if value < 0.3:
            return "You are terse and impatient with low-effort messages."
        if value > 0.7:
            return "You are patient with them, even with low-effort messages."
    if axis == "tension" and value > 0.5:
        return "There is push-pull between you: tease, resist a little, keep them guessing."
    return None


def attitude_lines(v: AffinityVector, scope: frozenset[str]) -> list[str]:
    """Attitude lines of the in-scope axes, in `AXES` order (neutral bands give no line)."""
    lines = (_attitude_line(axis, getattr(v, axis)) for axis in AXES if axis in scope)
    return [line for line in lines if line is not None]


def scope_composite(v: AffinityVector, scope: frozenset[str]) -> float | None:
    """The in-scope composite: bond if scope ⊆ bond axes, chemistry if ⊆ chemistry axes,
    else the mean of both; None for an empty scope."""
    if not scope:
        return None
    if scope <= BOND_AXES:
        return bond(v)
    if scope <= CHEMISTRY_AXES:
        return chemistry(v)
    return (bond(v) + chemistry(v)) / 2.0


def length_guidance(v: AffinityVector, scope: frozenset[str]) -> str:
    """Reply length from the in-scope composite: < 0.25 one or two sentences, < 0.55 up to
    three, else up to five; an empty scope gets the middle ("up to three") guidance."""
    composite = scope_composite(v, scope)
    if composite is not None and composite < 0.25:
        return "Reply in one or two sentences."
    if composite is None or composite < 0.55:
        return "Reply in up to three sentences."
    return "Reply in up to five sentences."


_LABEL_DESCRIPTIONS: dict[str, str] = {
    "romantic": "there is affection and a spark between you",
    "friend": "you are close, easy and trusting with each other",
    "frenemy": "you are drawn to them but there is friction",
    "slow_burn": "the interest is building, but you are not close yet",
    "stranger": "you are still getting to know each other",
}


def prompt_lines(v: AffinityVector, scope: frozenset[str]) -> list[str]:
    """The `[mood]` section: attitude lines plus the relationship label line (empty scope → [])."""
    if not scope:
        return []
    label = relationship_label(v)
    return [*attitude_lines(v, scope), f"Relationship: {label} ({_LABEL_DESCRIPTIONS[label]})."]


FEELINGS_HIDDEN_NOTE = "(hidden internal state: let it colour your reply, never mention these numbers)"


def feelings_lines(v: AffinityVector, scope: frozenset[str]) -> list[str]:
    """The `[feelings]` section: a hidden-marker line, then `axis: value` (2 decimals) per in-scope axis."""
    if not scope:
        return []
    return [FEELINGS_HIDDEN_NOTE, *(f"{axis}: {getattr(v, axis):.2f}" for axis in AXES if axis in scope)]


# --- ghost decision ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GhostPolicy:
    """Ghost rule settings (GHOST_MAX_STREAK, GHOST_RAISED_WINDOW_HOURS, PDE `ghosting`)."""

    max_streak: int = 1
    cooldown: timedelta = timedelta(hours=1)
    raised_window: timedelta = timedelta(hours=24)
    base_threshold: float = 0.65
    raised_threshold: float = 0.85
    min_user_messages: int = 10
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.max_streak < 0 or self.min_user_messages < 0:
            raise ValueError("max_streak and min_user_messages must be ≥ 0")
        if self.cooldown < timedelta(0) or self.raised_window < timedelta(0):
            raise ValueError("cooldown and raised_window must not be negative")


@dataclass(frozen=True)
class GhostBookkeeping:
    ghost_streak: int = 0
    total_ghosts: int = 0
    last_ghost_at: datetime | None = None


@dataclass(frozen=True)
class GhostDecision:
    ghost: bool
    score: float
    threshold: float
    rule: str  # disabled | too_few_messages | streak | cooldown | threshold
    reason: str


def ghost_score(v: AffinityVector) -> float:
    """`score = 0.4·(1 − intrigue) + 0.4·(1 − patience) + 0.2·tension` (use the decayed vector)."""
    return 0.4 * (1.0 - v.intrigue) + 0.4 * (1.0 - v.patience) + 0.2 * v.tension


def _ghost_veto(
    book: GhostBookkeeping, user_message_count: int, now: datetime, policy: GhostPolicy
) -> tuple[str, str] | None:
    """Rules 1–3 (and the `ghosting` switch): the (rule, reason) that forces a reply, or None."""
    if not policy.enabled:
        return "disabled", "ghosting is disabled"
    if user_message_count < policy.min_user_messages:
        return (
            "too_few_messages",
            f"{user_message_count} user messages < {policy.min_user_messages}",
        )
    if book.ghost_streak >= policy.max_streak:
        return "streak", f"ghost streak {book.ghost_streak} ≥ {policy.max_streak}"
    if book.last_ghost_at is not None and now - book.last_ghost_at < policy.cooldown:
        return "cooldown", f"last ghost less than {policy.cooldown} ago"
    return None


def ghost_threshold(book: GhostBookkeeping, now: datetime, policy: GhostPolicy) -> float:
    """Rule 4's threshold: raised if the last ghost is less than `raised_window` ago, else base."""
    recent = book.last_ghost_at is not None and now - book.last_ghost_at < policy.raised_window
    return policy.raised_threshold if recent else policy.base_threshold


def decide_ghost(
    v: AffinityVector,
    book: GhostBookkeeping,
    user_message_count: int,
    now: datetime,
    policy: GhostPolicy = GhostPolicy(),
) -> GhostDecision:
    """Deterministic ghost decision (affinity.md): rules 1–3 force a reply, then ghost iff
    score > threshold. `user_message_count` counts the current message."""
    score = ghost_score(v)
    threshold = ghost_threshold(book, now, policy)
    veto = _ghost_veto(book, user_message_count, now, policy)
    if veto is not None:
        rule, reason = veto
        return GhostDecision(False, score, threshold, rule, reason)
    ghost = score > threshold
    relation = ">" if ghost else "≤"
    reason = f"score {score:.3f} {relation} threshold {threshold:.2f}"
    return GhostDecision(ghost, score, threshold, "threshold", reason)


def judge_ghost_allowed(
    book: GhostBookkeeping, user_message_count: int, now: datetime, policy: GhostPolicy = GhostPolicy()
) -> bool:
    """Whether rules 1–3 (and the `ghosting` switch) allow a ghost; vetoes an LLM judge's ghost."""
    return _ghost_veto(book, user_message_count, now, policy) is None


def record_ghost(book: GhostBookkeeping, now: datetime) -> GhostBookkeeping:
    """A ghost: streak +1, total +1, last_ghost_at = now."""
    return GhostBookkeeping(book.ghost_streak + 1, book.total_ghosts + 1, now)


def band(value: float, lo: float = 0.0, hi: float = 1.0) -> str:
    """A word for where `value` sits in [lo, hi]: fifths, from "very low" to "very high"."""
    position = (min(max(value, lo), hi) - lo) / (hi - lo)
    return next((name for upper, name in BANDS if position < upper), "very high")


def banded_axes(vector_values: Mapping[str, float]) -> dict[str, str]:
    """The vector as bands, per axis range."""
    return {axis: band(value, *AXIS_RANGES[axis]) for axis, value in vector_values.items() if axis in AXIS_RANGES}


def reset_streak(book: GhostBookkeeping) -> GhostBookkeeping:
    """A served reply resets the streak (total and last ghost time stay)."""
    return replace(book, ghost_streak=0)


# --- branch projection -------------------------------------------------------------------------

EventKindName = Literal["message", "ghost", "gift"]


@dataclass(frozen=True)
class ReplayEvent:
    """One stored event as the projection replays it: what it did, when, with which raw deltas."""

    kind: EventKindName
    at: datetime
    deltas: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class BranchProjection:
    """The state at the end of a branch: `vector` as of `at` (the last event's time, never earlier than the
    start), and the ghost bookkeeping of the branch's events."""

    vector: AffinityVector
    book: GhostBookkeeping
    at: datetime
    replayed: int

    def current(self, now: datetime) -> AffinityVector:
        """The vector decayed from `at` to `now`."""
        return decay(self.vector, now - self.at)


def project_branch(
    start: AffinityVector,
    started_at: datetime,
    events: Iterable[ReplayEvent],
    *,
    message_inertia: float,
    gift_inertia: float,
) -> BranchProjection:
    """Replay a branch from the session's starting vector, in the given order, exactly as the incremental
    writes did: the vector decays lazily from one event's time to the next (the clock never runs backwards,
    as in the store), a message applies its deltas with the session's inertia and ends the ghost streak (a
    reply was served), a gift applies its deltas with the global inertia, a ghost counts (streak, total,
    last ghost time). Works on plain floats; the arithmetic is `apply_delta`'s and `decay`'s."""
    _check_inertia(message_inertia)
    _check_inertia(gift_inertia)
    values = start.as_dict()
    message_step, gift_step = 1.0 - message_inertia, 1.0 - gift_inertia
    streak, total, last_ghost_at = 0, 0, None
    clock = started_at
    replayed = 0
    for event in events:
        if event.at > clock:
            _decay_step(values, (event.at - clock) / ONE_DAY)
            clock = event.at
        if event.kind == "message":
            _ema_step(values, event.deltas, message_step)
            streak = 0
        elif event.kind == "gift":
            _ema_step(values, event.deltas, gift_step)
        elif event.kind == "ghost":
            streak, total, last_ghost_at = streak + 1, total + 1, event.at
        else:
            raise ValueError(f"unknown event kind {event.kind!r}")
        replayed += 1
    return BranchProjection(AffinityVector(**values), GhostBookkeeping(streak, total, last_ghost_at), clock, replayed)
