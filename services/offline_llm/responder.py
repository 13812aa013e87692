"""The offline responder: a deterministic, persona-aware stand-in for a chat model.

With no API key Rapport still runs end to end against this responder, served over the same
OpenAI-compatible protocol (orchestrator.md "LLM client": deterministic, persona-aware, visibly uses
the recalled memories and the mood lines). It reads the system prompt Rapport assembles — persona
paragraph, identity line (`You are Mara, female, 34, INTJ. Local time for you: Tuesday 21:14.`),
bracketed sections (`[user_profile]`, `[shared_memories]`, `[session_summary]`, `[mood]`,
`[turn_style]`, `[now]`, …) and the rules with the length guidance — and writes a short plain-text
reply that answers the last user message, recalls one memory, takes its tone from the mood and
ends with a question when the mood is curious.

It speaks as whoever the system prompt says it is: the persona, or the character of an OpenAI
client's own card when that replaces the persona's prompt. The user's message is reacted to by
its topic ("Tell me more about this cat named Miso"), never echoed back whole, and the assistant's
own name in it ("Hey Kai, …") is never taken for the user's.

Pure: no I/O, no clock; every choice is seeded from a hash of the input.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

OFFLINE_MODEL_ID = "rapport-offline-responder"
MAX_REPLY_WORDS = 80
DEFAULT_SENTENCE_LIMIT = 3
COLD_SENTENCE_LIMIT = 2
KEY_PHRASE_MAX_WORDS = 12
MEMORY_MAX_WORDS = 20

Register = Literal["cold", "neutral", "warm"]

# --- reading the prompt -------------------------------------------------------------------------

_HEADER = re.compile(r"^\[([a-z0-9_]+)\](?:\s.*)?$")
_NAME = r"([A-Z][\w'-]*(?: [A-Z][\w'-]*)*)"
_IDENTITY_LINE = re.compile(rf"^You are {_NAME}\b.*(?:\d{{1,2}}:\d{{2}}|Local time)", re.MULTILINE)
_ANY_IDENTITY = re.compile(rf"\bYou are {_NAME}(?=[,.(]| \()")
# How a character text (a persona prompt, or an OpenAI client's own character card) names the
# character: "You are X, …", "Your name is X", SillyTavern's "Write X's next reply …", "X's persona:".
_CHARACTER_NAMING = (
    _ANY_IDENTITY,
    re.compile(rf"\b[Yy]our name is {_NAME}"),
    re.compile(rf"\bWrite {_NAME}'s next (?:reply|response|message)"),
    re.compile(rf"\b(?:[Rr]ole-?play as|[Pp]lay(?:ing)? the (?:role|part) of) {_NAME}"),
    re.compile(rf"^\[?{_NAME}'s (?:[Pp]ersona|[Pp]ersonality|[Dd]escription)\b", re.MULTILINE),
    re.compile(rf"^(?:[Nn]ame|[Cc]haracter|[Cc]har): {_NAME}\s*$", re.MULTILINE),
    re.compile(rf"\A\s*{_NAME} is (?:a|an|the)\b"),
)
_CLOCK = re.compile(r"\b(\d{1,2}):(\d{2})\b")
_WEEKDAY = re.compile(r"\b(Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)\b")
_NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7}
_EMPTY_LINE = re.compile(r"^\(?\s*(none|nothing|n/a|no \w+( yet)?|empty)\s*\)?\.?$", re.IGNORECASE)
_LABELS = ("romantic", "friend", "frenemy", "slow_burn", "stranger")


@dataclass(frozen=True)
class PromptBrief:
    """What the responder takes from Rapport's system prompt (orchestrator.md "Prompt assembly")."""

    persona_name: str | None  # who the reply speaks as
    local_time: str | None
    sections: Mapping[str, tuple[str, ...]]
    sentence_limit: int
    assistant_names: tuple[str, ...] = ()  # every name the prompt gives the assistant, longest first

    def lines(self, section: str) -> tuple[str, ...]:
        return self.sections.get(section, ())


