"""Pure memory domain: extraction, importance, hybrid-ranking math, recall selection, scopes,
summaries and session distillation.

No I/O, no clocks, no randomness. Spec: /work/shared/spec/memory.md.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Hashable, Iterable, Sequence, Set
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

from services.contracts.scopes import (
    MEMORY_SCOPES,
    ScopeError,
    memory_scope_name,
)

CATEGORIES: tuple[str, ...] = ("fact", "preference", "event", "emotion", "relation", "moment", "thread")
Category = Literal["fact", "preference", "event", "emotion", "relation", "moment", "thread"]
LAYERS: tuple[str, ...] = ("profile", "relationship")
Layer = Literal["profile", "relationship"]


@dataclass(frozen=True)
class CandidateMemory:
    """A memory about to be written: third-person-ready content, category, importance 0–1, layer."""

    content: str
    category: Category
    importance: float
    layer: Layer

    def __post_init__(self) -> None:
        if not self.content.strip():
            raise ValueError("memory content must not be empty")
        if self.category not in CATEGORIES:
            raise ValueError(f"unknown memory category {self.category!r}; allowed: {', '.join(CATEGORIES)}")
        if self.layer not in LAYERS:
            raise ValueError(f"unknown memory layer {self.layer!r}; allowed: {', '.join(LAYERS)}")
        if not 0.0 <= self.importance <= 1.0:
            raise ValueError(f"importance must be in [0, 1], got {self.importance}")


# --------------------------------------------------------------------------- text basics

_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "approx", "mt"}
)
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s|$)")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def split_sentences(text: str) -> list[str]:
    """Split text into sentences at . ! ? … followed by space or end, and at line breaks.

    Does not split after common abbreviations ("Dr.", "e.g.") or single-letter initials ("J. K."),
    nor inside numbers ("3.5").
    """
    sentences: list[str] = []
    for block in text.splitlines():
        start = 0
        for end in _SENTENCE_END.finditer(block):
            if end.group().startswith(".") and _ends_with_abbreviation(block[start : end.start()]):
                continue
            piece = block[start : end.end()].strip()
            if piece:
                sentences.append(piece)
            start = end.end()
        tail = block[start:].strip()
        if tail:
            sentences.append(tail)
    return sentences


def _ends_with_abbreviation(before: str) -> bool:
    last = re.search(r"[\w.]+$", before)
    if last is None:
        return False
    token = last.group()
    return token.casefold() in _ABBREVIATIONS or (len(token) == 1 and token.isupper())


def _collapse_whitespace(text: str) -> str:
    return " ".join(text.split())


class _PunctuationToSpace(dict[int, int]):
    """str.translate table: Unicode punctuation → space, anything else → itself; filled lazily."""

    def __missing__(self, codepoint: int) -> int:
        self[codepoint] = 32 if unicodedata.category(chr(codepoint)).startswith("P") else codepoint
        return self[codepoint]


_PUNCTUATION_TO_SPACE = _PunctuationToSpace()


def normalize_for_dedup(text: str) -> str:
    """Casefold, drop punctuation, collapse whitespace: the key for "exact normalized duplicate"."""
    return _collapse_whitespace(text.casefold().translate(_PUNCTUATION_TO_SPACE))


# --------------------------------------------------------------------------- importance

_EMOTION_WORDS = frozenset(
    """love loved hate hated afraid scared terrified anxious anxiety panic worried depressed depression
    sad sadness cry cried crying tears lonely alone grief grieving died dead death funeral divorce
    breakup heartbroken hurt hurts pain angry furious upset ashamed embarrassed guilty jealous proud
    happy happiest thrilled excited ecstatic overjoyed miserable hopeless stressed exhausted burnout
    nervous trauma abused sick cancer hospital pregnant married engaged fired promoted""".split()
)
_INTENSIFIERS = frozenset("so very really extremely incredibly totally absolutely completely deeply".split())
_SELF_DISCLOSURE = re.compile(r"\b(?:i|i'm|i've|i'd|i'll|me|my|myself|mine)\b", re.IGNORECASE)
_EXPLICIT_MARKER = re.compile(
    r"\b(?:remember|important|don't forget|never forget|matters? (?:a lot )?to me)\b", re.IGNORECASE
)


def importance_score(text: str) -> float:
    """Heuristic importance in [0, 1] (spec: write path step 4, no LLM configured).

    0.1 base + 0.35 emotional intensity (emotion words, intensifiers next to them, "!")
    + 0.15 length (saturates at 40 words) + 0.15 self-disclosure (first person)
    + 0.25 explicit "remember"/"important". Empty text scores 0.
    """
    normalized = text.replace("’", "'")
    words = _WORD.findall(normalized.casefold())
    if not words:
        return 0.0
    emotion_hits = sum(word in _EMOTION_WORDS for word in words)
    intensifiers = sum(word in _INTENSIFIERS for word in words) if emotion_hits else 0
    emotion = min(1.0, 0.5 * emotion_hits + 0.15 * intensifiers + 0.1 * min(normalized.count("!"), 3))
    length = min(1.0, len(words) / 40)
    disclosure = 1.0 if _SELF_DISCLOSURE.search(normalized) else 0.0
    explicit = 1.0 if _EXPLICIT_MARKER.search(normalized) else 0.0
    score = 0.1 + 0.35 * emotion + 0.15 * length + 0.15 * disclosure + 0.25 * explicit
    return round(min(1.0, score), 4)


def moment_from_user_message(user_text: str) -> CandidateMemory:
    """The user's message as an episodic relationship memory (spec: write path step 1).

    User text only: recalling the persona's own replies makes it repeat itself.
    """
    content = _collapse_whitespace(user_text)
    if not content:
        raise ValueError("a moment needs non-empty user text")
    return CandidateMemory(content, "moment", importance_score(content), "relationship")


# --------------------------------------------------------------------------- self-statement extraction

_RELATIONS = (
    r"(?:(?:best|older|younger|big|little|twin|baby|ex|step)[- ]?)?"
    r"(?:mother|mom|mum|father|dad|parents|sisters?|brothers?|siblings?|wife|husband|partner|"
    r"boyfriend|girlfriend|fianc[ée]e?|sons?|daughters?|kids|children|grandma|grandmother|grandpa|"
    r"grandfather|grandparents|aunt|uncle|cousins?|niece|nephew|friends?|roommate|flatmate|boss|"
    r"colleague|coworker|neighbou?r|dogs?|cats?|puppy|kitten|pets?|horse|rabbit|hamster|parrot|bird)"
)
_PERSONA_REFERENCE = re.compile(r"\b(?:you|your|yours|yourself|you're|you've|you'll|you'd|ya)\b", re.IGNORECASE)
_QUESTION_START = re.compile(
    r"^(?:do|does|did|can|could|would|will|should|shall|is|are|am|was|were|have|has|"
    r"what|where|when|why|who|how|which)\b",
    re.IGNORECASE,
)
_CLAUSE_BREAK = re.compile(
    r"\s*[,;:]\s*(?:(?:and|but|so|also)\s+)?|\s+(?:and|but|so|because|although|while)\s+(?=(?:i|my)\b)",
    re.IGNORECASE,
)
_LEADING_FILLER = re.compile(
    r"^(?:(?:well|oh|ah|so|and|but|also|actually|honestly|btw|by the way|anyway|yeah|yes|no|haha|lol|"
    r"hey|hi|um|uh|okay|ok)\b[,!.]?\s*)+",
    re.IGNORECASE,
)
_CONTRACTIONS = (
    (re.compile(r"\bi\s+am\b|\bim\b", re.IGNORECASE), "i'm"),
    (re.compile(r"\bcan\s?not\b|\bcant\b", re.IGNORECASE), "can't"),
    (re.compile(r"\bdo not\b|\bdont\b", re.IGNORECASE), "don't"),
)
_OBJECT_END = re.compile(r"\s*(?:[,;:(]|\s-\s|—|\s(?:because|but|since|although|though|which)\b)", re.IGNORECASE)
_TRAILING_FILLER = re.compile(r"(?:\s+(?:lol|haha+|hehe|tbh|honestly)|\s*[:;]-?[)(DP])+$", re.IGNORECASE)
_FIRST_TO_THIRD = {
    "my": "their",
    "me": "them",
    "mine": "theirs",
    "myself": "themselves",
    "i'm": "they're",
    "i've": "they've",
    "i'll": "they'll",
    "i'd": "they'd",
    "i": "they",
}
_FIRST_PERSON = re.compile(r"\b(?:i'm|i've|i'll|i'd|my|me|mine|myself|i)\b", re.IGNORECASE)
_PRONOUN_OBJECT = re.compile(r"^(?:it|that|this|them|him|her|those|these|when|how|what)\b", re.IGNORECASE)
_MAX_OBJECT_WORDS = 12
_THIRD_PERSON_VERB = {"can't stand": "can't stand", "can't": "can't", "don't": "doesn't", "study": "studies"}


def _third_person(verb: str) -> str:
    """love → loves, study → studies, can't stand → can't stand."""
    verb = verb.casefold()
    if verb in _THIRD_PERSON_VERB:
        return _THIRD_PERSON_VERB[verb]
    return verb + "es" if verb.endswith(("s", "sh", "ch", "x")) else verb + "s"


@dataclass(frozen=True)
class _Rule:
    """One self-statement pattern; `template` fields come from the match (obj/rest cleaned,
    verb conjugated to third person)."""

    pattern: re.Pattern[str]
    template: str
    category: Category
    importance: float


def _rule(pattern: str, template: str, category: Category, importance: float) -> _Rule:
    return _Rule(re.compile(pattern, re.IGNORECASE), template, category, importance)


# First match wins; order matters (specific before general).
_SELF_STATEMENT_RULES: tuple[_Rule, ...] = (
    _rule(r"^my name is (?P<obj>.+)", "User's name is {obj}", "fact", 0.9),
    _rule(r"^(?:please )?call me (?P<obj>.+)", "User likes to be called {obj}", "preference", 0.8),
    _rule(r"^my birthday is (?P<obj>.+)", "User's birthday is {obj}", "event", 0.8),
    _rule(r"^i was born (?P<obj>(?:in|on) .+)", "User was born {obj}", "fact", 0.7),
    _rule(r"^i'm allergic to (?P<obj>.+)", "User is allergic to {obj}", "fact", 0.9),
    _rule(r"^i (?P<verb>can't|don't) eat (?P<obj>.+)", "User {verb} eat {obj}", "fact", 0.85),
    _rule(
        r"^i'm (?P<obj>vegan|vegetarian|pescatarian|lactose intolerant|gluten[- ]intolerant|"
        r"coeliac|celiac|diabetic|pregnant|sober)$",
        "User is {obj}",
        "fact",
        0.85,
    ),
    _rule(r"^i'm (?P<obj>\d{1,3})(?: years old| yrs old| y/?o)?$", "User is {obj} years old", "fact", 0.7),
    _rule(
        r"^my (?P<fav>favou?rite) (?P<thing>\w+(?: \w+)?) is (?P<obj>.+)",
        "User's {fav} {thing} is {obj}",
        "preference",
        0.6,
    ),
    _rule(rf"^my (?P<rel>{_RELATIONS})'s name is (?P<obj>.+)", "User's {rel} is called {obj}", "relation", 0.7),
    _rule(rf"^my (?P<rel>{_RELATIONS}) (?P<rest>(?!and\b|or\b)\S+ \S.*)", "User's {rel}{rest}", "relation", 0.7),
    _rule(
        rf"^i have (?P<det>a|an|two|three|four|\d+) (?P<rel>{_RELATIONS})\b(?P<rest>.*)",
        "User has {det} {rel}{rest}",
        "relation",
        0.7,
    ),
    _rule(r"^i(?: currently)? live in (?P<obj>.+)", "User lives in {obj}", "fact", 0.7),
    _rule(r"^i'm living in (?P<obj>.+)", "User lives in {obj}", "fact", 0.7),
    _rule(r"^i(?:'m| come) from (?P<obj>.+)", "User is from {obj}", "fact", 0.7),
    _rule(r"^i grew up in (?P<obj>.+)", "User grew up in {obj}", "fact", 0.6),
    _rule(r"^i work (?P<prep>as|at|for|in) (?P<obj>.+)", "User works {prep} {obj}", "fact", 0.7),
    _rule(r"^my job is (?P<obj>.+)", "User's job is {obj}", "fact", 0.7),
    _rule(r"^i (?P<verb>study|speak|play|teach) (?P<obj>.+)", "User {verb} {obj}", "fact", 0.6),
    _rule(r"^i'm studying (?P<obj>.+)", "User is studying {obj}", "fact", 0.6),
    _rule(r"^i'm (?:a|an) (?:(?:huge|big) )?fan of (?P<obj>.+)", "User is a fan of {obj}", "preference", 0.6),
    _rule(r"^i'm (?P<adj>afraid|scared|terrified) of (?P<obj>.+)", "User is {adj} of {obj}", "emotion", 0.7),
    _rule(r"^i'm (?P<art>a|an) (?!(?:bit|little|tad|lot|mess|wreck)\b)(?P<obj>.+)", "User is {art} {obj}", "fact", 0.6),
    _rule(
        r"^i (?P<adv>(?:really|absolutely|totally|truly|also|still|kind of|kinda) )?"
        r"(?P<verb>love|like|enjoy|adore|hate|dislike|detest|prefer|can't stand) (?P<obj>.+)",
        "User {adv}{verb} {obj}",
        "preference",
        0.6,
    ),
    _rule(
        r"^i (?:really )?don't (?P<dverb>like|enjoy|love) (?P<obj>.+)", "User doesn't {dverb} {obj}", "preference", 0.6
    ),
    _rule(r"^i(?:'m)? feel(?:ing)? (?!like\b)(?P<obj>.+)", "User feels {obj}", "emotion", 0.5),
    _rule(
        r"^i (?P<adv>(?:just|recently) )?(?P<past>got|lost|started|quit|finished|graduated|moved|broke up|"
        r"adopted|bought|failed|retired|passed)\b(?P<rest>.*)",
        "User {adv}{past}{rest}",
        "event",
        0.6,
    ),
)


def _canonical_clause(clause: str) -> str:
    clause = _LEADING_FILLER.sub("", clause.strip())
    for pattern, replacement in _CONTRACTIONS:
        clause = pattern.sub(replacement, clause)
    return clause.strip()


def _to_third_person(text: str) -> str:
    return _FIRST_PERSON.sub(lambda m: _FIRST_TO_THIRD[m.group().casefold()], text)


def _clean_object(text: str) -> str | None:
    """Cut at the end of the clause, drop trailing punctuation/fillers, convert to third person;
    None when nothing is left or it is too long to be a fact."""
    text = _OBJECT_END.split(text, maxsplit=1)[0]
    text = _TRAILING_FILLER.sub("", text.strip().rstrip(" .!?…\"'”’")).strip()
    if not text or len(text.split()) > _MAX_OBJECT_WORDS:
        return None
    return _to_third_person(text)


def _apply_rule(rule: _Rule, clause: str) -> CandidateMemory | None:
    match = rule.pattern.match(clause)
    if match is None:
        return None
    fields: dict[str, str] = {}
    for name, value in match.groupdict(default="").items():
        if name == "obj":
            if _PRONOUN_OBJECT.match(value):
                return None
            cleaned = _clean_object(value)
        elif name == "rest":  # optional tail after a fixed phrase, e.g. "I have a dog| called Rex"
            rest = _clean_object(value) if value.strip() else ""
            cleaned = None if rest is None else (f" {rest}" if rest else "")
        elif name == "verb":
            cleaned = _third_person(value)
        else:
            cleaned = value.casefold() if name != "thing" else value
        if cleaned is None:
            return None
        fields[name] = cleaned
    content = rule.template.format(**fields)
    return CandidateMemory(content, rule.category, rule.importance, "profile")


def _ends_with_question_mark(text: str) -> bool:
    return text.rstrip(" \"'”’)").endswith("?")


def _is_question(sentence: str) -> bool:
    return _ends_with_question_mark(sentence) or bool(_QUESTION_START.match(_canonical_clause(sentence)))


def extract_self_statements(user_text: str) -> list[CandidateMemory]:
    """Rule-based profile facts from the user's self-statements (spec: write path step 2, no LLM).

    Sentences are split first, then clauses (at commas, "… and I …"). Questions (a sentence that
    opens like one, a clause ending in "?") and clauses about the persona ("you…") produce
    nothing; negations do not match. Duplicates are dropped.
    """
    found: dict[str, CandidateMemory] = {}
    for sentence in split_sentences(user_text.replace("’", "'")):
        if _QUESTION_START.match(_canonical_clause(sentence)):
            continue
        for clause in _CLAUSE_BREAK.split(sentence):
            if _ends_with_question_mark(clause) or _PERSONA_REFERENCE.search(clause):
                continue
            canonical = _canonical_clause(clause)
            for rule in _SELF_STATEMENT_RULES:
                candidate = _apply_rule(rule, canonical)
                if candidate is not None:
                    found.setdefault(normalize_for_dedup(candidate.content), candidate)
                    break
    return list(found.values())


# --------------------------------------------------------------------------- LLM extraction output

MAX_EXTRACTED_MEMORIES = 12
MAX_MEMORY_CHARS = 500


class ExtractionFormatError(ValueError):
    """The `memory_extraction` model's answer is not the strict JSON contract."""


