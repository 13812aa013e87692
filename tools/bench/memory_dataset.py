"""The generated multi-session dataset of `rapport bench memory` (no download).

Each conversation is one user with one persona over simulated weeks (sessions days apart, ending
yesterday), dated relative to the day of the run: the user states facts about themselves, their
people and pets, their week (activities on dated days, said the way people say them: "yesterday",
"on Saturday", "last weekend"), changes ("I moved to …"), and small talk; the persona answers with
reactions and questions and, now and then, tells about itself, recommends, promises. Questions come
later, in a new session, paraphrased, in four categories, each with the ids of the messages that hold
the evidence:

- single_hop: one statement of the user ("What do I do for a living?");
- multi_hop: two statements from different sessions ("Where does my sister live now?": the sister's
  name in one, her move in another);
- temporal: what happened on a day or period ("What did I do last weekend?");
- persona: what the persona said about itself or promised ("Which book did you recommend me?").

Two splits are generated differently — other names, places and activities, other phrasings of every
statement and question, other session shapes: `tune` (the one looked at while building) and
`heldout` (only scored, never tuned on).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

CATEGORIES = ("single_hop", "multi_hop", "temporal", "persona")


@dataclass(frozen=True)
class Message:
    id: str
    role: str  # user | assistant
    text: str
    at: datetime


@dataclass(frozen=True)
class Turn:
    user: Message
    reply: Message


@dataclass
class Session:
    id: str
    day: date
    turns: list[Turn] = field(default_factory=list)


@dataclass(frozen=True)
class Question:
    id: str
    category: str
    text: str
    gold: tuple[str, ...]  # evidence message ids
    recent_turns: tuple[str, ...] = ()


@dataclass
class Conversation:
    user_id: str
    instance_id: str
    persona_name: str
    sessions: list[Session]
    questions: list[Question]

    def messages(self) -> list[Message]:
        return [m for s in self.sessions for t in s.turns for m in (t.user, t.reply)]


@dataclass
class Dataset:
    split: str
    today: date
    conversations: list[Conversation]

    @property
    def questions(self) -> list[Question]:
        return [q for c in self.conversations for q in c.questions]


# --------------------------------------------------------------------------- vocabularies per split

POOLS: dict[str, dict[str, list]] = {
    "tune": {
        "names": ["Sam", "Marta", "Leo", "Nadia", "Tom", "Clara", "Ravi", "Sofia", "Ben", "Maya"],
        "cities": ["Lisbon", "Porto", "Madrid", "Berlin", "Dublin", "Lyon", "Bristol", "Seville"],
        "jobs": [
            ("ER nurse", "the city hospital"),
            ("software developer", "a small fintech"),
            ("primary school teacher", "a public school"),
            ("pharmacist", "a pharmacy downtown"),
            ("architect", "a studio near the river"),
            ("physiotherapist", "a sports clinic"),
            ("chef", "a seafood restaurant"),
            ("accountant", "an insurance firm"),
        ],
        "relatives": ["sister", "brother", "cousin"],
        "relative_names": ["Ana", "Joana", "Rui", "Tiago", "Ines", "Pedro", "Lara", "Hugo"],
        "relative_jobs": ["vet", "pilot", "lawyer", "dentist", "photographer", "engineer"],
        "friends": ["Rita", "Bruno", "Carla", "Duarte", "Vera", "Miguel"],
        "pets": [("cat", "Miso"), ("dog", "Biscuit"), ("cat", "Pixel"), ("dog", "Bolt"), ("parrot", "Kiwi")],
        "hobbies": [
            ("hiking", "Sintra"),
            ("surfing", "Ericeira"),
            ("climbing", "the local gym"),
            ("cycling", "the coast"),
        ],
        "instruments": ["cello", "jazz piano", "ukulele", "violin"],
        "allergies": ["peanuts", "shellfish", "cats", "penicillin"],
        "dislikes": ["coriander", "olives", "mushrooms", "licorice"],
        "activities": [
            "went to a pottery class",
            "saw a jazz concert at the old theatre",
            "had a job interview",
            "cooked a huge paella for my neighbours",
            "ran my first 10k race",
            "went to the dentist",
            "helped a friend move flat",
            "went to a wine tasting",
            "visited the aquarium",
            "spent the whole day at the beach",
        ],
        "personas": ["Elena", "Kai", "Ines"],
        "persona_homes": ["a fishing village in Galicia", "a tiny island in the Azores", "the hills above Naples"],
        "persona_relatives": [
            ("brother", "Pablo", "fisherman"),
            ("sister", "Lucia", "midwife"),
            ("brother", "Marco", "baker"),
        ],
        "persona_instruments": ["the accordion", "the harp", "the double bass"],
        "books": ["Piranesi", "The Remains of the Day", "Stoner", "A Gentleman in Moscow"],
        "films": ["Paterson", "Amelie", "Spirited Away", "Before Sunrise"],
    },
    "heldout": {
        "names": ["Jess", "Omar", "Priya", "Lukas", "Hana", "Diego", "Freya", "Kofi", "Yara", "Max"],
        "cities": ["Amsterdam", "Valencia", "Glasgow", "Milan", "Vienna", "Krakow", "Ghent", "Bologna"],
        "jobs": [
            ("paramedic", "the ambulance service"),
            ("data analyst", "a logistics company"),
            ("high school history teacher", "a grammar school"),
            ("graphic designer", "an agency"),
            ("electrician", "a building contractor"),
            ("midwife", "the maternity ward"),
            ("barista", "a coffee roastery"),
            ("civil engineer", "the metro project"),
        ],
        "relatives": ["sister", "brother", "cousin"],
        "relative_names": ["Emma", "Noor", "Felix", "Jonas", "Amara", "Niko", "Leila", "Sven"],
        "relative_jobs": ["firefighter", "nurse", "journalist", "pharmacist", "carpenter", "researcher"],
        "friends": ["Zoe", "Aziz", "Greta", "Mateo", "Ines", "Tariq"],
        "pets": [("dog", "Pepper"), ("cat", "Noodle"), ("rabbit", "Clover"), ("dog", "Ziggy"), ("cat", "Luna")],
        "hobbies": [
            ("bouldering", "the climbing hall"),
            ("kayaking", "the canal"),
            ("trail running", "the forest park"),
            ("sailing", "the lake"),
        ],
        "instruments": ["guitar", "drums", "saxophone", "flute"],
        "allergies": ["wheat", "eggs", "dust", "bee stings"],
        "dislikes": ["blue cheese", "pickles", "anchovies", "raisins"],
        "activities": [
            "went to a board game night",
            "watched the football final at a pub",
            "had my driving test",
            "baked bread for the first time",
            "did a charity swim",
            "got my hair cut really short",
            "went to an open-air cinema",
            "repainted the kitchen",
            "went to a flea market",
            "took a cooking class",
        ],
        "personas": ["Elena", "Kai", "Ines"],
        "persona_homes": [
            "a vineyard town in the Douro valley",
            "a harbour city in Norway",
            "a mountain village in Slovenia",
        ],
        "persona_relatives": [
            ("sister", "Marisol", "glassblower"),
            ("brother", "Henrik", "ferry captain"),
            ("sister", "Tanja", "beekeeper"),
        ],
        "persona_instruments": ["the cello", "the mandolin", "the clarinet"],
        "books": ["Klara and the Sun", "The Overstory", "Convenience Store Woman", "The Little Prince"],
        "films": ["Roma", "Past Lives", "Perfect Days", "The Intouchables"],
    },
}

# Phrasings per split: a statement's templates and its question's paraphrases differ between splits.
PHRASES: dict[str, dict[str, list[str]]] = {
    "tune": {
        "name": ["Hi! I'm {name}.", "Hey there, my name is {name}."],
        "job": ["I work night shifts as {a_job} at {work} in {city}.", "I work as {a_job} at {work}."],
        "city": ["I live in {city}, close to the river.", "I've lived in {city} for six years now."],
        "pet": ["My {species} is called {pet}.", "I have a {species} named {pet}, such a little menace."],
        "relative": ["My {rel} {relname} is a {reljob}.", "My {rel} {relname} works as a {reljob}."],
        "relative_move": ["{relname} just moved to {relcity} for work!", "Big news: {relname} is moving to {relcity}."],
        "friend": [
            "My friend {friend} is getting married in June.",
            "{friend}, my best friend, is getting married this summer.",
        ],
        "friend_job": ["{friend} is a {fjob}, she's always so busy.", "{friend} works as a {fjob} now."],
        "hobby": [
            "Weekends are for {hobby} in {place} and playing {instrument}.",
            "I love {hobby}, usually in {place}.",
        ],
        "instrument": [
            "I've been learning the {instrument} since January.",
            "I started {instrument} lessons this year.",
        ],
        "allergy": ["I'm allergic to {allergy}.", "I have to be careful, I'm allergic to {allergy}."],
        "dislike": ["I can't stand {dislike}.", "I really hate {dislike}, it ruins any dish."],
        "moved": ["I moved to {newcity} last month!", "So I finally moved to {newcity}."],
        "event_yesterday": ["Yesterday I {activity}.", "I {activity} yesterday, it was great."],
        "event_weekday": ["On {weekday} I {activity}.", "Last {weekday} I {activity}."],
        "event_today": ["This morning I {activity}.", "Today I {activity}!"],
        "ask_home": ["Where did you grow up?", "Tell me where you're from."],
        "ask_family": ["Do you have any siblings?", "Tell me about your family."],
        "ask_relax": ["What do you do to relax?", "Do you play any music?"],
        "ask_book": ["Any book recommendations?", "I need something good to read."],
        "exam": ["I have my {exam} exam next week, I'm nervous.", "My {exam} exam is coming up soon."],
        "plan": ["Let's watch {film} together on Friday.", "We should watch {film} together this weekend."],
        "filler": [
            "hey!",
            "how are you today?",
            "haha yes",
            "Work was long today.",
            "Traffic was awful this morning.",
            "I made pasta for dinner.",
            "ok, goodnight!",
            "Have a great day!",
            "What do you remember about me?",
            "lol that's funny",
            "It's raining again here.",
            "I'm so tired today.",
        ],
        "q_name": ["What's my name?", "Do you remember what I'm called?"],
        "q_job": ["What do I do for a living?", "What's my job again?"],
        "q_city": ["Which city do I live in now?", "Where am I living these days?"],
        "q_pet": ["What's the name of my {species}?", "How is my {species} called?"],
        "q_relative": ["What does my {rel} do for work?", "What's my {rel}'s job?"],
        "q_hobby": ["What do I like doing outdoors?", "Which sport do I do at weekends?"],
        "q_instrument": ["Which instrument am I learning?", "What instrument did I start playing?"],
        "q_allergy": ["Is there anything I'm allergic to?", "What should I avoid eating because of my allergy?"],
        "q_dislike": ["Which food can't I stand?", "What ingredient do I hate?"],
        "q_plan": ["Which film did we plan to watch together?", "What were we going to watch together?"],
        "q_exam": ["What exam was I nervous about?", "Which exam did I have coming up?"],
        "q_relative_city": ["Where does my {rel} live now?", "Which city did my {rel} move to?"],
        "q_friend_job": [
            "What does the friend who's getting married do?",
            "My friend getting married this year, what's her job?",
        ],
        "q_relative_job_name": ["Which of my relatives is a {reljob}, and where do they live now?"],
        "q_event": ["What did I do {when}?", "What was I up to {when}?"],
        "q_home": ["Where did you say you grew up?", "Where are you from again?"],
        "q_prel": ["What does your {prel} do?", "What's your {prel}'s name?"],
        "q_pinstr": ["Which instrument do you play?", "What music do you make to relax?"],
        "q_book": ["Which book did you recommend to me?", "What was that book you told me to read?"],
        "q_promise": ["What did you promise to ask me about?", "What were you going to check with me?"],
    },
    "heldout": {
        "name": ["hey, this is {name} by the way", "I'm {name}, nice to meet you!"],
        "job": [
            "Long shift today. I'm {a_job} with {work}, so it's always like this.",
            "For work I'm {a_job} at {work}.",
        ],
        "city": ["Home for me is {city}, in an old flat by the park.", "I'm based in {city} at the moment."],
        "pet": [
            "{pet}, my {species}, chewed my charger again.",
            "Did I mention my {species}? {pet} is the boss of the house.",
        ],
        "relative": [
            "My {rel} {relname} just got a job as a {reljob}.",
            "{relname}, my {rel}, has been a {reljob} for years.",
        ],
        "relative_move": [
            "{relname} is relocating to {relcity} next month.",
            "Guess what, {relname} found a flat in {relcity}!",
        ],
        "friend": [
            "{friend} asked me to be a witness at her wedding.",
            "I'm going to {friend}'s wedding, she's finally getting married.",
        ],
        "friend_job": ["{friend} started as a {fjob} last year.", "{friend} is a {fjob}, she loves it."],
        "hobby": ["Most Sundays I go {hobby} at {place}.", "My favourite thing is {hobby}, {place} is my spot."],
        "instrument": [
            "I'm trying to get better at the {instrument}.",
            "Practised the {instrument} for an hour tonight.",
        ],
        "allergy": ["Careful with recipes for me, {allergy} makes me ill.", "Fun fact: I'm allergic to {allergy}."],
        "dislike": ["{dislike} is the worst food ever invented.", "Please never make me eat {dislike}."],
        "moved": ["New chapter: I'm living in {newcity} now.", "The move to {newcity} is done, boxes everywhere."],
        "event_yesterday": ["So yesterday I {activity}, still thinking about it.", "Yesterday was fun, I {activity}."],
        "event_weekday": ["I {activity} on {weekday}.", "{weekday} was busy, I {activity}."],
        "event_today": ["Just got home, I {activity} today.", "Earlier today I {activity}."],
        "ask_home": ["What's your hometown like?", "Where were you born?"],
        "ask_family": ["Any brothers or sisters?", "Is your family big?"],
        "ask_relax": ["What's your hobby?", "What do you do in the evenings?"],
        "ask_book": ["Recommend me a book?", "What should I read next?"],
        "exam": ["The {exam} test is next Thursday and I'm freaking out.", "I'm studying for the {exam} exam."],
        "plan": ["How about we watch {film} together on Saturday?", "Let's do a movie night with {film} soon."],
        "filler": [
            "morning!",
            "what's up?",
            "hahaha",
            "Ugh, Mondays.",
            "The bus was late again.",
            "Had soup for lunch.",
            "night night",
            "thanks, you too!",
            "Do you even remember what I told you?",
            "that's so sweet",
            "So windy here today.",
            "Feeling lazy tonight.",
        ],
        "q_name": ["Do you know my name?", "Remind me, what did I say my name was?"],
        "q_job": ["Do you remember what my work is?", "What kind of job do I have?"],
        "q_city": ["Where do I live at the moment?", "What's my current city?"],
        "q_pet": ["What did I name my {species}?", "Who is my {species} again?"],
        "q_relative": ["What's my {rel}'s profession?", "Do you know what my {rel} does?"],
        "q_hobby": ["What do I usually do on Sundays?", "What's my favourite pastime outside?"],
        "q_instrument": ["What am I practising musically?", "Which instrument do I play?"],
        "q_allergy": ["What makes me ill if I eat it?", "Do I have any allergies?"],
        "q_dislike": ["What food do I refuse to eat?", "Which dish would I never order?"],
        "q_plan": ["What movie night did we talk about?", "Which film were we going to watch?"],
        "q_exam": ["What test was I studying for?", "Which exam was stressing me out?"],
        "q_relative_city": ["Where is my {rel} living now?", "Which city is my {rel} in these days?"],
        "q_friend_job": ["The friend whose wedding I'm going to, what's her work?"],
        "q_relative_job_name": ["Who in my family is a {reljob}, and which city are they in now?"],
        "q_event": ["Do you remember what I did {when}?", "What did I get up to {when}?"],
        "q_home": ["What's your hometown?", "Where were you born, remind me?"],
        "q_prel": ["How is your {prel}, what's their job again?", "Tell me again about your {prel}, who are they?"],
        "q_pinstr": ["What do you play in the evenings?", "What's your instrument?"],
        "q_book": ["What did you tell me to read?", "Which book was your recommendation?"],
        "q_promise": ["You said you'd ask me something, what was it?", "What did you say you'd check on?"],
    },
}

PERSONA_PHRASES: dict[str, dict[str, list[str]]] = {
    "tune": {
        "home": ["I grew up in {home}. Mornings there smelled of salt and bread."],
        "family": ["I do! My {prel} {prelname} is a {preljob}, the most patient person I know."],
        "relax": ["I play {instrument} when I need to unwind, badly but happily."],
        "book": ["You should read {book}, it's strange and gentle at once."],
        "promise": ["I'll ask you how the {exam} exam went next week, I promise. Good luck!"],
        "react": [
            "Oh, that's lovely to hear! What made you think of it?",
            "Really? Tell me more about that.",
            "That sounds like a lot. How are you feeling about it?",
            "Ha, I like that. What happened next?",
            "Mm, I hear you. Is it always like this?",
            "That's wonderful! How did it go?",
        ],
    },
    "heldout": {
        "home": ["Home was {home}, a place where everyone knows your grandmother."],
        "family": ["My {prel} {prelname} works as a {preljob}, we talk every Sunday."],
        "relax": ["Evenings are for {instrument} for me, it quiets my head."],
        "book": ["I'd recommend {book}, I cried at the end and I'm not ashamed."],
        "promise": ["Next week I'll check in with you about the {exam} test, I won't forget."],
        "react": [
            "No way! How did that feel?",
            "Oh I love that for you. And then?",
            "Hmm, sounds tiring. Did you get some rest?",
            "That's so you, honestly. What's next?",
            "Wow. I want to hear everything.",
            "Aw, that's sweet. How are things otherwise?",
        ],
    },
}

REACTIONS = {
    "tune": (
        ["Oh,", "Ha,", "Mm,", "Wow,", "Aw,", "Honestly,", "Okay,", "Ooh,"],
        [
            "that's lovely to hear.",
            "I like that a lot.",
            "I hear you.",
            "that sounds like a full day.",
            "that made me smile.",
            "I can picture it.",
            "that's a mood.",
            "you always surprise me.",
            "that sounds rough.",
            "good for you.",
        ],
        [
            "What happened next?",
            "How are you feeling about it?",
            "Tell me more?",
            "Is it always like this?",
            "What made you think of it?",
            "How did it go?",
            "Did anything else happen today?",
            "What are you up to tonight?",
        ],
    ),
    "heldout": (
        ["No way!", "Oh!", "Hmm.", "Haha!", "Wait,", "Aww.", "Right,", "Well,"],
        [
            "I love that for you.",
            "that sounds exhausting.",
            "I want to hear everything.",
            "that's so you, honestly.",
            "you deserve a break.",
            "I didn't see that coming.",
            "that's a whole story.",
            "that's sweet.",
            "I'm listening.",
            "classic.",
        ],
        [
            "And then?",
            "How did that feel?",
            "Did you get some rest?",
            "What's next?",
            "How are things otherwise?",
            "Was it worth it?",
            "Who else was there?",
            "Any plans for the weekend?",
        ],
    ),
}

EXAMS = {
    "tune": ["driving", "statistics", "Spanish", "anatomy"],
    "heldout": ["German", "chemistry", "bar", "piano grade"],
}


# --------------------------------------------------------------------------- generation


def _when_phrase(event: date, today: date) -> str | None:
    """How a person asks about that day, relative to `today`."""
    days = (today - event).days
    monday = today - timedelta(days=today.weekday())
    last_weekend = {monday - timedelta(days=2), monday - timedelta(days=1)}
    if days == 1:
        return "yesterday"
    if event in last_weekend and days > 1:
        return "last weekend"
    if 1 < days < 7:
        return f"on {event.strftime('%A')}"
    if 13 <= days <= 15:
        return "two weeks ago"
    if days >= 7:
        return f"on {event.day} {event.strftime('%B')}"
    return None


class _Writer:
    """Builds one conversation: sessions of turns, and the questions about them."""

    def __init__(self, rng: random.Random, split: str, today: date, index: int) -> None:
        self.rng, self.split, self.today, self.index = rng, split, today, index
        self.pools, self.phrases, self.persona_phrases = POOLS[split], PHRASES[split], PERSONA_PHRASES[split]
        self.sessions: list[Session] = []
        self.questions: list[Question] = []
        self.counter = 0

    def pick(self, key: str):  # type: ignore[no-untyped-def]
        return self.rng.choice(self.pools[key])

    def phrase(self, key: str, **values: str) -> str:
        return self.rng.choice(self.phrases[key]).format(**values)

    def persona(self, key: str, **values: str) -> str:
        if key == "react":  # many different reactions, as a model writes them: opener, body, a question back
            parts = REACTIONS[self.split]
            return " ".join(self.rng.choice(part) for part in parts)
        return self.rng.choice(self.persona_phrases[key]).format(**values)

    def say(self, session: Session, user_text: str, reply_text: str | None = None) -> Turn:
        self.counter += 1
        at = datetime.combine(session.day, time(18, 0), tzinfo=UTC) + timedelta(minutes=3 * len(session.turns))
        base = f"{self.split[0]}{self.index:02d}-{self.counter:03d}"
        turn = Turn(
            Message(f"u-{base}", "user", user_text, at),
            Message(f"p-{base}", "assistant", reply_text or self.persona("react"), at + timedelta(seconds=20)),
        )
        session.turns.append(turn)
        return turn

    def ask(self, category: str, text: str, *gold: str) -> None:
        self.questions.append(
            Question(f"q-{self.split[0]}{self.index:02d}-{len(self.questions):02d}", category, text, gold)
        )

    def build(self) -> Conversation:
        rng = self.rng
        # Sessions: about every four days over six weeks, the last one yesterday or the day before.
        days_ago = sorted(
            {
                rng.randint(40, 44),
                rng.randint(33, 36),
                rng.randint(27, 30),
                rng.randint(21, 24),
                15,
                rng.randint(10, 12),
            }
            | {rng.choice([8, 9]), rng.choice([5, 6]), rng.choice([3, 4]), 1},
            reverse=True,
        )
        self.sessions = [
            Session(str(uuid.UUID(int=rng.getrandbits(128))), self.today - timedelta(days=d)) for d in days_ago
        ]
        s = self.sessions
        name, city = self.pick("names"), self.pick("cities")
        job, work = self.pick("jobs")
        rel, relname, reljob = self.pick("relatives"), self.pick("relative_names"), self.pick("relative_jobs")
        relcity = rng.choice([c for c in self.pools["cities"] if c != city])
        newcity = rng.choice([c for c in self.pools["cities"] if c not in (city, relcity)])
        friend, fjob = self.pick("friends"), rng.choice([j for j in self.pools["relative_jobs"] if j != reljob])
        species, pet = self.pick("pets")
        hobby, place = self.pick("hobbies")
        instrument, allergy, dislike = self.pick("instruments"), self.pick("allergies"), self.pick("dislikes")
        exam, film = rng.choice(EXAMS[self.split]), self.pick("films")
        persona_name = self.pools["personas"][self.index % 3]
        home, (prel, prelname, preljob) = self.pick("persona_homes"), self.pick("persona_relatives")
        pinstrument, book = self.pick("persona_instruments"), self.pick("books")

        def filler(session: Session, count: int) -> None:
            for _ in range(count):
                self.say(session, rng.choice(self.phrases["filler"]))

        # session 0: introductions
        t_name = self.say(
            s[0], self.phrase("name", name=name), f"Nice to meet you, {name}! I'm {persona_name}. How is your day?"
        )
        filler(s[0], 2)
        a_job = ("an " if job[0] in "aeiouAEIOU" or job.startswith("ER") else "a ") + job
        t_job = self.say(
            s[0],
            self.phrase("job", a_job=a_job, job=job, work=work, city=city),
            "That sounds demanding! Do you like it?",
        )
        t_city = self.say(s[0], self.phrase("city", city=city))
        t_home_q = self.say(s[0], self.phrase("ask_home"), self.persona("home", home=home))
        filler(s[0], 2)
        # session 1: people and pets
        filler(s[1], 1)
        t_pet = self.say(s[1], self.phrase("pet", species=species, pet=pet))
        t_rel = self.say(s[1], self.phrase("relative", rel=rel, relname=relname, reljob=reljob))
        t_family = self.say(
            s[1], self.phrase("ask_family"), self.persona("family", prel=prel, prelname=prelname, preljob=preljob)
        )
        filler(s[1], 2)
        t_allergy = self.say(
            s[1], self.phrase("allergy", allergy=allergy), "Good to know, I'll remember that. Is it a bad one?"
        )
        # session 2: hobbies
        filler(s[2], 2)
        t_hobby = self.say(s[2], self.phrase("hobby", hobby=hobby, place=place, instrument=instrument))
        t_instr = self.say(s[2], self.phrase("instrument", instrument=instrument))
        t_relax = self.say(s[2], self.phrase("ask_relax"), self.persona("relax", instrument=pinstrument))
        filler(s[2], 2)
        # session 3: friend, dislikes, book
        t_friend = self.say(s[3], self.phrase("friend", friend=friend))
        filler(s[3], 1)
        t_dislike = self.say(s[3], self.phrase("dislike", dislike=dislike))
        t_book = self.say(s[3], self.phrase("ask_book"), self.persona("book", book=book))
        filler(s[3], 2)
        # session 4: relative moves, exam, promise
        t_move = self.say(s[4], self.phrase("relative_move", relname=relname, relcity=relcity))
        t_exam = self.say(s[4], self.phrase("exam", exam=exam), self.persona("promise", exam=exam))
        filler(s[4], 2)
        t_fjob = self.say(s[4], self.phrase("friend_job", friend=friend, fjob=fjob))
        # session 5: the user moves; a plan together
        t_moved = self.say(s[5], self.phrase("moved", newcity=newcity), "A new city! How does it feel so far?")
        filler(s[5], 2)
        t_plan = self.say(s[5], self.phrase("plan", film=film), "Yes, I'd love that! Popcorn is on you.")
        # sessions 2..9: dated activities, said the way people say them
        activities = rng.sample(self.pools["activities"], 7)
        events: list[tuple[date, Turn]] = []
        for number, session in enumerate(s[2:9]):
            activity = activities[number]
            form = rng.choice(["event_yesterday", "event_today", "event_weekday"])
            if form == "event_yesterday":
                event = session.day - timedelta(days=1)
                text = self.phrase(form, activity=activity)
            elif form == "event_today":
                event = session.day
                text = self.phrase(form, activity=activity)
            else:
                back = rng.randint(2, 5)
                event = session.day - timedelta(days=back)
                text = self.phrase(form, activity=activity, weekday=event.strftime("%A"))
            events.append((event, self.say(session, text)))
            filler(session, 1)
        for session in s[6:]:
            filler(session, 3)

        # questions
        q = self.phrase
        self.ask("single_hop", q("q_name"), t_name.user.id)
        self.ask("single_hop", q("q_job"), t_job.user.id)
        self.ask("single_hop", q("q_city"), t_moved.user.id)
        self.ask("single_hop", q("q_pet", species=species), t_pet.user.id)
        self.ask("single_hop", q("q_relative", rel=rel), t_rel.user.id)
        self.ask("single_hop", q("q_hobby"), t_hobby.user.id)
        self.ask("single_hop", q("q_instrument"), t_instr.user.id, t_hobby.user.id)
        self.ask("single_hop", q("q_allergy"), t_allergy.user.id)
        self.ask("single_hop", q("q_dislike"), t_dislike.user.id)
        self.ask("single_hop", q("q_plan"), t_plan.user.id)
        self.ask("single_hop", q("q_exam"), t_exam.user.id)
        self.ask("multi_hop", q("q_relative_city", rel=rel), t_rel.user.id, t_move.user.id)
        self.ask("multi_hop", q("q_friend_job"), t_friend.user.id, t_fjob.user.id)
        self.ask("multi_hop", q("q_relative_job_name", reljob=reljob), t_rel.user.id, t_move.user.id)
        self.ask(
            "multi_hop",
            "Did I move before or after my exam?" if self.split == "tune" else "Which came first, my move or my exam?",
            t_exam.user.id,
            t_moved.user.id,
        )
        self.ask(
            "multi_hop",
            "Where did I live before I moved?" if self.split == "tune" else "Which city did I leave when I moved?",
            t_city.user.id,
            t_moved.user.id,
        )
        for event, turn in events:
            when = _when_phrase(event, self.today)
            if when is not None and not any(e == event for e, t in events if t is not turn):
                self.ask("temporal", q("q_event", when=when), turn.user.id)
        self.ask("persona", q("q_home"), t_home_q.reply.id)
        self.ask("persona", q("q_prel", prel=prel), t_family.reply.id)
        self.ask("persona", q("q_pinstr"), t_relax.reply.id)
        self.ask("persona", q("q_book"), t_book.reply.id)
        self.ask("persona", q("q_promise"), t_exam.reply.id)
        return Conversation(
            user_id=str(uuid.UUID(int=rng.getrandbits(128))),
            instance_id=str(uuid.UUID(int=rng.getrandbits(128))),
            persona_name=persona_name,
            sessions=self.sessions,
            questions=self.questions,
        )


SEEDS = {"tune": 11, "heldout": 29}


def generate(split: str, today: date, conversations: int) -> Dataset:
    """The split's dataset for a run on `today` (deterministic for a given split, day and size)."""
    if split not in SEEDS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SEEDS)}")
    rng = random.Random(f"{SEEDS[split]}-{today.isoformat()}")
    return Dataset(split, today, [_Writer(rng, split, today, i).build() for i in range(conversations)])