def read_prompt_brief(system_text: str) -> PromptBrief:
    """Parse the persona name and local time (identity line, else `[now]`), the bracketed sections
    (`[name]` opening a line, body until the next header or a blank line) and the sentence-length
    guidance from a system prompt."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in system_text.splitlines():
        line = raw.strip()
        header = _HEADER.match(line)
        if header:
            current = sections.setdefault(header.group(1), [])
        elif not line:
            current = None
        elif current is not None and not _EMPTY_LINE.match(_strip_bullet(line)):
            current.append(line)
    identity = _IDENTITY_LINE.search(system_text)
    # Where the persona's local time is said: the identity line, else [now], else anywhere.
    places = [identity.group(0) if identity else "", "\n".join(sections.get("now", [])), system_text]
    weekday = next((m.group(1) for m in map(_WEEKDAY.search, places) if m), None)
    clock = next((m.group(0) for m in map(_CLOCK.search, places) if m), None)
    speaks_as, names = read_assistant_names(system_text)
    return PromptBrief(
        persona_name=speaks_as,
        local_time=" ".join(part for part in (weekday, clock) if part) or None,
        sections={name: tuple(body) for name, body in sections.items()},
        sentence_limit=read_sentence_limit(system_text),
        assistant_names=names,
    )


def read_assistant_names(system_text: str) -> tuple[str | None, tuple[str, ...]]:
    """(the name to speak as, every name the prompt gives the assistant, longest first).

    The character text comes first (orchestrator.md "Prompt assembly": persona prompt, then the
    identity line `You are Kai (man, 29). It is 21:14 …`). When it names the character as the
    identity line does ("You are Kai Nakamura-Reid, …" and "You are Kai"), the identity line's
    short name is used; when it names someone else — an OpenAI client's own character card in
    place of the persona's prompt — the reply speaks as the card's character."""
    identity = _IDENTITY_LINE.search(system_text)
    character_text = system_text[: identity.start()] if identity else system_text
    named = [m for m in (pattern.search(character_text) for pattern in _CHARACTER_NAMING) if m]
    character = min(named, key=lambda m: m.start()).group(1) if named else None
    identity_name = identity.group(1) if identity else None
    if character is None or (identity_name and _same_person(character, identity_name)):
        speaks_as = identity_name or character
    else:
        speaks_as = character
    full_names = {name for name in (character, identity_name) if name}
    names = full_names | {name.split()[0] for name in full_names}
    return speaks_as, tuple(sorted(names, key=lambda name: (-len(name), name)))


def _same_person(one: str, other: str) -> bool:
    return one.split()[0].casefold() == other.split()[0].casefold()


def read_sentence_limit(text: str) -> int:
    """Length guidance (affinity.md: "one or two sentences" / "up to three" / "up to five")."""
    lowered = text.lower()
    if re.search(r"\bone or two sentences\b", lowered):
        return 2
    bounded = re.search(r"\b(?:up to|at most|no more than)\s+(\w+)\s+sentences\b", lowered)
    if bounded:
        word = bounded.group(1)
        count = int(word) if word.isdigit() else _NUMBER_WORDS.get(word)
        if count:
            return max(1, min(count, 5))
    if re.search(r"\b(?:one|a single) sentence\b", lowered):
        return 1
    return DEFAULT_SENTENCE_LIMIT


@dataclass(frozen=True)
class Tone:
    """How the `[mood]` and `[turn_style]` lines say to sound (affinity.md attitude lines)."""

    register: Register
    curious: bool
    teasing: bool
    label: str | None


# Phrases of the affinity attitude lines and the PDE turn styles (a line may be just the word).
_COLD_MARKERS = (
    r"\bcold (?:toward|and short)\b|^cold$",
    r"\bbe cool\b",
    r"\bterse\b",
    r"\bdistant\b",
    r"\bkeeps? (?:your |their )?distance\b",
    r"\bnot (?:very )?interested\b|\buninterested\b",
)
_WARM_MARKERS = (
    r"\baffectionate\b",
    r"\bbe warm\b|^warm$",
    r"\bfriendly toward\b|^friendly$",
    r"\bshares? secrets\b",
    r"\binside jokes\b",
)


def read_tone(brief: PromptBrief) -> Tone:
    """Cold when cold markers outnumber warm ones, warm in the opposite case, else neutral;
    curious on "curious"/"asks back"; teasing on push-pull or a frenemy label."""
    lines = brief.lines("mood") + brief.lines("turn_style")
    text = "\n".join(_strip_bullet(line).rstrip(".") for line in lines).lower()
    cold = sum(bool(re.search(marker, text, re.MULTILINE)) for marker in _COLD_MARKERS)
    warm = sum(bool(re.search(marker, text, re.MULTILINE)) for marker in _WARM_MARKERS)
    stated = re.search(r"\brelationship(?: label)?:\s*([a-z_]+)", text)
    label = (
        stated.group(1)
        if stated and stated.group(1) in _LABELS
        else next((name for name in _LABELS if re.search(rf"\b{name.replace('_', '[_ -]')}\b", text)), None)
    )
    if label in ("romantic", "friend") and cold == 0:
        warm += 1
    register: Register = "cold" if cold > warm else "warm" if warm > cold else "neutral"
    return Tone(
        register=register,
        curious=bool(re.search(r"\bcurious\b|\basks? back\b", text)),
        teasing=bool(re.search(r"push[- ](?:and[- ])?pull", text)) or label == "frenemy",
        label=label,
    )


# --- talking about the user ---------------------------------------------------------------------

_REFLECT = {
    "i": "you",
    "me": "you",
    "my": "your",
    "mine": "yours",
    "myself": "yourself",
    "am": "are",
    "i'm": "you're",
    "i've": "you've",
    "i'll": "you'll",
    "i'd": "you'd",
    "your": "my",
    "yours": "mine",
    "yourself": "myself",
    "you're": "I'm",
    "you've": "I've",
    "you'll": "I'll",
    "you'd": "I'd",
}
_SUBJECT_CONTEXT = {
    "do",
    "did",
    "does",
    "can",
    "could",
    "will",
    "would",
    "should",
    "are",
    "were",
    "have",
    "has",
    "and",
    "but",
    "if",
    "when",
    "because",
    "so",
    "that",
    "as",
    "than",
}
_WORD_OR_GAP = re.compile(r"[A-Za-z']+|[^A-Za-z']+")


def reflect_pronouns(text: str) -> str:
    """Swap first and second person, ELIZA style: "I love my dog" → "you love your dog"."""
    tokens = _WORD_OR_GAP.findall(text)
    words = [index for index, token in enumerate(tokens) if token[0].isalpha() or token[0] == "'"]
    out = list(tokens)
    for position, index in enumerate(words):
        word = tokens[index].lower()
        before = tokens[words[position - 1]].lower() if position else None
        after = tokens[words[position + 1]].lower() if position + 1 < len(words) else None
        if word == "you":
            out[index] = "I" if before is None or before in _SUBJECT_CONTEXT else "me"
        elif word == "are" and "you" in (before, after):
            out[index] = "am"
        elif word == "was" and before == "i":
            out[index] = "were"
        elif word == "were" and "you" in (before, after):
            out[index] = "was"
        elif word in _REFLECT:
            out[index] = _REFLECT[word]
    return "".join(out)


_IRREGULAR = {
    "is": "are",
    "was": "were",
    "has": "have",
    "does": "do",
    "goes": "go",
    "doesn't": "don't",
    "isn't": "aren't",
    "wasn't": "weren't",
    "hasn't": "haven't",
}
_ADVERBS = {"always", "never", "often", "sometimes", "still", "also", "usually", "recently", "once", "just"}
_SUBJECTLESS_VERBS = {
    "lives",
    "works",
    "likes",
    "loves",
    "has",
    "is",
    "enjoys",
    "hates",
    "plays",
    "studies",
    "wants",
    "prefers",
    "owns",
    "goes",
    "speaks",
    "moved",
    "grew",
    "was",
}
_USER_POSSESSIVE = re.compile(r"\b(?:the user|user)'s\b", re.IGNORECASE)
_USER_SUBJECT = re.compile(r"\b(?:the user|user)\b", re.IGNORECASE)
_USER_AND_VERB = re.compile(
    r"\b(?:the user|user)\b(\s+(?:(?:\w+ly|" + "|".join(_ADVERBS) + r")\s+)*)([A-Za-z']+)", re.IGNORECASE
)
_PERSONA_POSSESSIVE = re.compile(r"\bthe persona's\b", re.IGNORECASE)
_PERSONA = re.compile(r"\bthe persona\b", re.IGNORECASE)
# Memory kinds written by the memory service's rule-based extraction (memory.md).
_MEMORY_PREFIXES = (
    (re.compile(r"^plan made together:\s*", re.IGNORECASE), "we made a plan: "),
    (re.compile(r"^open question from (?:the )?user:\s*", re.IGNORECASE), "you asked me "),
)
# `[user_profile]` lines rendered by insight ("- City: Lisbon"), by lower-cased label.
_PROFILE_PHRASES = {
    "city": "you live in {}",
    "location": "you live in {}",
    "lives in": "you live in {}",
    "hometown": "you're from {}",
    "interests": "you're into {}",
    "hobbies": "you're into {}",
    "occupation": "you work as {}",
    "job": "you work as {}",
}
_NEEDS_ARTICLE = {"occupation", "job"}


def _second_person_verb(word: str) -> str:
    lowered = word.lower()
    if lowered in _IRREGULAR:
        return _IRREGULAR[lowered]
    if lowered.endswith("ies") and len(lowered) > 4:
        return lowered[:-3] + "y"
    if re.search(r"(ss|sh|ch|x|z|o)es$", lowered):
        return lowered[:-2]
    if lowered.endswith("s") and not lowered.endswith("ss"):
        return lowered[:-1]
    return lowered


def _address_user(text: str) -> str:
    """Rewrite "the user lives" → "you live", "User's dog" → "your dog", "the persona" → "me"."""
    text = _USER_POSSESSIVE.sub("your", text)
    text = _USER_AND_VERB.sub(lambda m: "you" + m.group(1) + _second_person_verb(m.group(2)), text)
    text = _PERSONA.sub("me", _PERSONA_POSSESSIVE.sub("my", text))
    return _USER_SUBJECT.sub("you", text)


def memory_as_said_to_user(line: str) -> str:
    """A memory or profile line rephrased as something said to the user: "User lives in Lisbon
    (importance 0.8)" → "you live in Lisbon"; "- City: Lisbon" → "you live in Lisbon"."""
    text = _strip_metadata(_strip_bullet(line))
    for prefix, phrase in _MEMORY_PREFIXES:
        if prefix.match(text):
            return phrase + prefix.sub("", text)
    if _USER_SUBJECT.match(text):
        return _address_user(text)
    key_value = re.match(r"^([A-Za-z][\w ()]{0,40}):\s*(.+)$", text)
    if key_value:
        key = re.sub(r"\s*\(.*?\)", "", key_value.group(1)).strip().lower().replace("_", " ")
        value = key_value.group(2).strip()
        if key in _NEEDS_ARTICLE and not re.match(r"(?:an?|the|my|his|her)\s", value, re.IGNORECASE):
            value = ("an " if value[:1].lower() in "aeiou" else "a ") + value
        if key in _PROFILE_PHRASES:
            return _PROFILE_PHRASES[key].format(value)
        return f"your {key} {'are' if key.endswith('s') else 'is'} {value}"
    first, _, rest = text.partition(" ")
    tail = " " + rest if rest else ""
    if first.lower() in ("i", "i'm", "my", "i've"):
        return reflect_pronouns(text)
    if first.lower() in ("you", "your", "you're", "you've"):
        return first.lower() + tail
    if first.lower() in ("they", "their"):
        return ("you" if first.lower() == "they" else "your") + tail
    if first.lower() in _SUBJECTLESS_VERBS:
        return "you " + _second_person_verb(first) + tail
    if _FIRST_PERSON_WORD.search(text) and not re.search(r"[\"“”]", text):  # a moment in the user's own words
        return "that " + reflect_pronouns(_lower_function_word(text))
    return "that " + _lower_function_word(_address_user(text))