def parse_extraction(answer: str) -> list[CandidateMemory]:
    """Parse the strict JSON answer `{"memories": [{content, category, importance, layer}]}`.

    Every item must have all four keys with the right types (importance a number in [0, 1],
    category and layer from the allowed sets, content non-empty and at most 500 characters);
    at most 12 items. Anything else raises ExtractionFormatError naming the first problem —
    the caller records it and falls back to the rule-based extractor. Duplicates are dropped.
    """
    try:
        payload = json.loads(answer)
    except (TypeError, ValueError) as error:
        raise ExtractionFormatError(f"not JSON: {error}") from None
    if not isinstance(payload, dict) or set(payload) != {"memories"} or not isinstance(payload["memories"], list):
        raise ExtractionFormatError('expected exactly {"memories": [...]}')
    items = payload["memories"]
    if len(items) > MAX_EXTRACTED_MEMORIES:
        raise ExtractionFormatError(f"{len(items)} memories; at most {MAX_EXTRACTED_MEMORIES} allowed")
    found: dict[str, CandidateMemory] = {}
    for index, item in enumerate(items):
        where = f"memories[{index}]"
        if not isinstance(item, dict) or set(item) != {"content", "category", "importance", "layer"}:
            raise ExtractionFormatError(f"{where} must have exactly content, category, importance, layer")
        content, importance = item["content"], item["importance"]
        if not isinstance(content, str) or not content.strip() or len(content) > MAX_MEMORY_CHARS:
            raise ExtractionFormatError(
                f"{where}.content must be a non-empty string of at most {MAX_MEMORY_CHARS} chars"
            )
        if isinstance(importance, bool) or not isinstance(importance, (int, float)):
            raise ExtractionFormatError(f"{where}.importance must be a number")
        if not isinstance(item["category"], str) or not isinstance(item["layer"], str):
            raise ExtractionFormatError(f"{where}.category and .layer must be strings")
        try:
            candidate = CandidateMemory(
                _collapse_whitespace(content), item["category"], float(importance), item["layer"]
            )  # type: ignore[arg-type]
        except ValueError as error:
            raise ExtractionFormatError(f"{where}: {error}") from None
        found.setdefault(normalize_for_dedup(candidate.content), candidate)
    return list(found.values())


