"""Memories and questions that read like a long relationship, for `rapport bench recall` (no download).

The full-text half of Recall is only as selective as the words of real questions against real memory
texts: "User went hiking with Marta near the lake on Saturday" and "Where did I go hiking last
month?" share a few content words and many function words. Random words (the old bench texts) share
nothing, so they hid the cost of a query word that matches a large share of a user's memories.

Memories follow the shapes the memory service writes (third person, "User …"), drawn from templates
with people, places, activities, foods, feelings and times; questions are what a user asks a
companion, in the first person, about the same slots.
"""

from __future__ import annotations

import numpy as np

PEOPLE = (
    "Marta",
    "Ana",
    "João",
    "Tom",
    "Priya",
    "Lena",
    "Omar",
    "Sofia",
    "Kenji",
    "Clara",
    "Diego",
    "Nadia",
    "Ravi",
    "Elif",
    "Hugo",
    "Maya",
    "Leo",
    "Ines",
    "Yusuf",
    "Greta",
    "Pablo",
    "Aisha",
    "Finn",
    "Zoe",
)
RELATIONS = (
    "sister",
    "brother",
    "mother",
    "father",
    "best friend",
    "roommate",
    "boss",
    "coworker",
    "cousin",
    "grandmother",
    "neighbor",
    "partner",
    "aunt",
    "uncle",
    "son",
    "daughter",
)
PLACES = (
    "Lisbon",
    "Porto",
    "Berlin",
    "Madrid",
    "Tokyo",
    "London",
    "Paris",
    "Rome",
    "Dublin",
    "Prague",
    "Vienna",
    "Oslo",
    "Seville",
    "Amsterdam",
    "Chicago",
    "Toronto",
    "the lake",
    "the beach",
    "the park",
    "the mountains",
    "the old town",
    "the market",
    "the river",
    "the museum",
    "the library",
    "the gym",
)
ACTIVITIES = (
    "hiking",
    "running",
    "swimming",
    "cooking",
    "painting",
    "climbing",
    "cycling",
    "reading",
    "dancing",
    "gardening",
    "fishing",
    "surfing",
    "knitting",
    "baking",
    "skating",
    "camping",
    "yoga",
    "chess",
    "pottery",
    "photography",
    "singing",
    "sailing",
    "skiing",
    "writing poems",
)
FOODS = (
    "pasta",
    "sushi",
    "curry",
    "tacos",
    "ramen",
    "pizza",
    "dumplings",
    "paella",
    "falafel",
    "pancakes",
    "chocolate",
    "cheesecake",
    "olives",
    "mango",
    "coffee",
    "green tea",
    "lasagna",
    "soup",
)
THINGS = (
    "a new guitar",
    "a red bicycle",
    "an old camera",
    "a vinyl record",
    "a plant",
    "a puzzle",
    "a novel",
    "a scarf",
    "a telescope",
    "a notebook",
    "a kite",
    "a board game",
    "running shoes",
    "a watch",
)
FEELINGS = ("happy", "tired", "nervous", "proud", "lonely", "excited", "stressed", "relaxed", "sad", "grateful")
JOBS = ("nurse", "teacher", "engineer", "designer", "chef", "accountant", "pilot", "lawyer", "barista", "doctor")
PETS = ("dog", "cat", "rabbit", "parrot", "hamster", "turtle")
TIMES = (
    "on Saturday",
    "last weekend",
    "yesterday",
    "this morning",
    "last month",
    "in the summer",
    "on Monday",
    "after work",
    "on her birthday",
    "during the holidays",
    "last night",
    "in spring",
)

MEMORY_TEMPLATES = (
    "User went {activity} with {person} near {place} {time}",
    "User's {relation} {person} lives in {place}",
    "User loves {food} and cooks it {time}",
    "User works as a {job} in {place}",
    "User felt {feeling} after {activity} {time}",
    "User bought {thing} {time}",
    "User has a {pet} called {person}",
    "User wants to visit {place} with {person}",
    "User's {relation} is learning {activity}",
    "User doesn't like {food}",
    "User met {person} at {place} {time}",
    "User is {feeling} about the trip to {place}",
    "User promised to show {person} {thing}",
    "User had {food} with their {relation} {time}",
    "User started {activity} classes {time}",
    "User remembers {place} from childhood",
    "User and the persona joked about {food}",
    "User told the persona about {person}'s new job as a {job}",
)
QUESTION_TEMPLATES = (
    "Where does my {relation} live?",
    "What did I do {time}?",
    "Do you remember who I went {activity} with?",
    "What food do I like?",
    "What do I do for a living?",
    "What is the name of my {pet}?",
    "Have I ever been to {place}?",
    "Who is {person}?",
    "What did I buy {time}?",
    "How did I feel after {activity}?",
    "What did I tell you about my {relation}?",
    "Where did I meet {person}?",
    "Do you know what I promised {person}?",
    "What was that joke about {food}?",
    "Which classes did I start?",
    "Can you remember what I said about {place}?",
)
_SLOTS = {
    "person": PEOPLE,
    "relation": RELATIONS,
    "place": PLACES,
    "activity": ACTIVITIES,
    "food": FOODS,
    "thing": THINGS,
    "feeling": FEELINGS,
    "job": JOBS,
    "pet": PETS,
    "time": TIMES,
}


def _fill(template: str, rng: np.random.Generator) -> str:
    values = {
        name: choices[int(rng.integers(len(choices)))] for name, choices in _SLOTS.items() if f"{{{name}}}" in template
    }
    return template.format(**values)


def memory_texts(rng: np.random.Generator, count: int) -> list[str]:
    """`count` memory contents as the service stores them."""
    picks = rng.integers(len(MEMORY_TEMPLATES), size=count)
    return [_fill(MEMORY_TEMPLATES[int(i)], rng) for i in picks]


def question(rng: np.random.Generator) -> str:
    """One question a user asks their companion."""
    return _fill(QUESTION_TEMPLATES[int(rng.integers(len(QUESTION_TEMPLATES)))], rng)