def _strip_bullet(line: str) -> str:
    return re.sub(r"^\s*(?:[-*•]+|\d+[.)])\s*", "", line).strip()


def _strip_metadata(text: str) -> str:
    """Drop a leading date ("2024-05-01: ", or "(today) " / "(on Monday, 3 days ago) " as the orchestrator
    places a memory in time), trailing "(importance 0.8)" / "[fact]" annotations and end punctuation."""
    text = re.sub(r"^\d{4}-\d{2}-\d{2}(?:[T ][\d:]+)?[:\s-]+", "", text)
    text = re.sub(r"^\((?:today|yesterday|tomorrow|on [^()]+)\)\s+", "", text)
    while True:
        trimmed = re.sub(r"\s*[(\[][^()\[\]]*[)\]]\s*$", "", text)
        if trimmed == text:
            break
        text = trimmed
    return text.rstrip(" .!;:")


# What the persona itself said, as memory attributes it ('Kai told you: "…"'): nothing to tell the user back
_PERSONA_SAID = re.compile(r"^[^:\"]{1,40} (?:told you|promised you|recommended|made a plan with you): ")
_FIRST_PERSON_WORD = re.compile(r"\b(?:I|I'm|I've|I'd|I'll|my|me|mine|myself)\b", re.IGNORECASE)