# --------------------------------------------------------------------------- hybrid ranking

Id = TypeVar("Id", bound=Hashable)


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[Id]], k: int = 60, weights: Sequence[float] | None = None
) -> dict[Id, float]:
    """RRF (spec: hybrid ranking): score(d) = Σ_i w_i / (k + rank_i(d)), ranks 1-based.

    A later repeat of an id inside one ranking is ignored. The result is ordered best first
    (ties keep first appearance).
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"got {len(weights)} weights for {len(rankings)} rankings")
    if any(w < 0 for w in weights):
        raise ValueError("weights must be >= 0")
    scores: dict[Id, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        seen: set[Id] = set()
        for rank, item in enumerate(ranking, start=1):
            if item in seen:
                continue
            seen.add(item)
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    order = sorted(scores, key=lambda item: -scores[item])  # stable: ties keep first appearance
    return {item: scores[item] for item in order}


def blend_scores(
    rrf: float,
    recency_days: float,
    importance: float,
    recency_weight: float = 0.0,
    importance_weight: float = 0.0,
    half_life_days: float = 30.0,
) -> float:
    """Optional recency/importance weighting of a fused score (spec: hybrid ranking).

    score = rrf · (1 + recency_weight · 0.5^(days / half_life) + importance_weight · importance).
    Multiplicative so it works at RRF's scale; both weights 0 leaves `rrf` unchanged.
    """
    if recency_weight < 0 or importance_weight < 0:
        raise ValueError("recency_weight and importance_weight must be >= 0")
    if half_life_days <= 0:
        raise ValueError(f"half_life_days must be > 0, got {half_life_days}")
    recency = math.pow(0.5, max(0.0, recency_days) / half_life_days)
    importance = min(1.0, max(0.0, importance))
    return rrf * (1.0 + recency_weight * recency + importance_weight * importance)


# --------------------------------------------------------------------------- recall selection


@dataclass(frozen=True)
class ScoredMemory:
    """A recalled memory with its fused score and the component ranks' raw scores."""

    id: str
    layer: Layer
    category: Category
    content: str
    score: float
    vector_score: float | None
    text_rank: float | None
    importance: float
    occurred_at: datetime | None


def _best_first(items: Iterable[ScoredMemory]) -> list[ScoredMemory]:
    return sorted(items, key=lambda m: (-m.score, -m.importance, m.id))


def _unique(items: Iterable[ScoredMemory]) -> list[ScoredMemory]:
    """Best-first, dropping repeated ids and exact normalized duplicate contents."""
    seen_ids: set[str] = set()
    seen_texts: set[str] = set()
    kept: list[ScoredMemory] = []
    for item in _best_first(items):
        text = normalize_for_dedup(item.content)
        if item.id in seen_ids or text in seen_texts:
            continue
        seen_ids.add(item.id)
        seen_texts.add(text)
        kept.append(item)
    return kept


def select_profile(candidates: Iterable[ScoredMemory], top: int = 4, per_category: int = 2) -> list[ScoredMemory]:
    """Profile recall (spec): the `top` best overall plus up to `per_category` best of every
    category, without duplicates; best first."""
    ranked = _unique(candidates)
    chosen = {m.id for m in ranked[:top]}
    taken_per_category: dict[str, int] = {}
    for memory in ranked:
        count = taken_per_category.get(memory.category, 0)
        if count < per_category:
            taken_per_category[memory.category] = count + 1
            chosen.add(memory.id)
    return [m for m in ranked if m.id in chosen]