# Words a sentence often starts with, lowered to go inside another ("that work was long"); any other
# capital, a name's, is kept
_COMMON_STARTERS = frozenset(
    "a an the this that these those it its there here so and but then after before when while finally "
    "honestly actually just also still maybe today tonight yesterday tomorrow everything nothing work school "
    "dinner lunch breakfast we our us they their he she his her".split()
)


def _lower_function_word(text: str) -> str:
    """ "The old maps" / "Work was long" → lowered first word, to follow "that" or go inside a sentence;
    "Marta called" keeps its capital."""
    first = text.split(" ", 1)[0]
    if first[:1].isupper() and first.lower().rstrip(",") in _COMMON_STARTERS:
        return first.lower() + text[len(first) :]
    return text


def _cap_words(text: str, limit: int) -> str:
    words = text.split()
    if len(words) <= limit:
        return text
    clause = re.split(r"[,;:—]", text, maxsplit=1)[0].strip()
    return clause if 0 < len(clause.split()) <= limit else " ".join(words[:limit])


# --- composing the reply --------------------------------------------------------------------------

Intent = Literal["remember", "name", "how_are_you", "time", "greeting", "question", "statement", "silent"]


_GREETING_WORDS = r"(?:hi|hello|hey|hiya|yo|good (?:morning|afternoon|evening))"
_LEADING_GREETING = re.compile(rf"^\s*{_GREETING_WORDS}\b[\s,!.]*", re.IGNORECASE)


def read_intent(message: str) -> Intent:
    """What the last user message asks for, by simple patterns."""
    lowered = message.lower().strip()
    if not lowered:
        return "silent"
    if re.search(r"\bremember\b|\bwhat do you know about me\b|\brecall\b", lowered):
        return "remember"
    if re.search(r"\bwhat'?s your name\b|\bwhat is your name\b|\bwho are you\b", lowered):
        return "name"
    if re.search(r"\bhow are you\b|\bhow'?s it going\b|\bhow have you been\b|\bhow do you feel\b", lowered):
        return "how_are_you"
    if re.search(r"\bwhat time\b|\bwhat day is it\b", lowered):
        return "time"
    if _LEADING_GREETING.match(lowered) and len(lowered.split()) <= 4:
        return "greeting"
    return "question" if lowered.endswith("?") else "statement"


def without_vocatives(message: str, names: Sequence[str]) -> str:
    """The message without the assistant's name where the user addresses it ("Hey Kai, …",
    "Kai, …", "…, Kai?"); any other mention of the name becomes "you", which reflecting the
    pronouns turns into "me". So the persona's name is never taken for the user's. `names`
    longest first ("Kai Nakamura-Reid" before "Kai")."""
    text = message
    for name in names:
        escaped = re.escape(name)
        addressed = (
            rf"^(\s*(?:{_GREETING_WORDS}\b[\s,]*)?){escaped}\b[\s,:;!.-]*",  # "Hey Kai, …", "Kai: …"
            rf"\b({_GREETING_WORDS})\s+{escaped}\b",  # "… oh hi Kai …"
            rf"(),\s*{escaped}\s*(?=[,.!?]|$)",  # "…, Kai?" / "…, Kai, …"
        )
        for pattern in addressed:
            text = re.sub(pattern, r"\1", text, flags=re.IGNORECASE)
        text = re.sub(rf"\b{escaped}'s\b", "your", text)
        text = re.sub(rf"\b{escaped}\b", "you", text)
    return text.strip()