def select_relationship(candidates: Iterable[ScoredMemory], top: int = 3) -> list[ScoredMemory]:
    """Relationship recall (spec): the `top` best of this pair's memories, without duplicates."""
    return _unique(candidates)[:top]


def prune_cross_layer_duplicates(
    profile: Sequence[ScoredMemory], relationship: Sequence[ScoredMemory]
) -> tuple[list[ScoredMemory], list[ScoredMemory]]:
    """Drop relationship memories whose normalized content equals a profile one (the profile copy
    is kept). Returns (profile, relationship)."""
    profile_texts = {normalize_for_dedup(m.content) for m in profile}
    return list(profile), [m for m in relationship if normalize_for_dedup(m.content) not in profile_texts]


def group_by_layer_and_category(items: Iterable[ScoredMemory]) -> dict[str, dict[str, list[ScoredMemory]]]:
    """{layer: {category: [memories best first]}} — the shape Recall returns (spec)."""
    grouped: dict[str, dict[str, list[ScoredMemory]]] = {}
    for item in _best_first(items):
        grouped.setdefault(item.layer, {}).setdefault(item.category, []).append(item)
    return grouped


# --------------------------------------------------------------------------- memory scope


class MemoryScopeError(ScopeError):
    """An unknown `memory_scope` value."""


@dataclass(frozen=True)
class MemoryScope:
    """What a request's `memory_scope` lets reach the prompt (spec: recall)."""

    name: str
    include_profile: bool
    include_relationship: bool
    include_insights: bool
    insights_mode: Literal["full", "neutral"] | None


# What each scope of the request contract lets reach the prompt: memory is the only interpreter.
_SCOPES: dict[str, MemoryScope] = {
    scope.name: scope
    for scope in (
        MemoryScope("full", True, True, True, "full"),
        MemoryScope("neutral_and_relationship", True, True, True, "neutral"),
        MemoryScope("relationship_only", False, True, False, None),
        MemoryScope("neutral_only", False, False, True, "neutral"),
        MemoryScope("insights_only", False, False, True, "full"),
        MemoryScope("none", False, False, False, None),
    )
}
assert set(_SCOPES) == set(MEMORY_SCOPES), "every scope of the request contract has a meaning here"


def parse_memory_scope(value: str | None) -> MemoryScope:
    """Parse a request's memory_scope (the names are the request contract's); missing/blank →
    neutral_and_relationship (spec default)."""
    try:
        return _SCOPES[memory_scope_name(value)]
    except ScopeError as error:
        raise MemoryScopeError(str(error)) from None


# --------------------------------------------------------------------------- summaries

_ROLE_LABELS = {"user": "User", "assistant": "Assistant"}
_MIN_SUMMARY_SCORE = 0.25  # below this a sentence is small talk ("Pretty good honestly.")
_FIRST_PERSON_CAPITALIZED = frozenset({"I", "I'm", "I'll", "I've", "I'd"})
_NUMBER = re.compile(r"\d")


@dataclass(frozen=True)
class _SummarySentence:
    message: int
    order: int
    role: str
    text: str
    score: float


def _informativeness(role: str, sentence: str, unanswered: bool) -> float:
    """Self-disclosure, named entities/numbers, open questions, importance; assistant halved."""
    words = [w.strip('.,;:!?"()') for w in sentence.replace("’", "'").split()[1:]]
    entities = sum(1 for w in words if w[:1].isupper() and w not in _FIRST_PERSON_CAPITALIZED)
    score = min(2, entities) + (1.0 if _NUMBER.search(sentence) else 0.0)
    score += 0.5 * importance_score(sentence) + 0.5 * min(1.0, len(sentence.split()) / 25)
    if role == "user":
        if extract_self_statements(sentence):
            score += 2.0
        elif _SELF_DISCLOSURE.search(sentence.replace("’", "'")):
            score += 0.5
        if sentence.endswith("?"):
            score += 2.0 if unanswered else 1.0
        return score
    return 0.5 * score


def _render_summary(chosen: Sequence[_SummarySentence]) -> str:
    lines: list[str] = []
    last_message = None
    for sentence in sorted(chosen, key=lambda s: s.order):
        if sentence.message == last_message:
            lines[-1] += " " + sentence.text
        else:
            lines.append(f"{_ROLE_LABELS[sentence.role]}: {sentence.text}")
        last_message = sentence.message
    return "\n".join(lines)