def persona_as_me(text: str, names: Sequence[str]) -> str:
    """A line about the persona said by the persona: "User told Kai about Miso" → "… told me …",
    "Kai's shrimp" → "my shrimp", "Kai promised …" → "I promised …"."""
    for name in names:
        escaped = re.escape(name)
        text = re.sub(rf"\b{escaped}'s\b", "my", text)
        text = re.sub(rf"(^|[.!?;]\s+|\band\s+){escaped}\b", r"\1I", text)
        text = re.sub(rf"\b{escaped}\b", "me", text)
    return text


_DETERMINERS = {"a", "an", "the", "your", "my", "his", "her", "their", "our", "this", "these", "those", "some"}
_PREPOSITIONS = {
    "at", "in", "on", "to", "from", "with", "about", "for", "into", "near", "after", "before", "around", "of",
    "by", "over", "under", "through",
}  # fmt: skip
_PHRASE_STOPS = _PREPOSITIONS | {
    "and", "but", "or", "because", "so", "which", "who", "that", "when", "while", "since", "though", "although",
    "if", "than", "then", "it", "them", "him", "me", "you", "i", "us", "we", "they", "she", "he", "is", "are",
    "was", "were", "am", "be", "been", "has", "have", "had", "do", "does", "did", "will", "would", "can",
    "could", "should", "just", "really", "very", "too", "also", "not", "no", "yes", "what", "why", "how",
    "where", "there", "here", "something", "anything", "everything", "nothing", "all", "like", "love", "want",
    "think", "know", "feel", "need", "see", "get", "got", "go", "went", "make", "made", "say", "said", "tell",
    "told", "live", "work", "keep", "keeps", "today", "tonight", "yesterday", "now",
}  # fmt: skip
_NAMING_WORDS = {"named", "called"}
_SELF = {"I", "I'm", "I've", "I'll", "I'd"}
TOPIC_MAX_WORDS = 6
_TOKEN = re.compile(r"[\w'-]+|[^\w\s]")


def topic_of(sentence: str) -> str | None:
    """What a (pronoun-reflected) sentence is about, as a short phrase, or None: a named thing
    ("a cat named Miso"), else a proper noun ("Porto"), else the first determiner phrase
    ("the old maps"), else the object of the last preposition ("work number 3"), else its last
    content words ("cats" of "do I like cats"). Never the whole sentence."""
    tokens = _TOKEN.findall(sentence)
    words = [token for token in tokens if token[0].isalnum()]
    candidates = (_named_thing(tokens), _proper_noun(tokens), _determiner_phrase(tokens), _object_of_preposition(tokens),
                  _last_content_words(tokens))  # fmt: skip
    topic = next((phrase for phrase in candidates if phrase), None)
    if topic is None or len(topic.split()) >= len(words):
        return None
    return " ".join(topic.split()[:TOPIC_MAX_WORDS])


def _is_word(token: str) -> bool:
    return token[0].isalnum() or token[0] == "'"


def _phrase_from(tokens: list[str], start: int, max_words: int) -> list[str]:
    """Words from `start` until punctuation, a function word or `max_words`; a following
    "named X" / "called X Y" is kept whole."""
    phrase: list[str] = []
    index = start
    while index < len(tokens) and len(phrase) < max_words:
        token = tokens[index]
        if not _is_word(token) or token.lower() in _PHRASE_STOPS:
            break
        phrase.append(token)
        index += 1
        if token.lower() in _NAMING_WORDS:
            while index < len(tokens) and tokens[index][:1].isupper() and tokens[index] not in _SELF:
                phrase.append(tokens[index])
                index += 1
            break
    return phrase


def _named_thing(tokens: list[str]) -> str | None:
    for index, token in enumerate(tokens):
        if token.lower() in _DETERMINERS:
            phrase = _phrase_from(tokens, index + 1, 3)
            if phrase and phrase[-1][:1].isupper() and any(word.lower() in _NAMING_WORDS for word in phrase):
                return " ".join([token, *phrase])
    return None


def _proper_noun(tokens: list[str]) -> str | None:
    run: list[str] = []
    for index, token in enumerate(tokens):
        sentence_start = index == 0 or tokens[index - 1] in (".", "!", "?")
        if _is_word(token) and token[:1].isupper() and token not in _SELF and not sentence_start:
            run.append(token)
        elif run:
            break
    return " ".join(run) or None


def _determiner_phrase(tokens: list[str]) -> str | None:
    for index, token in enumerate(tokens):
        if token.lower() in _DETERMINERS and (phrase := _phrase_from(tokens, index + 1, 2)):
            return " ".join([token, *phrase])
    return None


def _object_of_preposition(tokens: list[str]) -> str | None:
    for index in range(len(tokens) - 1, -1, -1):
        if tokens[index].lower() in _PREPOSITIONS and (phrase := _phrase_from(tokens, index + 1, 3)):
            return " ".join(phrase)
    return None


def _last_content_words(tokens: list[str]) -> str | None:
    phrase: list[str] = []
    for token in reversed([token for token in tokens if _is_word(token)]):
        if token.lower() in _PHRASE_STOPS or token.lower() in _DETERMINERS or len(phrase) == 3:
            break
        phrase.insert(0, token)
    return " ".join(phrase) or None


def key_phrase(message: str) -> str:
    """The longest sentence of the message, unformatted, capped at KEY_PHRASE_MAX_WORDS words."""
    plain = re.sub(r"[*_`#>]", "", message)
    sentences = [part.strip() for part in re.split(r"(?<=[.!?])\s+|\n+", plain) if part.strip()]
    longest = max(sentences, key=lambda sentence: len(sentence.split()), default="")
    return _cap_words(longest.rstrip(" .!?,;:"), KEY_PHRASE_MAX_WORDS)


def _daypart(local_time: str | None) -> str:
    clock = _CLOCK.search(local_time or "")
    if clock is None:
        return "today"
    hour = int(clock.group(1))
    return "this morning" if 5 <= hour < 12 else "this afternoon" if hour < 18 else "tonight"


def _weekday(local_time: str | None) -> str:
    day = _WEEKDAY.search(local_time or "")
    return day.group(1) if day else "day"


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[0].upper() + text[1:] if text else text
    return text if text[-1:] in ".?!" else text + "."


@dataclass(frozen=True)
class _Turn:
    brief: PromptBrief
    tone: Tone
    intent: Intent
    message: str  # as the user wrote it, minus the assistant's name where the user addressed it
    memories: tuple[str, ...]
    rng: random.Random

    @property
    def greeted(self) -> bool:
        return bool(_LEADING_GREETING.match(self.message))

    @property
    def topic(self) -> str | None:
        """What the message is about, pronouns reflected ("my cat" → "your cat")."""
        return topic_of(reflect_pronouns(key_phrase(_LEADING_GREETING.sub("", self.message))))

    def said_to_user(self, line: str) -> str:
        return persona_as_me(memory_as_said_to_user(line), self.brief.assistant_names)

    def pick(self, options: Sequence[str]) -> str:
        return options[self.rng.randrange(len(options))]


def _opening(turn: _Turn) -> str:
    """The answer to the user's last message."""
    tone, brief, register = turn.tone, turn.brief, turn.tone.register
    name = brief.persona_name
    day, daypart = _weekday(brief.local_time), _daypart(brief.local_time)
    if turn.intent == "remember":
        said = [turn.said_to_user(line) for line in turn.memories[: 1 if register == "cold" else 3]]
        if not said:
            return "Not much yet, you'll have to tell me more about you" if register != "cold" else "Not much"
        listed = said[0] if len(said) == 1 else ", ".join(said[:-1]) + ", and " + said[-1]
        return f"I remember {listed}"
    if turn.intent == "name":
        if name is None:
            return "I'm Rapport's offline responder, nobody in particular"
        return {"cold": f"{name}", "neutral": f"I'm {name}", "warm": f"I'm {name}, glad you asked"}[register]
    if turn.intent == "how_are_you":
        if tone.teasing:
            return "Depends who's asking"
        return {
            "cold": "Fine",
            "neutral": f"I'm alright, it's a quiet {day} {daypart} here",
            "warm": f"I'm good, better now that you're here, it's a slow {day} {daypart} for me",
        }[register]
    if turn.intent == "time":
        return f"It's {brief.local_time} here" if brief.local_time else "I honestly lost track of time"
    if turn.intent == "greeting":
        if tone.teasing:
            return "Oh, it's you again"
        who = f", {name} here" if name else ""
        warm = "Hey, you, it's good to hear from you"
        return {"cold": "Hi", "neutral": f"Hello{who}", "warm": warm}[register]
    if turn.intent == "silent":
        return "I'm here"
    return _reaction(turn)


def _reaction(turn: _Turn) -> str:
    """A reaction to what the message is about (its topic), not a restatement of it: "Tell me more
    about this cat named Miso", "Cats, let me think about that"."""
    topic, register = turn.topic, turn.tone.register
    mood = "teasing" if turn.tone.teasing else register
    if turn.intent == "question":
        reaction = {
            "teasing": "wouldn't you like to know",
            "cold": "hardly matters",
            "neutral": "let me think about that" if topic else "good question, let me think about that",
            "warm": "I love that you asked",
        }[mood]
        return f"{topic}, {reaction}" if topic else reaction
    if topic is None:
        reaction = {"teasing": "is that so", "cold": "noted", "neutral": "I hear you",
                    "warm": "thank you for telling me that"}[mood]  # fmt: skip
    else:
        this_topic = re.sub(r"^an? ", "this ", _lower_determiner(topic), flags=re.IGNORECASE)
        reaction = {
            "teasing": f"{topic}, huh",
            "cold": f"{topic}, noted",
            "neutral": f"tell me more about {this_topic}",
            "warm": f"{topic}, thank you for telling me that",
        }[mood]
    greeting = {"neutral": "Hi", "warm": "Hey, you"}.get(mood) if turn.greeted else None
    if greeting is None:
        return f"Oh, {_lower_determiner(reaction)}" if mood == "warm" and topic else reaction
    return f"{greeting}, {_lower_determiner(reaction)}"


def _lower_determiner(text: str) -> str:
    """ "The old maps" → "the old maps" (to go inside a sentence); "Porto" stays."""
    first = text.split(" ", 1)[0]
    return first.lower() + text[len(first) :] if first.lower() in _DETERMINERS else text