def extractive_summary(messages: Sequence[tuple[str, str]], max_chars: int = 1200) -> str:
    """Deterministic extractive fallback summary (spec: rolling summary, no LLM).

    Picks the most informative whole sentences of user/assistant messages (greedy by score),
    renders them in chronological order as "User: …"/"Assistant: …" lines, never exceeding
    `max_chars` and never cutting a sentence. Other roles, sentences under 3 words and small talk
    (score under 0.25) are skipped.
    """
    if max_chars <= 0:
        raise ValueError(f"max_chars must be > 0, got {max_chars}")
    last_assistant = max((i for i, (role, _) in enumerate(messages) if role == "assistant"), default=-1)
    pool: list[_SummarySentence] = []
    seen: set[str] = set()
    for index, (role, content) in enumerate(messages):
        if role not in _ROLE_LABELS:
            continue
        for sentence in split_sentences(content):
            key = normalize_for_dedup(sentence)
            if len(sentence.split()) < 3 or key in seen:
                continue
            seen.add(key)
            score = _informativeness(role, sentence, unanswered=index > last_assistant)
            if score >= _MIN_SUMMARY_SCORE:
                pool.append(_SummarySentence(index, len(pool), role, sentence, score))
    chosen: list[_SummarySentence] = []
    for candidate in sorted(pool, key=lambda s: (-s.score, s.order)):
        if len(_render_summary([*chosen, candidate])) <= max_chars:
            chosen.append(candidate)
    return _render_summary(chosen)


def summary_window(
    total_messages: int, *, summarize_after: int = 20, history_window: int, summarized_until: int = 0
) -> range | None:
    """Which messages the session's rolling summary must cover now (spec: rolling summary).

    The part older than the prompt's `history_window` is summarized in whole blocks of
    `summarize_after` messages: the summary covers range(0, end) with
    end = ⌊(total − history_window) / summarize_after⌋ · summarize_after. None when that does not
    reach past `summarized_until` (the end of the summary already stored).
    """
    if summarize_after <= 0 or history_window < 0 or total_messages < 0 or summarized_until < 0:
        raise ValueError("summary_window needs summarize_after > 0 and non-negative counts")
    older = total_messages - history_window
    end = (older // summarize_after) * summarize_after if older > 0 else 0
    return range(0, end) if end > summarized_until else None


# --------------------------------------------------------------------------- dreaming distillation

_COME_BACK = re.compile(
    r"\b(?:come back to|get back to|talk about (?:it|this|that) (?:later|tomorrow|another time)|"
    r"tell you (?:later|tomorrow|more)|remind me|another time|to be continued|continue (?:this )?later)\b",
    re.IGNORECASE,
)
_USER_PROMISE = re.compile(
    r"\b(?:i promise|i swear|i(?:'ll| will) make sure|i (?:won't|will not) forget)\b", re.IGNORECASE
)
_PERSONA_PROMISE = re.compile(
    r"\b(?:i promise|i(?:'ll| will) (?:remember|remind you|ask you|check in)|i (?:won't|will not) forget)\b",
    re.IGNORECASE,
)
_PLAN = re.compile(r"\b(?:let's|let us|we should|shall we|we could|we'll|we will)\b", re.IGNORECASE)
_CONFLICT = re.compile(
    r"\b(?:i(?:'m| am) (?:so |really )?(?:upset|angry|mad|annoyed|disappointed|hurt) (?:with|at|in|by) you|"
    r"you hurt me|you (?:never|don't) listen|that was (?:rude|mean|hurtful)|you upset me|i(?:'m| am) done with you)\b",
    re.IGNORECASE,
)
_APOLOGY = re.compile(r"\b(?:sorry|i apologi[sz]e|my bad|forgive me)\b", re.IGNORECASE)
_SYMPATHY = re.compile(r"\bsorry (?:to hear|for your|about your|for the loss)\b", re.IGNORECASE)
_LAUGHTER = re.compile(r"\b(?:ha(?:ha)+h?|he(?:he)+|lo+l|lmao+|rofl)\b|😂|🤣|😆", re.IGNORECASE)
_SMALL_TALK = re.compile(
    r"^(?:how are you|how's it going|what's up|what about you|and you|how about you|how was your day)\b",
    re.IGNORECASE,
)
_DEFERRAL = re.compile(
    r"\b(?:not sure|don't know|no idea|let me think|get back to you|later|another time|we'll see)\b",
    re.IGNORECASE,
)


def _relationship(content: str, category: Category, importance: float) -> CandidateMemory:
    return CandidateMemory(content, category, importance, "relationship")


def _quoted(sentence: str) -> str:
    return '"' + sentence.strip().strip('"') + '"'


def _is_apology(sentence: str) -> bool:
    return bool(_APOLOGY.search(sentence)) and not _SYMPATHY.search(sentence)


def _user_sentence_memory(sentence: str, question_open: bool) -> CandidateMemory | None:
    """Classify one user sentence into a relationship memory; first match wins."""
    if _CONFLICT.search(sentence):
        return _relationship(f"User was upset with the persona: {_quoted(sentence)}", "emotion", 0.8)
    if _COME_BACK.search(sentence):
        return _relationship(f"User wants to come back to: {_quoted(sentence)}", "thread", 0.6)
    if _USER_PROMISE.search(sentence):
        return _relationship(f"User promised: {_quoted(sentence)}", "thread", 0.7)
    if _PLAN.search(sentence):
        return _relationship(f"Plan made together: {_quoted(sentence)}", "moment", 0.6)
    if _is_apology(sentence):
        return _relationship(f"User apologized: {_quoted(sentence)}", "emotion", 0.6)
    if question_open and _is_question(sentence) and len(sentence.split()) >= 4 and not _SMALL_TALK.match(sentence):
        return _relationship(f"Open question from User: {_quoted(sentence)}", "thread", 0.5)
    return None


def _laugh_topic(messages: Sequence[tuple[str, str, str]], index: int) -> tuple[str, list[str]] | None:
    """What the user laughed about: their laughing message without the laughter (if it still says
    something), else the last sentence of their previous message; plus the ids of the exchange."""
    message_id, _, content = messages[index]
    ids = [message_id]
    if index > 0 and messages[index - 1][1] == "assistant":
        ids.insert(0, messages[index - 1][0])
    rest = _collapse_whitespace(_LAUGHTER.sub(" ", content)).strip(" ,.!")
    if len(rest.split()) >= 3:
        return rest, ids
    for earlier_id, role, earlier_content in reversed(messages[:index]):
        if role == "user":
            sentences = split_sentences(earlier_content)
            return (sentences[-1], [earlier_id, *ids]) if sentences else None
    return None


def _question_left_open(messages: Sequence[tuple[str, str, str]], index: int) -> bool:
    """A user message's questions stay open if no assistant reply follows, or the reply defers."""
    following = next(((r, c) for _, r, c in messages[index + 1 :] if r in _ROLE_LABELS), None)
    return following is None or following[0] != "assistant" or bool(_DEFERRAL.search(following[1]))


def distill_transcript(
    messages: Sequence[tuple[str, str, str]],
) -> list[tuple[CandidateMemory, tuple[str, ...]]]:
    """Rule-based distillation of a transcript slice for the dreaming sweeper (spec).

    `messages` are (message_id, role, content) in order. Profile facts from the user's
    self-statements; relationship memories for plans made together ("let's…", moment), promises
    (thread), laughter (moment), conflicts and their repair by an apology from either side
    (emotion), and unresolved threads — user questions left unanswered or deferred, topics the
    user will come back to (thread). Returns (memory, source message ids) in first-occurrence
    order, exact normalized duplicates merged.
    """
    found: dict[str, tuple[CandidateMemory, list[str]]] = {}

    def add(candidate: CandidateMemory, ids: Sequence[str]) -> None:
        _, sources = found.setdefault(normalize_for_dedup(candidate.content), (candidate, []))
        sources.extend(i for i in ids if i not in sources)

    pending_conflict: tuple[str, str] | None = None  # (message id, sentence) awaiting an apology
    for index, (message_id, role, content) in enumerate(messages):
        if role not in _ROLE_LABELS:
            continue
        text = content.replace("’", "'")
        speaker = "User" if role == "user" else "the persona"
        if role == "user":
            for fact in extract_self_statements(text):
                add(fact, [message_id])
        question_open = role == "user" and _question_left_open(messages, index)
        for sentence in split_sentences(text):
            if pending_conflict is not None and _is_apology(sentence):
                conflict_id, conflict = pending_conflict
                repaired = f"Conflict repaired: after {_quoted(conflict)} {speaker} apologized"
                add(_relationship(repaired, "emotion", 0.7), [conflict_id, message_id])
                pending_conflict = None
            elif role == "assistant":
                if _PERSONA_PROMISE.search(sentence):
                    add(_relationship(f"Persona promised: {_quoted(sentence)}", "thread", 0.6), [message_id])
            else:
                if _CONFLICT.search(sentence):
                    pending_conflict = (message_id, sentence)
                memory = _user_sentence_memory(sentence, question_open)
                if memory is not None:
                    add(memory, [message_id])
        if role == "user" and _LAUGHTER.search(text):
            topic = _laugh_topic(messages, index)
            if topic is not None:
                add(_relationship(f"Shared a laugh: {_quoted(topic[0])}", "moment", 0.5), topic[1])
    return [(candidate, tuple(sources)) for candidate, sources in found.values()]


# --------------------------------------------------------------------------- branch visibility (issue 10)

EraseEffect = Literal["delete", "strip", "keep"]


def all_sources_hidden(sources: Iterable[str], hidden_messages: Set[str]) -> bool:
    """A memory is hidden (not recalled) when it has sources and every one is hidden in some session."""
    listed = list(sources)
    return bool(listed) and all(source in hidden_messages for source in listed)


def erase_effect(sources: Sequence[str], erased: Set[str]) -> EraseEffect:
    """What erasing messages does to a memory: deleted when every source is erased, stripped of the erased
    sources when only some are, kept as it is when none is."""
    cited = [source for source in sources if source in erased]
    if not cited:
        return "keep"
    return "delete" if len(cited) == len(sources) else "strip"