def _memory_sentence(turn: _Turn) -> str | None:
    """One recalled memory, the one sharing most words with the message (ties seeded)."""
    if not turn.memories or turn.intent == "remember":
        return None
    wanted = _content_words(turn.message)
    best = max(len(wanted & _content_words(line)) for line in turn.memories)
    chosen = turn.pick([line for line in turn.memories if len(wanted & _content_words(line)) == best])
    said = _cap_words(turn.said_to_user(chosen), MEMORY_MAX_WORDS)
    templates = {
        "cold": (f"You said {said}",),
        "neutral": (f"You told me {said}", f"You mentioned {said}"),
        "warm": (f"I remember {said}", f"You told me {said}, and I haven't forgotten"),
    }[turn.tone.register]
    return turn.pick(templates)


def _summary_sentence(turn: _Turn) -> str | None:
    lines = turn.brief.lines("session_summary")
    if not lines or turn.tone.register == "cold":
        return None
    said_by_user = [line for line in lines if re.match(r"^(?:- )?user:\s", line, re.IGNORECASE)]
    if said_by_user:  # an extractive summary: "User: …" / "Assistant: …" lines
        first = reflect_pronouns(re.split(r"(?<=[.!?])\s+", said_by_user[0].split(":", 1)[1].strip())[0])
    else:
        first = re.split(r"(?<=[.!?])\s+", _strip_bullet(lines[0]))[0]
    for name in map(re.escape, turn.brief.assistant_names):  # the summary names the persona in the third person
        first = re.sub(rf"\b{name}'s\b", "my", re.sub(rf"\b{name}\b(?!')", "I", first))
    summary = _cap_words(_lower_function_word(_address_user(first)).rstrip(" .!?"), MEMORY_MAX_WORDS)
    return f"I keep thinking about what we covered earlier: {summary}"


_LABEL_LINES = {
    "romantic": "I like this, you and me talking like this",
    "friend": "It's good to talk to you",
    "slow_burn": "You're still a bit of a puzzle to me",
    "frenemy": "Don't think this means I like you",
    "stranger": "I don't know you that well yet",
}


def _question(turn: _Turn) -> str:
    daypart = _daypart(turn.brief.local_time)
    by_intent = {
        "greeting": ("How has your day been?", f"What are you up to {daypart}?"),
        "how_are_you": ("And you, how are you really?",),
        "name": ("What should I call you?",),
        "remember": ("What did I miss?", "What else should I know about you?"),
        "time": (f"Why, do you have plans {daypart}?",),
    }
    if turn.tone.teasing:
        return "Are you going to make me ask twice?"
    return turn.pick(
        by_intent.get(
            turn.intent,
            (
                "What happened next?",
                "How did that feel?",
                "What made you think of that?",
                f"What's on your mind {daypart}?",
            ),
        )
    )


_STOPWORDS = {
    "the",
    "and",
    "you",
    "your",
    "user",
    "that",
    "this",
    "with",
    "have",
    "was",
    "are",
    "for",
    "but",
    "not",
    "what",
    "about",
    "how",
    "they",
    "their",
    "had",
    "has",
    "just",
    "from",
}


def _content_words(text: str) -> set[str]:
    """Lower-cased words of three letters or more, minus stopwords, plural/verb "s" dropped."""
    words = re.findall(r"[a-z]+", text.lower())
    return {word.removesuffix("s") for word in words if len(word) >= 3 and word not in _STOPWORDS}


def compose_reply(messages: list[dict[str, Any]], model: str) -> str:
    """Reply in character to the last user message: answer it, recall one memory, take the tone
    from `[mood]`/`[turn_style]`, respect the sentence guidance (cold → at most two), end with a
    question when curious, stay under MAX_REPLY_WORDS. Same input → same output."""
    system = "\n\n".join(message_text(m) for m in messages if m.get("role") in ("system", "developer"))
    brief = read_prompt_brief(system)
    tone = read_tone(brief)
    last_user = next((message_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
    memories = tuple(
        line
        for line in brief.lines("shared_memories") + brief.lines("user_profile")
        if not re.match(r"^(training[ _]level|confidence)\b", _strip_bullet(line), re.IGNORECASE)
        and not _PERSONA_SAID.match(_strip_metadata(_strip_bullet(line)))
    )
    rng = random.Random(_seed(messages, model))
    message = without_vocatives(last_user, brief.assistant_names)
    turn = _Turn(brief, tone, read_intent(message), message, memories, rng)

    limit = brief.sentence_limit
    if tone.register == "cold":
        limit = min(limit, COLD_SENTENCE_LIMIT)
    opening = _sentence(_opening(turn))
    memory = _optional_sentence(_memory_sentence(turn))
    question = _optional_sentence(_question(turn) if tone.curious else None)
    flourish = None
    if tone.teasing and not tone.curious:
        flourish = "Don't get used to me being this nice"
    elif tone.label and tone.register != "cold":
        flourish = _LABEL_LINES[tone.label]
    flourish, summary = _optional_sentence(flourish), _optional_sentence(_summary_sentence(turn))
    kept = _fit_to_limits([opening, memory, question, flourish, summary], limit)
    if question is not None and question not in kept:
        if memory is not None and memory in kept:  # no room for a question: ask about the memory
            kept.remove(memory)
            memory = memory.rstrip(".!") + ", right?"
            kept.append(memory)
        else:
            kept.append(question)
    reply = " ".join(s for s in (opening, memory, summary, flourish, question) if s in kept)
    reply = re.sub(r"[*`#]", "", reply)  # plain text, whatever the memories were written in
    if tone.register == "cold":
        reply = reply.replace("!", ".")
    return " ".join(reply.split()[:MAX_REPLY_WORDS])


def _fit_to_limits(by_priority: list[str | None], limit: int) -> list[str]:
    """The first piece (the answer) always, then the others in priority order while they fit the
    sentence limit and MAX_REPLY_WORDS."""
    kept: list[str] = []
    for piece in by_priority:
        if piece is None:
            continue
        sentences = sum(_sentence_count(s) for s in kept) + _sentence_count(piece)
        words = sum(len(s.split()) for s in kept) + len(piece.split())
        if not kept or (sentences <= limit and words <= MAX_REPLY_WORDS):
            kept.append(piece)
    return kept


def _optional_sentence(text: str | None) -> str | None:
    return None if text is None else _sentence(text)


def _sentence_count(text: str) -> int:
    return max(1, len(re.findall(r"[.!?]+(?=\s|$)", text)))


# --- JSON tasks -----------------------------------------------------------------------------------

_JSON_REQUEST = re.compile(r"strict json|respond with json|json only|return json|valid json", re.IGNORECASE)


def asks_for_json(messages: list[dict[str, Any]]) -> bool:
    """True when a system or user message asks for strict JSON output."""
    prompts = (message_text(m) for m in messages if m.get("role") in ("system", "developer", "user"))
    return any(_JSON_REQUEST.search(text) for text in prompts)


def compose_json_reply(messages: list[dict[str, Any]], response_format: Mapping[str, Any] | None = None) -> str:
    """Valid JSON: for `response_format` json_schema, the simplest instance of the schema (`schema_instance`);
    else `{}`. A meaningful answer to an arbitrary caller schema cannot be produced generically; offline
    tasks (PDE judge, extraction, summaries) take their rule-based paths and never call the responder for
    JSON. This exists so the endpoint answers such a request with JSON a parser and validator accept."""
    del messages
    response_format = response_format or {}
    if response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if isinstance(schema, Mapping):
            return json.dumps(schema_instance(schema, schema), ensure_ascii=False)
    return "{}"


SCHEMA_MAX_DEPTH = 12
_FORMAT_EXAMPLES = {"date": "1970-01-01", "date-time": "1970-01-01T00:00:00Z", "time": "00:00:00", "email": "a@b.co",
                    "uri": "https://example.com", "uuid": "00000000-0000-0000-0000-000000000000"}  # fmt: skip


def schema_instance(schema: Mapping[str, Any], root: Mapping[str, Any], depth: int = 0) -> Any:
    """The simplest value a JSON schema accepts: const, first enum value, default, first of anyOf/oneOf,
    objects with their required properties, arrays of `minItems` items, the smallest allowed number,
    strings of `minLength` (or an example of their `format`). Local `$ref`s ("#/$defs/…") are followed."""
    if depth > SCHEMA_MAX_DEPTH:
        return None
    if "$ref" in schema:
        target: Any = root
        for part in str(schema["$ref"]).lstrip("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, Mapping) and part else target
        return schema_instance(target if isinstance(target, Mapping) else {}, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            merged = {k: v for k, v in schema.items() if k != key}
            return schema_instance({**merged, **options[0]}, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((t for t in kind if t != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "null"
    if kind == "object":
        properties = schema.get("properties") or {}
        return {
            name: schema_instance(properties.get(name) or {}, root, depth + 1) for name in schema.get("required") or []
        }
    if kind == "array":
        items: Mapping[str, Any] = schema["items"] if isinstance(schema.get("items"), Mapping) else {}
        return [schema_instance(items, root, depth + 1) for _ in range(int(schema.get("minItems") or 0))]
    if kind in ("integer", "number"):
        return _smallest_number(schema, integer=kind == "integer")
    if kind == "string":
        example = _FORMAT_EXAMPLES.get(str(schema.get("format")), "")
        return example or "x" * int(schema.get("minLength") or 0)
    if kind == "boolean":
        return False
    return None


def _smallest_number(schema: Mapping[str, Any], *, integer: bool) -> int | float:
    step = 1 if integer else 1e-6
    value: int | float
    if schema.get("minimum") is not None:
        value = schema["minimum"]
    elif schema.get("exclusiveMinimum") is not None:
        value = schema["exclusiveMinimum"] + step
    elif schema.get("maximum") is not None:
        value = min(0, schema["maximum"])
    elif schema.get("exclusiveMaximum") is not None:
        value = min(0, schema["exclusiveMaximum"] - step)
    else:
        value = 0
    return math.ceil(value) if integer else value


def message_text(message: Mapping[str, Any]) -> str:
    """The text of an OpenAI chat message whose content is a string, a list of parts, or null."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _seed(messages: list[dict[str, Any]], model: str) -> int:
    digest = hashlib.sha256(json.dumps([messages, model], sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "big")
